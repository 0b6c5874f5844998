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

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.counts import StockCounts
from service.application.jobs import JOBS, run_job
from service.application.policies import Policies, refresh_policies
from service.application.reconciliation import reconcile
from service.application.reports import (
    InvalidReportTime,
    gather,
    last_complete_period,
    period_of,
    write_report,
)
from service.domain.requests import RestockRequest
from service.settings import Settings
from tests.integration.test_http_api import client_for
from tests.support.records import checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LATEST = "/api/inventory/reports/latest"
READ = {"Authorization": "Bearer read-secret"}


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


async def test_the_charts_are_drawn_off_the_event_loop(
    engine, report_settings, monkeypatch
) -> None:
    """Drawing is CPU work of a second or more: on the loop's thread it would stop a
    worker's consuming and publishing for as long."""
    import threading

    from service.application import report_render

    drawn_on: list[threading.Thread] = []
    draw = report_render.render

    def recording_render(*args, **kwargs):
        drawn_on.append(threading.current_thread())
        return draw(*args, **kwargs)

    monkeypatch.setattr(report_render, "render", recording_render)
    written = await write_report(engine, report_settings, "daily")
    assert drawn_on and drawn_on[0] is not threading.main_thread()
    assert written.files["charts"], "the charts were still drawn"


async def test_a_time_in_the_future_is_refused(engine, report_settings) -> None:
    later = await now_of(engine) + timedelta(hours=1)
    with pytest.raises(InvalidReportTime):
        await gather(engine, report_settings, "weekly", later)



# ------------------------------------------------------------------ weekly


def column(rows: list[dict[str, str]], key: str) -> list[str]:
    return [row[key] for row in rows]


