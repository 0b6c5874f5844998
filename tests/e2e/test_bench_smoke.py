"""`stock bench` in miniature: the harness runs end to end and writes its report.

Seconds, not minutes, and no figure is asserted (benchmarks are not tests); this
only keeps the harness from rotting between `make bench` runs.
"""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from bench.report import write_report
from bench.run import run_benchmarks
from bench.stack import LOAD_SERVER_SETTINGS, Stack, broker_of_its_own
from service.adapters.database import asyncpg_dsn

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


def test_a_measurement_gets_a_fresh_broker_only_when_the_run_owns_its_broker() -> None:
    """`broker_of_its_own`: a new tansu, listening for the measurement and gone after
    it, when the run started its own; a broker the run was given is used as it is."""
    given = Stack("postgresql://unused", "127.0.0.1:1", owns_broker=False)
    with broker_of_its_own(given) as same:
        assert same is given

    owned = Stack("postgresql://unused", "127.0.0.1:1", owns_broker=True)
    with broker_of_its_own(owned) as fresh:
        assert fresh.bootstrap != owned.bootstrap and fresh.owns_broker
        host, port = fresh.bootstrap.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # it listens
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass  # and is stopped once the measurement is over


async def test_the_runs_own_postgresql_gets_room_for_minutes_of_wal(tmp_path) -> None:
    """`EmbeddedPostgres.configure` with the bench's settings: initdb's 1 GB between
    checkpoints made the soak's server checkpoint every 15-20 s (docs/design.md)."""
    from service.devstack.servers import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "pg", delete_on_stop=True)
    url = server.start()
    try:
        server.configure(LOAD_SERVER_SETTINGS)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            wanted = {"max_wal_size": "8GB", "checkpoint_timeout": "10min"}
            assert wanted == LOAD_SERVER_SETTINGS
            for _ in range(100):  # the reload is a signal: the server applies it soon after
                shown = {name: await conn.fetchval(f"SHOW {name}") for name in wanted}
                if shown == wanted:
                    break
                await asyncio.sleep(0.05)
            assert shown == wanted
        finally:
            await conn.close()
    finally:
        server.stop()
