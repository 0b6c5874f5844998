"""The ceiling: the worker's own SQL for the same batches, straight from asyncpg.

First the batch path runs in-process over the scenario's events (no Kafka) while
every statement it sends is recorded, batch by batch, with its parameters. Then the
recording is replayed on a fresh database with the same catalogue, one transaction
per batch: no Kafka, no decoding, no domain code, no SQLAlchemy. What the worker
loses against this is the price of everything that is not SQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import event

from bench.workload import BenchEvent
from service.adapters.database import asyncpg_dsn, create_engine
from service.application.consume import BatchConsumer
from service.settings import Settings

_TABLES = (
    "processed_events",
    "dead_letters",
    "orders",
    "order_lines",
    "variants",
    "audit_log",
    "outbox",
    "pg_notify",
)


@dataclass(slots=True)
class _Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()


@dataclass
class Recording:
    batches: list[list[tuple[str, Sequence[Any]]]] = field(default_factory=list)

    @property
    def statements(self) -> int:
        return sum(len(batch) for batch in self.batches)


async def record_batches(
    settings: Settings, events: list[BenchEvent], batch_size: int
) -> Recording:
    """Run the batch path over `events` and keep what it sent to PostgreSQL."""
    engine = create_engine(settings.database_url, pool_size=1)
    recording = Recording()
    current: list[tuple[str, Sequence[Any]]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if any(table in statement for table in _TABLES):
            current.append((statement, tuple(parameters or ())))

    event.listen(engine.sync_engine, "before_cursor_execute", keep)
    consumer = BatchConsumer(engine, settings)
    now_ms = int(time.time() * 1000)
    records = [
        _Record(e.topic, 0, offset, now_ms, e.key, e.value) for offset, e in enumerate(events)
    ]
    try:
        for start in range(0, len(records), batch_size):
            current = []
            await consumer.handle(records[start : start + batch_size])
            recording.batches.append(current)
    finally:
        await engine.dispose()
    return recording


async def replay(database_url: str, recording: Recording) -> float:
    """Seconds to run every recorded batch, each in one transaction."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        started = time.perf_counter()
        for batch in recording.batches:
            async with conn.transaction():
                for statement, parameters in batch:
                    await conn.fetch(statement, *parameters)
        return time.perf_counter() - started
    finally:
        await conn.close()