async def test_a_weekly_report_of_a_week_made_through_the_service(
    engine, report_settings
) -> None:
    settings = report_settings.model_copy(update={"api_reads_require_token": True})
    async with client_for(engine, settings) as http:
        before = await http.get(f"{LATEST}/weekly", headers=READ)
    assert before.status_code == 404, before.text
    assert (before.json()["code"], before.json()["details"]) == ("no_report", {"kind": "weekly"})

    s = await make_week(engine, settings)
    written = await write_report(engine, settings, "weekly")
    period = written.report.period
    first = await s.scalar("SELECT min(created_at) FROM audit_log")
    assert first >= period.start, "the week turned while the history was made: run it again"
    assert not period.complete and period.end <= await now_of(engine)

    # The files, where they belong.
    d = written.directory
    assert d == Path(settings.reports_dir) / "weekly" / period.label
    tables = [
        "top_movers", "available_top_movers", "stockouts", "stockouts_per_day", "anomalies",
        "reconciliation", "count_accuracy",
    ]
    charts = ["available_top_movers.png", "stockouts_per_day.png", "count_accuracy.png"]
    assert written.files["csv"] == [f"{t}.csv" for t in tables]
    assert written.files["charts"] == charts and written.files["chartsSkipped"] is None
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["report.md", *written.files["csv"], *charts]
    )
    for chart in charts:
        content = (d / chart).read_bytes()
        assert content.startswith(b"\x89PNG") and len(content) > 10_000

    # Top movers: by units sold; their figures as computed by hand (module docstring).
    movers = read_csv(d / "top_movers.csv")
    assert [
        (r["rank"], r["variantId"], r["productId"], r["unitsSold"], r["unitsReturned"],
         r["unitsRestocked"], r["netAdjusted"], r["stockouts"], r["availableAtEnd"],
         r["daysOfCover"], r["abcClass"])
        for r in movers
    ] == [
        # daysOfCover = availableAtEnd * 30 / units sold in the 30 days: 4*30/5, 0, 5*30/1
        ("1", "tee", "p-tee", "5", "0", "10", "-1", "0", "4", "24.0", "A"),
        ("2", "mug", "p-mug", "4", "0", "4", "0", "1", "0", "0.0", "A"),
        # 9 of the 10 units sold by variants that sold more: past 80%, B.
        ("3", "cap", "p-cap", "1", "0", "20", "-14", "0", "5", "150.0", "B"),
    ]

    # Available (on hand - reserved), stepwise: none of them existed at the week's start.
    steps = read_csv(d / "available_top_movers.csv")
    levels: dict[str, list[int]] = {}
    for row in steps:
        levels.setdefault(row["variantId"], []).append(int(row["available"]))
        assert period.start <= datetime.fromisoformat(row["at"]) < period.end
    assert levels == {
        "tee": [10, 7, 7, 5, 5, 4],  # restock, checkout 3, paid, checkout 2, paid, count -1
        "mug": [4, 0, 0, 0],  # restock, checkout 4 (the stockout), paid, counted 0 of 0
        "cap": [20, 19, 19, 5],  # restock, checkout 1, paid, adjust to 5
    }
    for variant in levels:
        times = [row["at"] for row in steps if row["variantId"] == variant]
        assert times == sorted(times)

    # Stockouts: mug ran out once, today; hat never did (its row is wrong, its log is 2).
    stockouts = read_csv(d / "stockouts.csv")
    assert [(r["variantId"], r["stockouts"], r["unitsSold"], r["availableAtEnd"])
            for r in stockouts] == [("mug", "1", "4", "0")]
    per_day = read_csv(d / "stockouts_per_day.csv")
    today = period.end.date()
    days = [(period.start + timedelta(days=n)).date() for n in range(today.weekday() + 1)]
    assert column(per_day, "day") == [day.isoformat() for day in days]
    assert [(r["stockouts"], r["variantsOutOfStock"]) for r in per_day] == (
        [("0", "0")] * today.weekday() + [("1", "1")]
    )

    # Anomalies raised this week: the adjust, the count, the reconciliation.
    anomalies = read_csv(d / "anomalies.csv")
    assert sorted(
        (r["variantId"], r["rule"], r["observed"], r["expected"], r["actor"]) for r in anomalies
    ) == [
        ("cap", "large_adjustment", "-14.0", "0.0", "stock-service"),
        ("hat", "ledger_mismatch", "3.0", "2.0", "cli:auditor"),
        ("tee", "count_variance", "4.0", "5.0", "cli:boss"),
    ]
    [run] = read_csv(d / "reconciliation.csv")
    assert (run["actor"], run["checkedVariants"], run["discrepancies"], run["kinds"]) == (
        "cli:auditor", "4", "1", "ledger_mismatch: 1"
    )

    # Count accuracy: 8 weeks, this one with tee out of tolerance (1 of 5) and mug within.
    accuracy = read_csv(d / "count_accuracy.csv")
    assert len(accuracy) == 8 and accuracy[-1]["week"] == period.label
    assert [(r["countLines"], r["withinTolerance"], r["accuracy"]) for r in accuracy] == (
        [("0", "0", "")] * 7 + [("2", "1", "0.5")]
    )

    summary = written.report.summary
    assert {k: summary[k] for k in (
        "unitsSold", "variantsSold", "stockouts", "variantsOutOfStock", "anomalies",
        "reconciliationRuns", "reconciliationOutcome", "countLines", "countAccuracy",
    )} == {
        "unitsSold": 10, "variantsSold": 3, "stockouts": 1, "variantsOutOfStock": 1,
        "anomalies": 3, "reconciliationRuns": 1, "reconciliationOutcome": "1 discrepancy",
        "countLines": 2, "countAccuracy": 0.5,
    }

    # The Markdown: title, period, summary, charts, every table.
    md = (d / "report.md").read_text()
    assert md.startswith(f"# Weekly stock movement report {period.label}\n")
    assert "| units sold | 10 |" in md and "| count accuracy | 50.0% |" in md
    for chart in charts:
        assert f"]({chart})" in md
    assert "| 1 | tee | p-tee | 5 | 0 | 10 | -1 | 0 |" in md
    assert "| mug | p-mug | 1 |" in md

    # The row, and the endpoint answering it (a read: the read token will do).
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM reports"))).one()
    assert (row.kind, row.period_start, row.period_end) == ("weekly", period.start, period.end)
    assert row.figures["summary"]["unitsSold"] == 10
    assert row.files["charts"] == charts and row.files["directory"] == str(d.resolve())
    async with client_for(engine, settings) as http:
        refused = await http.get(f"{LATEST}/weekly")
        answer = await http.get(f"{LATEST}/weekly", headers=READ)
        unknown = await http.get(f"{LATEST}/yearly", headers=READ)
        daily = await http.get(f"{LATEST}/daily", headers=READ)
    assert refused.status_code == 401
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["kind"], body["period"], body["complete"]) == ("weekly", period.label, False)
    assert datetime.fromisoformat(body["periodEnd"]) == period.end
    assert body["summary"]["reconciliationOutcome"] == "1 discrepancy"
    top = body["tables"]["top_movers"]
    assert top["rowsTotal"] == 3 and top["columns"][:4] == [
        "rank", "variantId", "productId", "unitsSold"]
    assert [(r["variantId"], r["unitsSold"], r["daysOfCover"]) for r in top["rows"]] == [
        ("tee", 5, 24.0), ("mug", 4, 0.0), ("cap", 1, 150.0)
    ]
    assert body["tables"]["count_accuracy"]["rows"][-1]["accuracy"] == 0.5
    assert body["files"]["directory"] == str(d.resolve())
    assert unknown.status_code == 422 and unknown.json()["code"] == "validation_failed"
    assert daily.status_code == 404 and daily.json()["code"] == "no_report"



