"""Publishes outbox rows to Kafka in id order, then deletes them.

One relay at a time per database: the leader holds a session-level advisory
lock on its LISTEN connection; if it dies, the connection closes, the lock is
freed and another worker's relay takes over within a poll interval. A single
publisher, in id order, keeps every key's events in the order they committed.

Delivery is at least once: a relay that dies after publishing and before deleting
republishes those rows. Each carries a stable CloudEvent `id` (and `stock.changed`
a per-variant `version`), so consumers drop the repeat.

Sent rows are deleted, not marked: an UPDATE of `published_at`, a column in the
partial index's predicate, is never a HOT update (a new row version and new index
entries per row). Only a row Kafka refuses for good is kept, parked with its error.

A `stock.reservation` row with a `sweep_after` still ahead is left alone: the worker
that committed it is sending it itself (service/adapters/fast_publish.py). The relay
sweeps it after that hold if the fast path has not deleted it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from service import failpoints, metrics, tracing
from service.adapters.database import (
    OutageLog,
    asyncpg_dsn,
    database_outage,
    describe,
    is_transient,
    is_unreachable,
)
from service.adapters.kafka import BROKER_UNREACHABLE_ERRORS, broker_watch
from service.adapters.tables import OUTBOX_CHANNEL
from service.outbound import decode_headers
from service.settings import Settings

log = logging.getLogger(__name__)

#: Advisory lock key of the relay leader ("stock-outbox" as a number).
RELAY_LOCK_KEY = 0x73746F636B6F7574

_LEADER_SESSION_SETTINGS = {
    "tcp_keepalives_idle": "15",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "application_name": "stock-outbox-relay",
}

_FETCH = """
    SELECT id, topic, key, value, headers,
           extract(epoch FROM clock_timestamp() - created_at)::float8 AS age
    FROM outbox
    WHERE published_at IS NULL AND (sweep_after IS NULL OR sweep_after <= now())
    ORDER BY id LIMIT $1
