"""`make soak` in miniature: 20 seconds instead of 30 minutes.

The maximum rate is measured first (on a small stream), the mix runs at half of it
with the jobs on, samples are taken, and the report and plot are written. No figure
is asserted (a soak's figures are a report, not a test): only that the harness runs
end to end, the invariants hold after it and every process it started is gone.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import run_soak, write_soak_plot, write_soak_report
from bench.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _children() -> set[int]:
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return {int(pid) for pid in f.read().split()}


async def test_a_short_soak_writes_its_report_and_keeps_the_invariants(
    postgres_admin_url, kafka_bootstrap, tmp_path
) -> None:
    before = _children()
    result = await run_soak(
        Stack(postgres_admin_url, kafka_bootstrap),
        minutes=20 / 60,
        sample_seconds=5,
        rate_orders=400,
    )
    assert _children() <= before  # the worker and both load processes stopped
    assert result.max_rate and result.rate == pytest.approx(result.max_rate / 2)
    assert result.sent_events > 0
    assert len(result.samples) >= 3
    assert sum(s.checkouts for s in result.samples) > 0
    assert all(s.rss_mb > 0 and "audit_log" in s.table_mb for s in result.samples)
    assert result.invariants == []
    assert result.settled["outbox_backlog"] == 0
    result.command = "pytest"
    report = tmp_path / "soak.md"
    plot = tmp_path / "soak.png"
    drew = write_soak_plot(result, plot)
    write_soak_report(result, report, plot if drew else None)
    text = report.read_text()
    assert "## Flat or not" in text and "## Invariants at the end" in text
    assert "**all hold**" in text