async def plant(
    engine: AsyncEngine, variant: str, rows: list[tuple[datetime, str, int, int]]
) -> None:
    """A variant and its audit rows (versions 1..N in this order, at these times), the
    row created at the first and updated at the last, as the service writes them."""
    on_hand = reserved = 0
    values = []
    for version, (at, kind, d_on_hand, d_reserved) in enumerate(rows, start=1):
        on_hand += d_on_hand
        reserved += d_reserved
        values.append({"v": variant, "kind": kind, "d": d_on_hand, "r": d_reserved,
                       "on_hand": on_hand, "reserved": reserved, "version": version, "at": at})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO variants (variant_id, product_id, on_hand, reserved, version, "
                "created_at, updated_at) VALUES (:v, :p, :on_hand, :reserved, :version, "
                ":created, :updated)"
            ),
            {"v": variant, "p": "p-" + variant, "on_hand": on_hand, "reserved": reserved,
             "version": len(rows), "created": rows[0][0], "updated": rows[-1][0]},
        )
        await conn.execute(
            text(
                """
                INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                    on_hand_after, reserved_after, version, reference, actor, created_at)
                VALUES (:v, :kind, :d, :r, :on_hand, :reserved, :version, 'test', 'test', :at)
                """
            ),
            values,
        )


