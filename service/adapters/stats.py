"""Database figures for /metrics and /readyz.

The backlog reads a small partial index. Dead letters and orders by status are
counted over their tables, which grow (no retention yet): each read is bounded by a
statement timeout, so a scrape can fail, but never load the database for long.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# The backlog count reads the small partial index of unpublished rows.
_FIGURES = text(
    """
    SELECT
        (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS outbox_backlog,
        (SELECT count(*) FROM dead_letters) AS dead_letters
    """
)
_ORDERS_BY_PHASE = text("SELECT phase, count(*) FROM orders GROUP BY phase")


@dataclass(frozen=True, slots=True)
class DatabaseFigures:
    outbox_backlog: int
    dead_letters: int
    orders_by_phase: dict[str, int]


async def read_figures(engine: AsyncEngine, timeout_ms: int = 2000) -> DatabaseFigures:
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        backlog, dead = (await conn.execute(_FIGURES)).one()
        phases = {phase: count for phase, count in await conn.execute(_ORDERS_BY_PHASE)}
    return DatabaseFigures(backlog, dead, phases)


async def database_answers(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
