"""`stock bench` in miniature: the harness runs end to end and writes its report.

Seconds, not minutes, and no figure is asserted (benchmarks are not tests); this
only keeps the harness from rotting between `make bench` runs.
"""

from __future__ import annotations

import pytest

from bench.report import write_report
from bench.run import run_benchmarks
from bench.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_the_benchmark_harness_runs_and_reports(
    postgres_admin_url, kafka_bootstrap, tmp_path
) -> None:
    stack = Stack(postgres_admin_url, kafka_bootstrap)
    [result] = await run_benchmarks(
        stack, ["uniform"], scale=0.002, naive_seconds=1, probe_seconds=1
    )
    assert result.worker.events > 0 and result.worker.rate > 0
    assert result.naive_rate and result.ceiling_rate
    assert result.worker.latencies_ms
    assert result.worker.checks["oversold"] == 0
    assert result.worker.checks["balance_ok"]
    # The fixed-rate probe: 2,000/s first (on the freshest broker), then the curve's
    # four shares, each answered.
    assert [p.label for p in result.probes] == [
        "2,000/s",
        "10% of max",
        "25% of max",
        "50% of max",
        "75% of max",
    ]
    assert all(p.sent and p.latencies_ms for p in result.probes)
    report = tmp_path / "benchmarks.md"
    write_report([result], report, "pytest", plot=None)
    text = report.read_text()
    assert "## Results" in text and "## Targets" in text and "cores" in text
    assert "## The fixed-rate probe and the latency curve" in text
    assert "probe: p99 < 100 ms at 2,000 checkouts/s" in text
