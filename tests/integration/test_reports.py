"""Reports (issue 13 item 4; docs/design.md, "Reports") on the real database: a week
made through the service (restocks, sales through the batch consumer, an adjust, a
count, a reconciliation) written as Markdown, CSV files and PNG charts whose figures
are the ones computed by hand; the `reports` row and `GET reports/latest/weekly`;
daily and monthly; without matplotlib; `stock report` as a process; the jobs.

The week (every change happens now, so the report is this ISO week so far):

    tee  restock 10; o1 checkout 3, paid; o2 checkout 2, paid;    sold 5
         counted 4 of 5 (out of tolerance, approved): -1          available 10 7 7 5 5 4
    mug  restock 4; o2 checkout 4 (stockout), paid;               sold 4
         counted 0 of 0 (within tolerance)                        available 4 0 0
    cap  restock 20; o3 checkout 1, paid; adjust to 5 (-14:       sold 1
         large_adjustment)                                        available 20 19 19 5
    hat  restock 2; its row then set to 3 behind the service's back: the reconciliation
         finds one ledger_mismatch
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.counts import StockCounts
from service.application.jobs import JOBS, run_job
from service.application.reconciliation import reconcile
from service.application.reports import (
    InvalidReportTime,
    gather,
    last_complete_period,
    period_of,
    write_report,
)
from service.settings import Settings
from tests.integration.test_http_api import client_for
from tests.support.records import checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LATEST = "/api/inventory/reports/latest"


@pytest.fixture
def report_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "reports_dir": str(tmp_path / "reports"),
            "api_tokens": SecretStr("reader:read-secret:read"),
        }
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def now_of(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        now: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
    return now


async def make_week(engine: AsyncEngine, settings: Settings) -> Scenario:
    s = Scenario(engine, settings)
    await s.restock(("tee", 10), ("mug", 4), ("cap", 20), ("hat", 2))
    await s.deliver(checkout("o1", {"tee": 3}))
    await s.deliver(paid("o1"))
    await s.deliver(checkout("o2", {"tee": 2, "mug": 4}))
    await s.deliver(paid("o2"))
    await s.deliver(checkout("o3", {"cap": 1}))
    await s.deliver(paid("o3"))
    await s.admin.adjust("cap", 5, reason="water damage")
    counts = StockCounts(engine, settings)
    count = await counts.open(actor="cli:counter", variant_ids=["tee", "mug"])
    await counts.record(count.count_id, [("tee", 4), ("mug", 0)], actor="cli:counter")
    await counts.apply(count.count_id, actor="cli:boss", approve=True)
    await s.execute("UPDATE variants SET on_hand = 3 WHERE variant_id = 'hat'")
    run = await reconcile(engine, settings, "cli:auditor")
    assert len(run.discrepancies) == 1
    return s


# ------------------------------------------------------------------ periods


def test_periods_hold_the_instant_before_at() -> None:
    wednesday = datetime(2026, 11, 25, 15, 30, tzinfo=UTC)
    week = period_of("weekly", wednesday)
    assert (week.label, week.start, week.end) == (
        "2026-W48", datetime(2026, 11, 23, tzinfo=UTC), wednesday
    )
    assert not week.complete and week.full_end == datetime(2026, 11, 30, tzinfo=UTC)
    monday = datetime(2026, 11, 30, tzinfo=UTC)
    whole = period_of("weekly", monday)
    assert (whole.label, whole.end, whole.complete) == ("2026-W48", monday, True)
    assert period_of("daily", monday).label == "2026-11-29"
    assert period_of("monthly", monday).label == "2026-11"
    assert period_of("monthly", datetime(2026, 12, 1, tzinfo=UTC)).complete
    assert period_of("weekly", datetime(2027, 1, 1, tzinfo=UTC)).label == "2026-W53"
    assert last_complete_period("monthly", wednesday).label == "2026-10"
    assert last_complete_period("daily", wednesday).label == "2026-11-24"
    assert last_complete_period("weekly", wednesday).label == "2026-W47"
    days = period_of("weekly", wednesday).days()
    assert [d.isoformat() for d, _, _ in days] == [
        "2026-11-23", "2026-11-24", "2026-11-25"
    ]
    assert days[-1][2] == wednesday


# ------------------------------------------------------------------ smoke


async def test_each_kind_on_an_empty_database(engine, report_settings, tmp_path) -> None:
    for kind in ("daily", "weekly", "monthly"):
        written = await write_report(engine, report_settings, kind)
        assert (written.directory / "report.md").exists()
        assert written.files["chartsSkipped"] is None
        for name in written.files["charts"]:
            assert (written.directory / name).stat().st_size > 1000
        for name in written.files["csv"]:
            assert (written.directory / name).read_text().count("\n") >= 1


async def test_a_time_in_the_future_is_refused(engine, report_settings) -> None:
    later = await now_of(engine) + timedelta(hours=1)
    with pytest.raises(InvalidReportTime):
        await gather(engine, report_settings, "weekly", later)
