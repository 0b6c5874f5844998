"""One `stock` process: the worker, the HTTP API, or both (the default of `stock run`).

Started in order (worker, then API, so /readyz never sees a half-built process) and
stopped in reverse on SIGINT or SIGTERM: live streams end first, then the server,
then the worker finishes and commits the batch in hand. The whole stop takes at most
STOCK_SHUTDOWN_GRACE_SECONDS.

A signal that comes while the process is still starting (waiting for its database
or its broker) cancels the start: the process says what it was waiting for, stops
what had started, and exits with status 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from service import collector
from service.adapters.database import (
    create_engine,
    database_outage,
    describe,
    is_unreachable,
    watch_database,
)
from service.adapters.kafka import broker_watch, ensure_topics, wait_for_broker
from service.adapters.migrate import refuse_outdated_schema
from service.entrypoints.http.app import create_app
from service.entrypoints.http.server import ApiServer
from service.entrypoints.http.services import ApiServices
from service.entrypoints.worker import Worker, within
from service.settings import Settings

log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, None], settings: Settings) -> None:
    """Run a process's main coroutine on the configured event loop (STOCK_EVENT_LOOP).

    uvloop by default: the same worker spends less CPU per event in the loop itself
    (docs/design.md, "Consume loop and cost per event", measured both ways)."""
    collector.observe_pauses()
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # an install without it: the standard loop
            log.debug("uvloop is not installed; running on asyncio's own loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


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
        watch_database(settings.database_url)
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
        self._starting: str | None = "starting"
        self._watching = False

    @property
    def starting(self) -> str:
        """What start() is doing now (for the line of a stop that interrupts it)."""
        if self._starting is None and self.worker is not None:
            return self.worker.starting
        return self._starting or "starting"

    async def start(self) -> None:
        broker_watch.watch(self.settings)
        self._watching = True
        if self.server is not None:
            self.server.bind()
        if self.worker is not None:
            self._starting = None  # the worker says
            await self.worker.start()
        if self.api is not None and self.server is not None:
            if self.worker is None:
                self._starting = f"waiting for {database_outage.subject}"
                await refuse_outdated_schema(self.api.engine)
                broker_at = f"the Kafka broker at {self.settings.kafka_bootstrap_servers}"
                self._starting = f"waiting for {broker_at}"
                await wait_for_broker(self.settings)
                if self.settings.kafka_create_topics:
                    self._starting = f"creating topics on {broker_at}"
                    await ensure_topics(self.settings)
            self._starting = "starting the HTTP API"
            await self.api.feed.start()
            await self.server.start()
            log.info(
                "HTTP API on http://%s:%d (OpenAPI /docs, AsyncAPI /asyncapi)",
                self.settings.http_host,
                self.server.port,
            )
        self._starting = "started"

    async def stop(self, grace: float | None = None) -> None:
        """Stops what started; safe after a start that failed or was cancelled half-way.
        Takes at most `grace` seconds (default STOCK_SHUTDOWN_GRACE_SECONDS)."""
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = loop.time() + budget
        if self.api is not None and self.server is not None:
            self.api.feed.close()
            await within(self.server.stop(), deadline - loop.time(), "the HTTP API")
            await within(self.api.feed.stop(), deadline - loop.time(), "the stock change feed")
            await within(
                self.api.engine.dispose(), deadline - loop.time(), "the API's database pool"
            )
        if self.worker is not None:
            await self.worker.stop(grace=max(deadline - loop.time(), 0.0))
        if self._watching:
            self._watching = False
            await broker_watch.unwatch()

    async def run_until_signalled(self) -> None:
        await run_until_signalled(self.start, self.stop, starting=lambda: self.starting)


class _StartExited(Exception):
    """A SystemExit raised by start() (a refusal: an old schema, a busy port), carried
    out of the start's task: raised in a task it would end the event loop at once."""

    def __init__(self, request: SystemExit) -> None:
        super().__init__(str(request))
        self.request = request


async def _start(start: Callable[[], Awaitable[None]]) -> None:
    try:
        await start()
    except SystemExit as request:
        raise _StartExited(request) from None


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    *,
    starting: Callable[[], str] = lambda: "starting",
) -> None:
    """Start, wait for SIGINT or SIGTERM, stop; stop also when start failed half-way.

    The start runs as a task of its own, so a signal that comes while it waits (for
    the database, for the broker) cancels it: one line says what it was waiting for
    (`starting()`), then what had started is stopped and this returns normally.
    """
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    received: list[str] = []

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        signalled.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    starting_task = asyncio.create_task(_start(start), name="stock-start")
    signal_wait = asyncio.create_task(signalled.wait(), name="stock-signal")
    refusal: SystemExit | None = None
    try:
        await asyncio.wait({starting_task, signal_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting_task.done():
            starting_task.result()  # what the start raised, if it failed
            collector.freeze_what_started()
            await signal_wait
            log.info("stopping (%s): finishing the work in hand, then committing", received[0])
        else:
            what = starting()
            starting_task.cancel()
            await asyncio.wait({starting_task})
            if not starting_task.cancelled() and starting_task.exception() is not None:
                log.debug("the cancelled start ended with %r", starting_task.exception())
            log.warning("stopped while %s (%s before the start finished)", what, received[0])
    except _StartExited as exited:
        refusal = exited.request
    finally:
        signal_wait.cancel()
        _quiet_about_abandoned_work(loop)
        await stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if refusal is not None:
        raise refusal


def _quiet_about_abandoned_work(loop: asyncio.AbstractEventLoop) -> None:
    """From the stop on, an error left in a future that nobody will await any more
    (a Kafka delivery or request given up, a connection to a database that is away)
    is the expected end of abandoned work: a debug line, not an asyncio traceback."""
    fallback = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if error is not None and (isinstance(error, KafkaError) or is_unreachable(error)):
            log.debug("%s: %s", context.get("message", "abandoned work"), describe(error))
            return
        if fallback is not None:
            fallback(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