"""
_SETTLE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_PARK = "UPDATE outbox SET published_at = now(), publish_error = $2 WHERE id = $1"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)"


def _passing(error: KafkaError) -> bool:
    """Sent again later rather than parked: the broker may take it then. aiokafka marks
    KafkaTimeoutError (no room or no answer in time, as while the broker is away)
    not retriable, but it says nothing about the record."""
    return bool(error.retriable) or isinstance(error, KafkaTimeoutError)


async def _delivery_error(future: asyncio.Future[Any]) -> KafkaError | None:
    try:
        await future
    except KafkaError as error:
        return error
    return None


def _size(row: asyncpg.Record, headers: list[tuple[str, bytes | None]]) -> int:
    """Roughly what the row weighs as a Kafka record (key, value, headers)."""
    return (
        len(row["key"] or b"")
        + len(row["value"] or b"")
        + sum(len(name) + len(value or b"") for name, value in headers)
        + 64
    )


def _observe_published(rows: list[asyncpg.Record], since_fetch: float) -> None:
    per_topic = collections.Counter(row["topic"] for row in rows)
    for topic, count in per_topic.items():  # one labelled child per topic, not per row
        metrics.OUTBOX_PUBLISHED.labels(topic).inc(count)
    observe = metrics.OUTBOX_PUBLISH_SECONDS.observe
    for row in rows:
        observe(row["age"] + since_fetch)


class OutboxRelay:
    def __init__(self, settings: Settings, producer: Any) -> None:
        self.settings = settings
        self.producer = producer
        self.published_total = 0
        self.parked_total = 0
        self.is_leader = False
        self._led_before = False
        self._wake = asyncio.Event()
        self._partitions: dict[str, list[int]] = {}
        self._partition_by_key: dict[tuple[str, bytes], int] = {}
        self._partitioner = DefaultPartitioner()
        self._max_message_bytes: int = getattr(producer, "_max_request_size", 1_048_576)
        #: Interruptions for a passing reason other than an outage (which the database's
        #: and the broker's own lines report): one line when they start, one when done.
        self.interruption = OutageLog(
            "the outbox relay", down="interrupted", up="publishing again", logger=log
        )

    async def run_forever(self) -> None:
        backoff = self.settings.retry_initial_backoff_seconds
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.is_leader = False
                self._interrupted(error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_backoff_seconds)
            else:
                backoff = self.settings.retry_initial_backoff_seconds

    def _interrupted(self, error: Exception, backoff: float) -> None:
        """Says why publishing stopped, once per outage rather than once per retry."""
        detail = f"outbox relay: {describe(error)}"
        if is_unreachable(error):
            database_outage.failed(detail)
        elif isinstance(error, BROKER_UNREACHABLE_ERRORS):
            broker_watch.failed(detail)
        elif is_transient(error) or (isinstance(error, KafkaError) and _passing(error)):
            self.interruption.failed(describe(error))
        else:
            log.error(
                "outbox relay interrupted (%s); retry in %.1fs",
                describe(error),
                backoff,
                exc_info=error,
            )
            return
        log.debug("outbox relay interrupted (%s); retry in %.1fs", describe(error), backoff)

    async def _lead(self) -> None:
        conn = await asyncpg.connect(
            asyncpg_dsn(self.settings.database_url),
            # A leader whose network died must not hold the lock (and stall publishing)
            # until TCP gives up hours later: the server drops it within a minute.
            command_timeout=60,
            server_settings=_LEADER_SESSION_SETTINGS,
        )
        if database_outage.first_failure is not None:
            database_outage.recovered()
        try:
            waited = False
            # Polling is the point: the lock frees when the leader's session ends.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                waited = True
                await asyncio.sleep(self.settings.outbox_poll_interval_seconds)
            self.is_leader = True
            # Said when it starts leading, not each time it takes its lock straight back
            # after an interruption (which the outage lines report).
            log.log(
                logging.INFO if waited or not self._led_before else logging.DEBUG,
                "outbox relay: this worker is the leader",
            )
            self._led_before = True
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            rounds = 0
            while True:
                self._wake.clear()
                published = await self.publish_pending(conn)
                if self.interruption.first_failure is not None:
                    self.interruption.recovered()
                if published and broker_watch.outage.first_failure is not None:
                    broker_watch.answered()  # it took what was sent
                rounds += 1
                if rounds % 1000 == 0:
                    await conn.execute(_PURGE, self.settings.outbox_retention_hours * 3600)
                if published < self.settings.outbox_batch_size:
                    await self._wait_for_work()
        finally:
            self.is_leader = False
            await conn.close()

    async def publish_pending(self, conn: asyncpg.Connection) -> int:
        """Publish one batch of unpublished rows in id order. Returns how many were settled.

        Rows are grouped by the partition their key maps to and sent as one Kafka batch
        per partition (a send per row costs more CPU than the rest of the worker's work
        on that row). Partitions go in parallel; within one, batches go one after the
        other, so a key's events keep their order. A partition stops at its first
        failure for a passing reason (the broker is away): that row and the rest of
        that partition are sent again on the next round. A row Kafka refuses for good
        (too large, bad topic) is parked with its error instead, so one bad row never
        stops everything behind it.
        """
        rows = await conn.fetch(_FETCH, self.settings.outbox_batch_size)
        if not rows:
            return 0
        fetched_at = time.monotonic()
        by_partition: dict[tuple[str, int], list[asyncpg.Record]] = {}
        outcomes: dict[int, KafkaError | None] = {}
        for row in rows:
            try:
                partition = await self._partition_of(row["topic"], row["key"])
            except KafkaError as no_topic:  # parked if for good, else tried again
                outcomes[row["id"]] = no_topic
                continue
            by_partition.setdefault((row["topic"], partition), []).append(row)
        await asyncio.gather(
            *(
                self._send_partition(topic, partition, members, outcomes)
                for (topic, partition), members in by_partition.items()
            )
        )
        sent = [row["id"] for row in rows if row["id"] in outcomes and outcomes[row["id"]] is None]
        parked: list[tuple[int, str]] = []
        passing_failure: KafkaError | None = None
        for row_id, error in outcomes.items():
            if error is None:
                continue
            if _passing(error):
                passing_failure = error
            else:
                log.error("outbox row %d refused by Kafka for good, parked: %r", row_id, error)
                parked.append((row_id, repr(error)))
        if sent:
            failpoints.reach("relay_after_send")
            await conn.execute(_SETTLE, sent)
            by_id = {row["id"]: row for row in rows}
            _observe_published([by_id[i] for i in sent], time.monotonic() - fetched_at)
        if parked:
            await conn.executemany(_PARK, parked)
            metrics.OUTBOX_PARKED.inc(len(parked))
        self.published_total += len(sent)
        self.parked_total += len(parked)
        if passing_failure is not None:
            raise passing_failure
        return len(sent) + len(parked)

    async def _partition_of(self, topic: str, key: bytes | None) -> int:
        """The partition Kafka's default partitioner gives the key (murmur2, as every
        Kafka client does); a row without a key (a dead-lettered tombstone) goes to any."""
        if key is not None and (topic, key) in self._partition_by_key:
            return self._partition_by_key[(topic, key)]
        partitions = self._partitions.get(topic)
        if partitions is None:
            found = await self.producer.partitions_for(topic)
            partitions = self._partitions[topic] = sorted(found)
        partition = int(self._partitioner(key, partitions, partitions))
        if key is not None:  # murmur2 in Python is dear; variant keys repeat a lot
            if len(self._partition_by_key) >= 100_000:
                self._partition_by_key.clear()
            self._partition_by_key[(topic, key)] = partition
        return partition

    async def _send_partition(
        self,
        topic: str,
        partition: int,
        rows: list[asyncpg.Record],
        outcomes: dict[int, KafkaError | None],
    ) -> None:
        position = 0
        while position < len(rows):
            batch = self.producer.create_batch()
            members: list[asyncpg.Record] = []
            while position < len(rows):
                row = rows[position]
                headers = decode_headers(row["headers"])
                size = _size(row, headers)
                if size > self._max_message_bytes:
                    # Refused as aiokafka's send() would: a batch does not check.
                    outcomes[row["id"]] = MessageSizeTooLargeError(
                        f"{size} bytes, more than max_request_size"
                    )
                    position += 1
                    continue
                appended = batch.append(
                    key=row["key"], value=row["value"], timestamp=None, headers=headers
                )
                if appended is None:  # the batch is full; the row opens the next one
                    break
                members.append(row)
                position += 1
            # Closed: aiokafka would otherwise hold it open for the linger, for send().
            batch.close()
            try:
                # A `publish <topic>` span linked to each row's trace (none while off).
                with tracing.publishing(topic, (decode_headers(r["headers"]) for r in members)):
                    delivery = await self.producer.send_batch(batch, topic, partition=partition)
                    await delivery
            except KafkaError as error:
                if _passing(error):
                    for row in members:
                        outcomes[row["id"]] = error
                    return
                # Refused for good: find which rows, one at a time.
                for row in members:
                    failure = await self._send_one(row, partition)
                    outcomes[row["id"]] = failure
                    if failure is not None and _passing(failure):
                        return
            else:
                for row in members:
                    outcomes[row["id"]] = None

    async def _send_one(self, row: asyncpg.Record, partition: int) -> KafkaError | None:
        try:
            future = await self.producer.send(
                row["topic"],
                value=row["value"],
                key=row["key"],
                headers=decode_headers(row["headers"]),
                partition=partition,
            )
        except KafkaError as refused:
            return refused
        return await _delivery_error(future)

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.outbox_poll_interval_seconds)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()
