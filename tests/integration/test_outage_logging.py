"""Outages without noise, and a stop during one (issue 11, item 2).

A real `stock run` whose broker (or database) is cut off by a TCP proxy for seconds:
it says once that it is unreachable and once that it is back, with how long it was
away, instead of aiokafka's line per failed request of every client (about 400 ERROR
lines in 10 s before the fix). SIGTERM during an outage ends the process within
STOCK_SHUTDOWN_GRACE_SECONDS, with status 0 and no traceback (before: 33 s with a
relay delivery pending and "Future exception was never retrieved ... NodeNotReadyError";
16 s and a CancelledError traceback with a batch waiting for the database).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from service.adapters.database import create_engine
from service.application.admin import StockAdmin
from service.settings import Settings
from tests.e2e.helpers import send_events
from tests.support.proxy import CuttableProxy
from tests.support.records import checkout
from tests.support.stock_process import StockCommand, ThreadedProxy, warnings_and_errors

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

#: What an outage may cost in lines at WARNING or above, from the cut to the line
#: that says it is over: it went, the relay noticed, it is back (a few to spare).
MOST_LINES_PER_OUTAGE = 8
GRACE = 15.0
BACK_AFTER = re.compile(r"is reachable again after (\d+\.\d) s")


def _no_tracebacks(output: str) -> None:
    assert "Traceback" not in output, output
    assert "never retrieved" not in output, output
    assert "CancelledError" not in output, output


def _outage_lines(process: StockCommand, since: int) -> list[str]:
    return warnings_and_errors(process.lines()[since:])


def _restock(settings: Settings, database_url: str, *variants: str) -> None:
    """Rows for the relay to publish (written straight to the database)."""

    async def go() -> None:
        engine = create_engine(database_url, pool_size=1)
        try:
            admin = StockAdmin(engine, settings)
            for variant in variants:
                await admin.restock(variant, 5, product_id="p")
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_a_broker_outage_is_two_lines_and_a_stop_during_one_is_clean(
    settings: Settings, cuttable_broker: tuple[ThreadedProxy, str], tmp_path: Path
) -> None:
    proxy, bootstrap = cuttable_broker
    settings = settings.model_copy(
        update={
            "kafka_bootstrap_servers": bootstrap,
            "http_port": 0,
            "shutdown_grace_seconds": GRACE,
            "kafka_session_timeout_ms": 6000,
            "kafka_heartbeat_interval_ms": 1000,
        }
    )
    with StockCommand(["run"], settings, tmp_path / "stock.log") as process:
        process.wait_for("HTTP API on", timeout=40)
        process.wait_for("stock change feed tailing")

        # A 10 s outage.
        mark = len(process.lines())
        proxy.cut()
        time.sleep(10)
        proxy.restore()
        back = process.wait_for("is reachable again after", timeout=20, after=mark)
        lines = _outage_lines(process, mark)[: back - mark + 1]
        assert len(lines) <= MOST_LINES_PER_OUTAGE, "\n".join(lines)
        went = [line for line in lines if f"the Kafka broker at {bootstrap} is unreachable" in line]
        assert len(went) == 1, "\n".join(lines)
        match = BACK_AFTER.search(process.lines()[back])
        assert match and 9.0 <= float(match[1]) <= 20.0, process.lines()[back]

        # Another outage, with records for the relay to deliver; SIGTERM during it.
        process.wait_for("outbox relay", timeout=5, after=0)
        proxy.cut()
        _restock(settings, settings.database_url, "v1", "v2", "v3")
        time.sleep(3)
        status, seconds = process.stop(timeout=GRACE)
    output = process.output()
    assert status == 0, output
    _no_tracebacks(output)
    assert seconds < GRACE


def test_a_database_outage_is_two_lines_and_a_stop_during_one_is_clean(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    with ThreadedProxy(CuttableProxy(kafka_settings.database_url)) as proxy:
        settings = kafka_settings.model_copy(
            update={
                "database_url": proxy.proxy.url,
                "http_port": 0,
                "shutdown_grace_seconds": GRACE,
                "kafka_session_timeout_ms": 6000,
                "kafka_heartbeat_interval_ms": 1000,
            }
        )
        address = f"the database at 127.0.0.1:{proxy.port}"
        with StockCommand(["run"], settings, tmp_path / "stock.log") as process:
            process.wait_for("HTTP API on", timeout=40)

            # An outage with a batch waiting for it.
            mark = len(process.lines())
            proxy.cut()
            asyncio.run(send_events(settings, [checkout("o1", {"v1": 1})]))
            process.wait_for(f"{address} is unreachable", timeout=10, after=mark)
            time.sleep(3)
            proxy.restore()
            back = process.wait_for(f"{address} is reachable again after", timeout=20, after=mark)
            lines = _outage_lines(process, mark)[: back - mark + 1]
            assert len(lines) <= MOST_LINES_PER_OUTAGE, "\n".join(lines)
            assert sum(f"{address} is unreachable" in line for line in lines) == 1, lines

            # SIGTERM with a batch waiting for the database: abandoned at once.
            mark = len(process.lines())
            proxy.cut()
            asyncio.run(send_events(settings, [checkout("o2", {"v1": 1})]))
            process.wait_for(f"{address} is unreachable", timeout=10, after=mark)
            time.sleep(1)
            status, seconds = process.stop(timeout=GRACE)
    output = process.output()
    assert status == 0, output
    _no_tracebacks(output)
    assert "abandoning the batch in hand" in output
    assert seconds < GRACE / 2, f"{seconds:.1f}s: the batch should be abandoned at once"
