"""A signal ends a start that waits for its database or its broker (issue 11, item 1).

Real `stock run`, `stock api` and `stock relay` processes, pointed at a port where
nothing listens: each waits, says what for, and on SIGTERM (or Ctrl-C) stops within
seconds with status 0, one line naming what it was waiting for, and no traceback.
Before the fix the signal set an event that nothing looked at until the start was
done: the process waited on until SIGKILL.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from service.devstack.servers import free_port
from service.settings import Settings, isolated_settings
from tests.support.stock_process import StockCommand, warnings_and_errors

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMMANDS = [["run"], ["api"], ["relay"]]


def _check_stopped_cleanly(process: StockCommand, signum: int, waiting_for: str) -> None:
    time.sleep(1.0)  # well into the wait: a few retries and their backoff
    status, _ = process.stop(signum, timeout=10.0)
    output = process.output()
    assert status == 0, output
    assert "Traceback" not in output
    assert f"stopped while waiting for {waiting_for}" in output
    # What the wait printed: it is unreachable, then it stopped. No flood.
    assert len(warnings_and_errors(process.lines())) <= 3, output


@pytest.mark.parametrize(
    ("args", "signum"),
    [(["run"], signal.SIGTERM), (["run"], signal.SIGINT), (["api"], signal.SIGTERM),
     (["relay"], signal.SIGTERM)],
    ids=["run-SIGTERM", "run-SIGINT", "api-SIGTERM", "relay-SIGTERM"],
)
def test_a_signal_ends_the_wait_for_an_unreachable_database(
    args: list[str], signum: int, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    settings = isolated_settings(
        f"w{uuid.uuid4().hex[:6]}",
        database_url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        http_port=0,
    )
    with StockCommand(args, settings, tmp_path / "stock.log") as process:
        process.wait_for(f"the database at 127.0.0.1:{port} is unreachable", timeout=60)
        _check_stopped_cleanly(process, signum, f"the database at 127.0.0.1:{port}")


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_a_signal_ends_the_wait_for_an_unreachable_broker(
    args: list[str], settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{port}", "http_port": 0}
    )
    with StockCommand(args, settings, tmp_path / "stock.log") as process:
        process.wait_for(f"the Kafka broker at 127.0.0.1:{port} is unreachable", timeout=60)
        _check_stopped_cleanly(process, signal.SIGTERM, f"the Kafka broker at 127.0.0.1:{port}")
