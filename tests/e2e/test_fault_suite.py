"""The short version of `make faults`, inside `make test`: every fault in one run
(kills, crash points, a pause, a PostgreSQL crash, a broker cut, a rewind, poison and
expiring holds).

Real worker processes, an embedded PostgreSQL and a tansu broker of the suite's own
(it crashes the one and cuts the other, so it cannot share the session's). The
checker must find nothing lost, doubled or oversold, and every fault must heal.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.__main__ import run_all
from tests.faults.report import write_report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_every_fault_at_once_loses_doubles_and_oversells_nothing(tmp_path) -> None:
    seed = int(os.environ.get("STOCK_FAULT_SEED", "1"))
    results = await run_all(short=True, only=[], runs=1, seed=seed)
    report = tmp_path / "reliability.md"
    write_report(results, report, f"--short --seed {seed}")
    print(report.read_text())
    for result in results:
        verdict = result.verdict
        assert (verdict.lost, verdict.doubled, verdict.oversold) == (0, 0, 0), verdict.problems
        assert verdict.problems == []
        assert result.drained_seconds is not None, "the backlog never drained"
        assert all(f.recovered_at is not None for f in result.faults), result.faults
        assert result.unexpected_exits == 0, "a worker exited on its own:\n" + "\n".join(
            result.unexpected_exit_details
        )
        assert {f.kind for f in result.faults} >= {
            "kill", "pause", "db-restart", "broker-cut", "rewind", "crash:after_commit",
            "crash:fast_before_send", "crash:fast_after_send",
        }
