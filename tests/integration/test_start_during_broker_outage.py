"""A worker whose broker goes away in the middle of its start waits for it, then starts.

The start waits for the broker once (`wait_for_broker`), then connects the relay's
producer and joins the consumer group, each a connection of its own. A broker that
went away in between used to end the start with `KafkaConnectionError: Unable to
bootstrap` and the process with status 1 (seen in the fault suite: a worker restarted
just before a broker cut exited on its own), the restart loop `wait_for_broker` is
there to avoid. Real tansu behind a real TCP proxy, cut at the exact step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.entrypoints import worker as worker_module
from service.entrypoints.worker import Worker
from service.settings import Settings
from tests.e2e.helpers import assignment, processed_count, send_events, wait_until
from tests.support.records import checkout
from tests.support.stock_process import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

#: How long the broker stays away once cut (long enough for several failed attempts).
AWAY_SECONDS = 2.0


class Outage:
    """Cuts the proxy once, at the step it is armed for, and restores it later."""

    def __init__(self, proxy: ThreadedProxy) -> None:
        self.proxy = proxy
        self.struck = False
        self._restoring: set[asyncio.Task[None]] = set()

    def strike(self) -> None:
        """Called from the worker's own code (plain or async): the cut itself runs on
        the proxy's thread, so blocking here a moment stalls nothing it needs."""
        if self.struck:
            return
        self.struck = True
        self.proxy.cut()
        self._restoring.add(asyncio.get_running_loop().create_task(self._restore_later()))

    async def _restore_later(self) -> None:
        await asyncio.sleep(AWAY_SECONDS)
        await asyncio.to_thread(self.proxy.restore)


@pytest.mark.parametrize("step", ["connecting the relay", "joining the group"])
async def test_a_broker_gone_after_the_start_up_wait_is_waited_for(
    settings: Settings,
    engine: Any,
    cuttable_broker: tuple[ThreadedProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    proxy, bootstrap = cuttable_broker
    s = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    outage = Outage(proxy)
    worker = Worker(s, sweep=False)
    if step == "connecting the relay":
        real_create_producer = worker_module.create_producer

        def create_producer_after_a_cut(settings: Settings) -> Any:
            outage.strike()
            return real_create_producer(settings)

        monkeypatch.setattr(worker_module, "create_producer", create_producer_after_a_cut)
    else:
        real_start = worker.broker.start

        async def start_after_a_cut() -> None:
            outage.strike()
            await real_start()

        monkeypatch.setattr(worker.broker, "start", start_after_a_cut)

    try:
        async with asyncio.timeout(120):  # a guard against a hang, not a speed check
            await worker.start()
            assert outage.struck
            await wait_until(lambda: bool(assignment(worker)), what="partitions assigned")
            await send_events(s, [checkout("o1", {"v1": 1})])
            await wait_until(lambda: _processed(engine), timeout=60, what="the checkout consumed")
    finally:
        await worker.stop()


async def _processed(engine: Any) -> bool:
    return await processed_count(engine) >= 1
