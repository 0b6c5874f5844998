"""One `stock` process: the worker, the HTTP API, or both (the default of `stock run`).

Started in order (worker, then API, so /readyz never sees a half-built process) and
stopped in reverse on SIGINT or SIGTERM: live streams end first, then the server,
then the worker finishes and commits the batch in hand.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from service.adapters.database import create_engine
from service.adapters.kafka import ensure_topics, wait_for_broker
from service.adapters.migrate import refuse_outdated_schema
from service.entrypoints.http.app import create_app
from service.entrypoints.http.server import ApiServer
from service.entrypoints.http.services import ApiServices
from service.entrypoints.worker import Worker
from service.settings import Settings

log = logging.getLogger(__name__)


class StockProcess:
    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool = True,
        api: bool = True,
        sweep: bool = True,
        relay: bool = True,
    ) -> None:
        if not (worker or api):
            raise ValueError("a process runs the worker, the API, or both")
        self.settings = settings
        self.worker = Worker(settings, sweep=sweep, relay=relay) if worker else None
        self.api: ApiServices | None = None
        self.server: ApiServer | None = None
        if api:
            # Its own pool: a burst of HTTP requests cannot starve the worker's batches.
            engine = create_engine(
                settings.database_url,
                pool_size=settings.database_pool_size,
                pool_timeout=settings.http_database_timeout_seconds,
            )
            self.api = ApiServices.build(settings, engine, self.worker)
            self.server = ApiServer(create_app(self.api), settings.http_host, settings.http_port)

    async def start(self) -> None:
        if self.server is not None:
            self.server.bind()
        if self.worker is not None:
            await self.worker.start()
        if self.api is not None and self.server is not None:
            if self.worker is None:
                await refuse_outdated_schema(self.api.engine)
                await wait_for_broker(self.settings)
                if self.settings.kafka_create_topics:
                    await ensure_topics(self.settings)
            await self.api.feed.start()
            await self.server.start()
            log.info(
                "HTTP API on http://%s:%d (OpenAPI /docs, AsyncAPI /asyncapi)",
                self.settings.http_host,
                self.server.port,
            )

    async def stop(self) -> None:
        """Stops what started; safe after a start that failed half-way."""
        if self.api is not None and self.server is not None:
            self.api.feed.close()
            await self.server.stop()
            await self.api.feed.stop()
            await self.api.engine.dispose()
        if self.worker is not None:
            await self.worker.stop()

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop)


async def run_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Start, wait for SIGINT or SIGTERM, stop; stop also when start failed half-way."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signalled.set)
    try:
        await start()
        await signalled.wait()
        log.info("stopping: finishing the work in hand, then committing")
    finally:
        await stop()
