"""What the HTTP routes work with, built once per process and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.change_feed import StockChangeFeed
from service.application.commands import StockCommands
from service.application.queries import StockQueries
from service.settings import Settings

if TYPE_CHECKING:
    from service.entrypoints.worker import Worker


@dataclass
class ApiServices:
    settings: Settings
    engine: AsyncEngine
    commands: StockCommands
    queries: StockQueries
    feed: StockChangeFeed
    #: The worker of this process, if it runs one (`stock run`); None for `stock api`.
    worker: Worker | None = None
    #: When the database figures of /metrics were last read (monotonic seconds).
    figures_read_at: float = field(default=float("-inf"))

    @classmethod
    def build(
        cls, settings: Settings, engine: AsyncEngine, worker: Worker | None = None
    ) -> ApiServices:
        return cls(
            settings=settings,
            engine=engine,
            commands=StockCommands(
                engine, settings, give_up_after=settings.http_database_timeout_seconds
            ),
            queries=StockQueries(engine, settings),
            feed=StockChangeFeed(settings),
            worker=worker,
        )


def services(request: Request) -> ApiServices:
    found: ApiServices = request.app.state.services
    return found


async def services_of(request: Request) -> ApiServices:
    """`services` as an async dependency: FastAPI runs a plain `def` dependency on a
    worker thread, a thread hop per request (the ASGI app alone with a stub command:
    246 -> 171 us of CPU per reserve; and no wait for a free thread under load)."""
    return services(request)