async def test_a_past_week_written_whole_with_its_days(engine, report_settings) -> None:
    """The last complete week, planted: `kettle` (new on Monday) runs out on Wednesday
    and is back on Friday; `lamp` (stocked the week before) runs out on Tuesday and
    stays out."""
    monday = last_complete_period("weekly", await now_of(engine)).start

    def at(day: int, hour: float) -> datetime:
        return monday + timedelta(days=day, hours=hour)

    await plant(engine, "kettle", [
        (at(0, 9), "RESTOCK", 12, 0),
        (at(1, 10), "RESERVE", 0, 5), (at(1, 10.1), "SALE", -5, -5),
        (at(2, 12), "RESERVE", 0, 7), (at(2, 12.2), "SALE", -7, -7),
        (at(4, 8), "RESTOCK", 10, 0),
        (at(5, 15), "RESERVE", 0, 4), (at(5, 15.5), "SALE", -4, -4),
    ])
    await plant(engine, "lamp", [
        (at(-3, 9), "RESTOCK", 3, 0),
        (at(1, 18), "RESERVE", 0, 3), (at(1, 18.5), "SALE", -3, -3),
    ])
    written = await write_report(engine, report_settings, "weekly", at=at(7, 0))
    period = written.report.period
    assert (period.start, period.end, period.complete) == (monday, at(7, 0), True)
    d = written.directory
    per_day = read_csv(d / "stockouts_per_day.csv")
    assert [(r["stockouts"], r["variantsOutOfStock"]) for r in per_day] == [
        ("0", "0"),  # Monday: kettle arrives, lamp has 3
        ("1", "1"),  # Tuesday: lamp runs out
        ("1", "2"),  # Wednesday: kettle runs out too
        ("0", "2"),  # Thursday: both out
        ("0", "2"),  # Friday: kettle out until 08:00
        ("0", "1"),  # Saturday, Sunday: lamp
        ("0", "1"),
    ]
    movers = read_csv(d / "top_movers.csv")
    assert [(r["variantId"], r["unitsSold"], r["stockouts"]) for r in movers] == [
        ("kettle", "16", "1"), ("lamp", "3", "1")
    ]
    # kettle: out from Wed 12:00 to Fri 08:00 = 44 h; lamp: from Tue 18:00 to the end.
    stockouts = read_csv(d / "stockouts.csv")
    assert [(r["variantId"], float(r["outOfStockHours"])) for r in stockouts] == [
        ("lamp", 5 * 24 + 6), ("kettle", 44 + 9)  # kettle: 9 h before it existed, too
    ]
    steps = read_csv(d / "available_top_movers.csv")
    assert [(r["variantId"], r["at"], r["available"]) for r in steps] == [
        ("kettle", at(0, 9).isoformat(), "12"),
        ("kettle", at(1, 10).isoformat(), "7"),
        ("kettle", at(1, 10.1).isoformat(), "7"),
        ("kettle", at(2, 12).isoformat(), "0"),
        ("kettle", at(2, 12.2).isoformat(), "0"),
        ("kettle", at(4, 8).isoformat(), "10"),
        ("kettle", at(5, 15).isoformat(), "6"),
        ("kettle", at(5, 15.5).isoformat(), "6"),
        ("lamp", monday.isoformat(), "3"),  # it existed at the start: its level then
        ("lamp", at(1, 18).isoformat(), "0"),
        ("lamp", at(1, 18.5).isoformat(), "0"),
    ]
    assert "the whole period" in (d / "report.md").read_text()


# ------------------------------------------------------------------ daily and monthly


async def test_a_daily_report_lists_low_stock_with_cover_and_suggestions(
    engine, report_settings
) -> None:
    """The week above, then tee ordered up to 20 at 6, cap reordered at 3. Every variant
    is at or below the threshold of 5: mug out of stock first, then by days of cover,
    hat (no sales, no cover) last; hat's level is its log's 2, not the row's 3."""
    await make_week(engine, report_settings)
    policies = Policies(engine, report_settings)
    await policies.put("tee", {"reorder_point": 6, "max_stock": 20})
    await policies.put("cap", {"reorder_point": 3})
    written = await write_report(engine, report_settings, "daily")
    d = written.directory
    assert d.parent.name == "daily" and d.name == written.report.period.label
    rows = read_csv(d / "low_stock.csv")
    assert [
        (r["variantId"], r["available"], r["lowStockThreshold"], r["reorderPoint"],
         r["reorderPointSource"], r["below"], r["daysOfCover"], r["suggestedQuantity"])
        for r in rows
    ] == [
        ("mug", "0", "5", "", "", "threshold", "0.0", ""),
        # up to maxStock: 20 - 4
        ("tee", "4", "5", "6", "configured", "threshold and reorder point", "24.0", "16"),
        # above its point: nothing to order (the demand, 1 a month, is covered)
        ("cap", "5", "5", "3", "configured", "threshold", "150.0", "0"),
        ("hat", "2", "5", "", "", "threshold", "", ""),
    ]
    assert written.report.summary == {
        "asOf": written.report.period.end, "lowStock": 4, "outOfStock": 1,
        "belowReorderPoint": 1, "suggestedUnits": 16,
    }
    assert written.files["charts"] == ["low_stock.png"]
    assert "| tee | p-tee | 4 | 5 | 6 | configured |" in (d / "report.md").read_text()


