"""`stock relay`: the outbox relay alone, in a process of its own.

`stock run` relays too (one relay leads per database, elected by an advisory lock),
which is simplest. Under load the relay competes with the consumer for the same
Python process; run `stock run --no-relay` workers beside one or two `stock relay`
processes (the spare one waits on the lock) to give it a core of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from service.adapters.kafka import create_producer, ensure_topics, wait_for_broker
from service.adapters.outbox_relay import OutboxRelay
from service.entrypoints.process import run_until_signalled
from service.settings import Settings

log = logging.getLogger(__name__)


class RelayProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await wait_for_broker(self.settings)
        if self.settings.kafka_create_topics:
            await ensure_topics(self.settings)
        self.producer = create_producer(self.settings)
        await self.producer.start()
        relay = OutboxRelay(self.settings, self.producer)
        self._task = asyncio.create_task(relay.run_forever(), name="outbox-relay")
        log.info("outbox relay started (it publishes while it holds the leader lock)")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop)
