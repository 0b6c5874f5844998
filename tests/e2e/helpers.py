"""Helpers for the end-to-end tests: a running worker, a spy on what it consumed,
publishing with partitions and offsets known, and plain-SQL looks at the database.

Nothing here replaces a part of the system: the worker, the broker and the database
are the real ones. `ConsumedLog` only records what the real batch handler was given
and what it reported, then lets it run as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.consume import BatchReport
from service.entrypoints.worker import Worker
from service.settings import Settings
from tests.support.kafka import TopicReader, structured
from tests.support.records import topic_for

WAIT = 30.0


@dataclass(frozen=True)
class Sent:
    """Where the broker put a message we published."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class ConsumedLog:
    """What one worker's batch handler was handed, and what it reported back."""

    records: list[Any] = field(default_factory=list)
    reports: list[BatchReport] = field(default_factory=list)

    def positions(self) -> list[tuple[str, int, int]]:
        return [(r.topic, r.partition, r.offset) for r in self.records]

    def total(self, what: str) -> int:
        return sum(getattr(report, what) for report in self.reports)


def spy_on_consumer(worker: Worker) -> ConsumedLog:
    """Record every batch the worker's own subscriber hands to its BatchConsumer.

    The FastStream handler looks `consumer.handle` up on each call, so an instance
    attribute that calls the real method sees every batch without changing it.
    """
    log = ConsumedLog()
    real_handle = worker.consumer.handle

    async def handle(records: Sequence[Any]) -> BatchReport:
        report = await real_handle(records)
        log.records.extend(records)
        log.reports.append(report)
        return report

    worker.consumer.handle = handle  # type: ignore[method-assign]
    return log


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[tuple[Worker, ConsumedLog]]:
    worker = Worker(settings)
    log = spy_on_consumer(worker)
    await worker.start()
    try:
        yield worker, log
    finally:
        await worker.stop()


def assignment(worker: Worker) -> set[TopicPartition]:
    """Partitions the worker's Kafka consumer holds right now."""
    found: set[TopicPartition] = set()
    for subscriber in worker.broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        if consumer is not None:
            found.update(consumer.assignment())
    return found


# ------------------------------------------------------------------- publishing


Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


async def send(
    bootstrap: str, messages: Iterable[Message], *, partition: int | None = None
) -> list[Sent]:
    """Publish (topic, key, value, headers) in order, each acknowledged; say where each went."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    sent: list[Sent] = []
    try:
        for topic, key, value, headers in messages:
            meta = await producer.send_and_wait(
                topic, value=value, key=key, headers=headers or [], partition=partition
            )
            sent.append(Sent(topic, meta.partition, meta.offset, key, value, tuple(headers or ())))
    finally:
        await producer.stop()
    return sent


def as_message(settings: Settings, event: dict[str, Any]) -> Message:
    """A structured-mode event on the topic of its type, keyed by its order id."""
    key = str(event["data"]["order_id"]).encode()
    return (topic_for(settings, event["type"]), key, structured(event), None)


async def send_events(
    settings: Settings, events: Iterable[dict[str, Any]], *, partition: int | None = None
) -> list[Sent]:
    return await send(
        settings.kafka_bootstrap_servers,
        [as_message(settings, e) for e in events],
        partition=partition,
    )


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """High watermark of every partition of the topics."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions_for(consumer, topic))
        ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def _partitions_for(consumer: Any, topic: str) -> set[int]:
    for _ in range(100):
        await consumer.topics()  # refreshes the cluster metadata
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no metadata for topic {topic}")