async def test_a_monthly_report_of_abc_reorder_points_and_lead_times(
    engine, report_settings
) -> None:
    """acme delivers bolt (ordered 3 days ago) and nut (1 day ago); both are configured
    at 2 days. bolt sells 6, nut 1; the policies job then measures acme at 2 days and
    recommends 3 for bolt (0.2 a day: 0.4 + 1.65 * 1.095 * sqrt 2 = 2.96) and 1 for nut
    (configured at 4)."""
    s = Scenario(engine, report_settings)
    now = await now_of(engine)
    await s.admin.commands.restock([
        RestockRequest("bolt", 30, "p-bolt", supplier_id="acme",
                       ordered_at=now - timedelta(days=3)),
        RestockRequest("nut", 10, "p-nut", supplier_id="acme", ordered_at=now - timedelta(days=1)),
    ])
    policies = Policies(engine, report_settings)
    await policies.put("bolt", {"supplier_id": "acme", "lead_time_days": 2})
    await policies.put("nut", {"supplier_id": "acme", "lead_time_days": 2, "reorder_point": 4})
    await s.deliver(checkout("o1", {"bolt": 6, "nut": 1}))
    await s.deliver(paid("o1"))
    await refresh_policies(engine, report_settings)

    written = await write_report(engine, report_settings, "monthly")
    d = written.directory
    assert d.parent.name == "monthly" and len(d.name) == len("2026-11")
    assert written.files["charts"] == [
        "stockouts_per_day.png", "count_accuracy.png", "lead_times.png"]
    classes = read_csv(d / "abc_classes.csv")
    assert [(r["abcClass"], r["variants"], r["unitsSold90Days"]) for r in classes] == [
        ("A", "1", "6"), ("B", "1", "1"), ("C", "0", "0")]
    abc = read_csv(d / "abc.csv")
    assert [(r["variantId"], r["abcClass"], r["share"], r["cumulativeShare"]) for r in abc] == [
        ("bolt", "A", "0.857143", "0.857143"), ("nut", "B", "0.142857", "1.0")]
    points = read_csv(d / "reorder_points.csv")
    assert [
        (r["variantId"], r["supplierId"], r["configured"], r["recommended"], r["difference"],
         r["leadTimeDays"], r["leadTimeFrom"])
        for r in points
    ] == [
        ("nut", "acme", "4", "1", "3", "2.0", "configured"),
        ("bolt", "acme", "", "3", "", "2.0", "configured"),
    ]
    assert points[0]["advice"].startswith("configured above")
    [acme] = read_csv(d / "lead_times.csv")
    assert (acme["supplierId"], acme["variants"], acme["deliveries"]) == ("acme", "2", "2")
    assert float(acme["measuredDays"]) == pytest.approx(2.0, abs=0.01)
    assert float(acme["shortestDays"]) == pytest.approx(1.0, abs=0.01)
    assert float(acme["longestDays"]) == pytest.approx(3.0, abs=0.01)
    assert (acme["configuredDays"], acme["configuredRange"]) == ("2.0", "2")
    assert float(acme["differenceDays"]) == pytest.approx(0.0, abs=0.01)
    assert acme["onTimeShare"] == "0.5"  # the 1-day delivery, not the 3-day one
    assert float(acme["measuredDaysEver"]) == pytest.approx(2.0, abs=0.01)
    summary = written.report.summary
    assert (summary["unitsSold"], summary["abcVariants"], summary["suppliers"]) == (
        7, {"A": 1, "B": 1, "C": 0}, 1)


# ------------------------------------------------------------------ without matplotlib


