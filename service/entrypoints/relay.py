"""`stock relay`: the outbox relay alone, in a process of its own.

`stock run` relays too (one relay leads per database, elected by an advisory lock),
which is simplest. Under load the relay competes with the consumer for the same
Python process; run `stock run --no-relay` workers beside one or two `stock relay`
processes (the spare one waits on the lock) to give it a core of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.adapters.database import create_engine, database_outage, watch_database
from service.adapters.kafka import (
    broker_watch,
    create_producer,
    ensure_topics,
    stop_producer,
    wait_for_broker,
)
from service.adapters.migrate import refuse_outdated_schema
from service.adapters.outbox_relay import OutboxRelay
from service.entrypoints.process import run_until_signalled
from service.settings import Settings

log = logging.getLogger(__name__)


class RelayProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._watching = False
        watch_database(settings.database_url)
        #: What start() is doing now, for the line of a stop that interrupts it.
        self.starting = "starting the outbox relay"

    async def start(self) -> None:
        broker_watch.watch(self.settings)
        self._watching = True
        # The schema first, as `stock run` does: a relay on a database that is away, or
        # not migrated yet, waits or says so before it touches the broker.
        self.starting = f"waiting for {database_outage.subject}"
        engine = create_engine(self.settings.database_url, pool_size=1)
        try:
            await refuse_outdated_schema(engine)
        finally:
            await engine.dispose()
        broker_at = f"the Kafka broker at {self.settings.kafka_bootstrap_servers}"
        self.starting = f"waiting for {broker_at}"
        await wait_for_broker(self.settings)
        if self.settings.kafka_create_topics:
            self.starting = f"creating topics on {broker_at}"
            await ensure_topics(self.settings)
        self.starting = f"connecting the outbox relay to {broker_at}"
        self.producer = create_producer(self.settings)
        await self.producer.start()
        relay = OutboxRelay(self.settings, self.producer)
        self._task = asyncio.create_task(relay.run_forever(), name="outbox-relay")
        self.starting = "started"
        log.info("outbox relay started (it publishes while it holds the leader lock)")

    async def stop(self, grace: float | None = None) -> None:
        """Stops what started, in at most `grace` seconds (default
        STOCK_SHUTDOWN_GRACE_SECONDS); what is not delivered by then stays in the outbox."""
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = loop.time() + budget
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=max(deadline - loop.time(), 0.1))
            self._task = None
        if self.producer is not None:
            await stop_producer(self.producer, deadline - loop.time())
            self.producer = None
        if self._watching:
            self._watching = False
            await broker_watch.unwatch()

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop, starting=lambda: self.starting)