async def committed_offsets(
    bootstrap: str, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets (read without joining the group)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        found: dict[TopicPartition, int] = {}
        for tp in partitions:
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                found[tp] = offset
        return found
    finally:
        await consumer.stop()


# --------------------------------------------------------------------- waiting


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float = WAIT,
    what: str = "condition",
) -> None:
    """Poll a condition (plain or async) until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _holds(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _holds(condition: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


# -------------------------------------------------------------------- database


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def outbox_pending(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))


async def outbox_drained(engine: AsyncEngine) -> bool:
    return await outbox_pending(engine) == 0


async def processed_count(engine: AsyncEngine, source: str | None = None) -> int:
    if source is None:
        return int(await scalar(engine, "SELECT count(*) FROM processed_events"))
    return int(
        await scalar(engine, "SELECT count(*) FROM processed_events WHERE source = :s", s=source)
    )


async def dead_letter_count(engine: AsyncEngine) -> int:
    return int(await scalar(engine, "SELECT count(*) FROM dead_letters"))


async def processed_ids(engine: AsyncEngine) -> set[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT source, event_id FROM processed_events"))
        return {(r.source, r.event_id) for r in rows}


async def stock(engine: AsyncEngine) -> dict[str, tuple[int, int, int]]:
    """variant_id -> (on_hand, reserved, version)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT variant_id, on_hand, reserved, version FROM variants")
        )
        return {r.variant_id: (r.on_hand, r.reserved, r.version) for r in rows}


async def versions(engine: AsyncEngine) -> dict[str, int]:
    return {v: row[2] for v, row in (await stock(engine)).items()}


async def phases(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT order_id, phase FROM orders"))
        return {r.order_id: r.phase for r in rows}


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Everything the worker's effects live in, to compare before and after a replay."""
    async with engine.connect() as conn:
        out: dict[str, Any] = {}
        for name, sql in {
            "variants": "SELECT variant_id, product_id, on_hand, reserved, version "
            "FROM variants ORDER BY variant_id",
            "orders": "SELECT order_id, phase, expires_at, payment, cancelled, reason "
            "FROM orders ORDER BY order_id",
            "order_lines": "SELECT order_id, variant_id, quantity FROM order_lines "
            "ORDER BY order_id, variant_id",
            "audit_log": "SELECT id, variant_id, change_type, delta_on_hand, delta_reserved, "
            "version, reference FROM audit_log ORDER BY id",
            "processed_events": "SELECT source, event_id FROM processed_events "
            "ORDER BY source, event_id",
            "dead_letters": 'SELECT topic, partition, "offset", reason FROM dead_letters '
            'ORDER BY topic, partition, "offset"',
            "outbox": "SELECT id, topic, key, value FROM outbox ORDER BY id",
            "outbox_appended": _OUTBOX_APPENDED,
        }.items():
            out[name] = [tuple(row) for row in await conn.execute(text(sql))]
        return out


# ------------------------------------------------------------- published topics


def statuses_by_order(records: Iterable[Any]) -> dict[str, list[str]]:
    """order_id -> the stock.reservation statuses published for it, in topic order."""
    found: dict[str, list[str]] = defaultdict(list)
    for record in records:
        data = json.loads(record.value)["data"]
        found[data["order_id"]].append(data["status"])
    return dict(found)


def reservations_of(records: Iterable[Any], order_id: str) -> list[dict[str, Any]]:
    out = []
    for record in records:
        data = json.loads(record.value)["data"]
        if data["order_id"] == order_id:
            out.append(data)
    return out


def published_counts(reader: TopicReader) -> dict[str, int]:
    return {topic: len(messages) for topic, messages in reader.messages.items() if messages}


#: Rows ever appended to the outbox (sent rows are deleted): its identity's last value.
#: Exact while no transaction rolls back after appending, as in these tests.
_OUTBOX_APPENDED = (
    "SELECT COALESCE(max(last_value), 0) FROM pg_sequences WHERE sequencename = 'outbox_id_seq'"
)


async def caught_up(engine: AsyncEngine, reader: TopicReader) -> dict[str, int]:
    """Wait until the outbox is drained and every row ever in it has been read back,
    once: nothing published twice (the fast path and the relay never both send a row
    while nothing fails).

    Counted from the outbox, not from the broker's high watermarks: tansu
    reports a stale end offset for a partition whose last batch held several records.
    """
    await wait_until(lambda: outbox_drained(engine), what="outbox drained")
    rows = int(await scalar(engine, _OUTBOX_APPENDED))
    await reader.wait_for(
        lambda: sum(published_counts(reader).values()) >= rows,
        timeout=WAIT,
        what=f"{rows} published messages read back",
    )
    counts = published_counts(reader)
    assert sum(counts.values()) == rows, (counts, rows)
    return counts