async def test_without_matplotlib_markdown_and_csv_are_written(
    engine, report_settings, monkeypatch
) -> None:
    await make_week(engine, report_settings)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    written = await write_report(engine, report_settings, "weekly")
    d = written.directory
    assert written.files["charts"] == []
    assert "matplotlib is not installed" in written.files["chartsSkipped"]
    assert not list(d.glob("*.png"))
    assert len(list(d.glob("*.csv"))) == 7
    assert [r["variantId"] for r in read_csv(d / "top_movers.csv")] == ["tee", "mug", "cap"]
    md = (d / "report.md").read_text()
    assert "Charts skipped: matplotlib is not installed" in md and ".png)" not in md
    async with engine.connect() as conn:
        files = (await conn.execute(text("SELECT files FROM reports"))).scalar_one()
    assert files["charts"] == [] and files["chartsSkipped"] == written.files["chartsSkipped"]


# ------------------------------------------------------------------ the command


async def stock(database_url: str, *args: str, **env_extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    env.update(STOCK_DATABASE_URL=database_url, **env_extra)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.entrypoints.cli", *args,
        cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_stock_report_writes_where_out_says(
    engine, report_settings, database_url, tmp_path
) -> None:
    await make_week(engine, report_settings)
    out = tmp_path / "out"
    code, stdout, stderr = await stock(database_url, "report", "weekly", "--out", str(out))
    assert code == 0, stderr
    [directory] = list((out / "weekly").iterdir())
    assert stdout.splitlines()[0].endswith(str(directory))
    assert "so far" in stdout.splitlines()[0]
    assert {line.strip() for line in stdout.splitlines()[1:]} == {
        p.name for p in directory.iterdir()}
    assert (directory / "available_top_movers.png").exists()
    assert [r["unitsSold"] for r in read_csv(directory / "top_movers.csv")] == ["5", "4", "1"]

    # --json: the figures as GET reports/latest answers them; STOCK_REPORTS_DIR by default.
    code, stdout, stderr = await stock(
        database_url, "report", "daily", "--json", STOCK_REPORTS_DIR=str(tmp_path / "env"))
    assert code == 0, stderr
    answer = json.loads(stdout)
    assert answer["kind"] == "daily" and answer["summary"]["lowStock"] == 4
    assert Path(answer["files"]["directory"]).parent == (tmp_path / "env" / "daily").resolve()

    code, _, stderr = await stock(
        database_url, "report", "monthly", "--at", "2999-01-01", "--out", str(out))
    assert code == 2 and stderr.startswith("error (invalid_report_time): ")
    code, _, stderr = await stock(database_url, "report", "weekly", "--at", "soon")
    assert code == 2 and "'soon'" in stderr
    code, _, stderr = await stock(
        "postgresql://postgres@127.0.0.1:1/nowhere", "report", "daily", "--out", str(out))
    assert code == 2 and "\nstock report: " in stderr and "Traceback" not in stderr


# ------------------------------------------------------------------ the jobs


async def test_the_report_jobs_write_each_ended_period_once(engine, report_settings) -> None:
    names = [name for name in JOBS if name.startswith("report-")]
    assert names == ["report-daily", "report-weekly", "report-monthly"]
    assert {JOBS[n].interval(report_settings) for n in names} == {timedelta(hours=1)}
    now = await now_of(engine)
    for kind in ("daily", "weekly", "monthly"):
        run = await run_job(engine, report_settings, JOBS[f"report-{kind}"])
        assert run is not None and run.outcome == "succeeded", run
        period = last_complete_period(kind, now)
        assert run.detail["period"] == period.label and run.detail["written"] is True
        directory = Path(report_settings.reports_dir) / kind / period.label
        assert run.detail["directory"] == str(directory.resolve())
        assert (directory / "report.md").exists()
        assert "the whole period" in (directory / "report.md").read_text()
        again = await run_job(engine, report_settings, JOBS[f"report-{kind}"], force=True)
        assert again is not None and again.detail == {
            "kind": kind, "period": period.label, "written": False}
    async with engine.connect() as conn:
        stored = (await conn.execute(text(
            "SELECT kind, period_end, figures ->> 'complete' AS complete FROM reports "
            "ORDER BY kind"))).all()
    assert [(r.kind, r.complete) for r in stored] == [
        ("daily", "true"), ("monthly", "true"), ("weekly", "true")]
