"""The outbox's fast path: a process publishes the `stock.reservation` rows it has
just committed itself, instead of waiting for the relay (NServiceBus's outbox does the
same: send right after the commit, keep the row only as the fallback).

The unit of work appends every outbox row through `append_outbox`. A reservation row
gets a `sweep_after`: the relay (service/adapters/outbox_relay.py) leaves it alone until
then. Right after the commit the unit of work hands the rows it marked for the fast path
to this process's `FastPublisher`, which sends them (off the caller's task, in the order
they were handed over) and deletes each one once Kafka acknowledged it. What it did not
settle (the process died between the commit and the send, or between the send and the
delete; Kafka refused or did not answer) stays in the outbox and the relay sends it once
the hold ends (a failed send releases its row to the relay at once).

Order per order id (the key of `stock.reservation`): a row takes the fast path only if
no earlier reservation row of its order is still in the outbox. The unit of work asks
with the order locked (FOR UPDATE), so every earlier row of the order has committed and
a settled one was acknowledged by Kafka before it was deleted. A row that does not take
the fast path carries the hold of the rows before it, so the relay, which sends in id
order, cannot send it before them. The first delivery of each announcement is therefore
in commit order per order; a late repeat (same CloudEvent id: the relay swept a row the
fast path then also sent) is possible, as it always was with the relay alone.

`stock.changed` and the other topics stay on the relay: it keeps their per-key order
across processes (CONTRACT.md invariant 5).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import failpoints, metrics, tracing
from service.adapters.database import describe
from service.adapters.tables import OUTBOX_CHANNEL
from service.outbound import OutboxMessage
from service.settings import Settings

log = logging.getLogger(__name__)

#: Messages waiting for the sender beyond this are left to the relay (after the hold),
#: so a broker that stalls cannot make the queue grow without bound.
MAX_WAITING = 20_000

# One round trip appends the rows, reads what the fast path needs and wakes the relay at
# commit. Per reservation row (`reservation`: on stock.reservation, with a key):
# `after`: the latest hold of its order's rows still in the outbox (the statement's
# snapshot: not this statement's own rows), which it must not beat; the rows of an
# order with none take the fast path's hold (`grace` seconds from now, when `fast`), the
# others none; the first row of each such order in this statement (`first_of_key`) is
# the one the fast path sends (`fast_positions`). `earlier` looks the orders up in one
# scan, not one per row: with the settled rows' dead index entries a lookup costs
# milliseconds (a correlated subquery per row, tried, made a 500-row batch wait
# hundreds of ms). `rows` is read twice, so PostgreSQL computes it once.
_APPEND = text(
    f"""
    WITH earlier AS (
        SELECT key, max(sweep_after) AS after FROM outbox
        WHERE key = ANY(CAST(:reservation_keys AS bytea[]))
          AND sweep_after IS NOT NULL AND published_at IS NULL
        GROUP BY key
    ),
    rows AS (
        SELECT t.*, earlier.after
        FROM unnest(
            CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:values AS bytea[]),
            CAST(:headers AS text[]), CAST(:reservations AS boolean[]),
            CAST(:firsts AS boolean[])
        ) WITH ORDINALITY AS t(topic, key, value, headers, reservation, first_of_key, position)
        LEFT JOIN earlier ON t.reservation AND earlier.key = t.key
    ),
    inserted AS (
        INSERT INTO outbox (topic, key, value, headers, sweep_after)
        SELECT topic, key, value, CAST(headers AS jsonb),
               CASE WHEN reservation THEN greatest(
                   clock_timestamp() + make_interval(secs => CASE
                       WHEN CAST(:fast AS boolean) AND after IS NULL
                       THEN CAST(:grace AS float8) ELSE 0 END),
                   after
               ) END
        FROM rows
        ORDER BY position
        RETURNING id
    )
    SELECT (SELECT array_agg(id) FROM inserted) AS ids,
           (SELECT array_agg(position ORDER BY position) FROM rows
            WHERE CAST(:fast AS boolean) AND reservation AND first_of_key AND after IS NULL)
           AS fast_positions,
           pg_notify('{OUTBOX_CHANNEL}', '')
    """
)

_NOTIFY = text(f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')")
_SETTLE = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")
# The failed row and any queued behind it (same order): the relay's, now.
_RELEASE = text(
    """
    UPDATE outbox SET sweep_after = now()
    WHERE key = ANY(CAST(:keys AS bytea[])) AND sweep_after > now() AND published_at IS NULL
    """
)


@dataclass(frozen=True, slots=True)
class FastRow:
    """An outbox row a transaction committed for the fast path."""

    id: int
    message: OutboxMessage


async def append_outbox(
    conn: AsyncConnection,
    messages: Sequence[OutboxMessage],
    settings: Settings,
    *,
    fast: bool,
) -> list[FastRow]:
    """Queue `messages` in the outbox (in order) and wake the relay at commit.

    Returns the rows the caller is to hand to its `FastPublisher` once the transaction
    commits (none if `fast` is false: no publisher in this process). Call it with the
    orders of the reservation rows locked: the rule above reads their earlier rows."""
    if not messages:
        return []
    reservation_topic = settings.topic_stock_reservation
    reservations: list[bool] = []
    firsts: list[bool] = []
    seen: set[bytes] = set()
    for message in messages:
        key = message.key
        reservation = message.topic == reservation_topic and key is not None
        reservations.append(reservation)
        firsts.append(reservation and key not in seen)
        if reservation and key is not None:
            seen.add(key)
    ids, fast_positions, _ = (
        await conn.execute(
            _APPEND,
            {
                "topics": [m.topic for m in messages],
                "keys": [m.key for m in messages],
                "values": [m.value for m in messages],
                "headers": [m.headers_json() for m in messages],
                "reservations": reservations,
                "firsts": firsts,
                "reservation_keys": list(seen),
                "fast": fast,
                "grace": settings.outbox_fast_path_grace_ms / 1000,
            },
        )
    ).one()
    if not fast_positions:
        return []
    # Identity values are drawn in insert order, so sorted ids line up with positions
    # (1-based: WITH ORDINALITY).
    ordered = sorted(ids)
    return [FastRow(ordered[position - 1], messages[position - 1]) for position in fast_positions]


#: Fast-path publishers installed in this process (`install`); the unit of work hands
#: its committed rows to the last one. A list, because tests run several workers in one
#: process.
_installed: list[FastPublisher] = []


def install(publisher: FastPublisher) -> None:
    _installed.append(publisher)


def uninstall(publisher: FastPublisher) -> None:
    if publisher in _installed:
        _installed.remove(publisher)


def installed() -> FastPublisher | None:
    return _installed[-1] if _installed else None


class FastPublisher:
    """Sends handed-over rows in hand-over order, then deletes the acknowledged ones.

    One task per process. `hand_over` never waits: the caller's next batch starts at
    once; rows beyond MAX_WAITING, or handed over while stopping, are left to the relay."""

    def __init__(self, engine: AsyncEngine, producer: Any, settings: Settings) -> None:
        self.engine = engine
        self.producer = producer
        self.settings = settings
        self._waiting: collections.deque[tuple[FastRow, float]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None
        self._max_bytes: int = getattr(producer, "_max_request_size", 1_048_576)
        # Kafka's default partitioner, as the relay computes it: one order's answers go
        # to one partition whichever of the two sends them.
        self._partitioner = DefaultPartitioner()
        self._partition_lists: dict[str, list[int]] = {}
        self.accepting = False
        #: Rows Kafka acknowledged, and rows left to the relay, since the start.
        self.sent_total = 0
        self.left_total = 0

    def start(self) -> None:
        self.accepting = True
        self._task = asyncio.create_task(self._run(), name="outbox-fast-path")

    def hand_over(self, rows: Sequence[FastRow]) -> None:
        """Rows of a transaction that has committed, in the order they were appended."""
        if not rows:
            return
        if not self.accepting or len(self._waiting) + len(rows) > MAX_WAITING:
            self._left(len(rows), "dropped")
            return
        now = time.monotonic()
        self._waiting.extend((row, now) for row in rows)
        self._wake.set()

    async def stop(self, seconds: float) -> None:
        """Sends what is waiting within `seconds`; what is left stays for the relay."""
        self.accepting = False
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        if self._settling is not None:
            await asyncio.wait({self._settling}, timeout=1.0)
        if self._waiting:
            self._left(len(self._waiting), "dropped")
            self._waiting.clear()

    async def _run(self) -> None:
        while self.accepting or self._waiting:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            rows = list(self._waiting)
            self._waiting.clear()
            failpoints.reach("fast_before_send")
            try:
                sent, failed = await self._send(rows)
            except Exception as error:  # never lose the loop: the relay has the rows
                log.warning("outbox fast path: send failed (%s)", describe(error))
                sent, failed = [], [row for row, _ in rows]
            if sent:
                failpoints.reach("fast_after_send")
            previous = self._settling
            self._settling = asyncio.create_task(self._settle(previous, sent, failed))

    async def _send(
        self, rows: list[tuple[FastRow, float]]
    ) -> tuple[list[FastRow], list[FastRow]]:
        """One Kafka batch per partition (closed at once: no linger), all in parallel."""
        by_partition: dict[tuple[str, int], list[FastRow]] = {}
        failed: list[FastRow] = []
        handed_at = {row.id: at for row, at in rows}
        for row, _ in rows:
            message = row.message
            partitions = await self._partitions(message.topic)
            partition = int(self._partitioner(message.key, partitions, partitions))
            by_partition.setdefault((message.topic, partition), []).append(row)
        results = await asyncio.gather(
            *(
                self._send_partition(topic, partition, members)
                for (topic, partition), members in by_partition.items()
            )
        )
        sent: list[FastRow] = []
        for ok, not_ok in results:
            sent.extend(ok)
            failed.extend(not_ok)
        acknowledged = time.monotonic()
        for topic, count in collections.Counter(r.message.topic for r in sent).items():
            metrics.OUTBOX_PUBLISHED.labels(topic).inc(count)
        observe = metrics.OUTBOX_PUBLISH_SECONDS.observe
        for row in sent:
            observe(acknowledged - handed_at[row.id])
        return sent, failed

    async def _partitions(self, topic: str) -> list[int]:
        partitions = self._partition_lists.get(topic)
        if partitions is None:
            found = await self.producer.partitions_for(topic)
            partitions = self._partition_lists[topic] = sorted(found)
        return partitions

    async def _send_partition(
        self, topic: str, partition: int, rows: list[FastRow]
    ) -> tuple[list[FastRow], list[FastRow]]:
        sent: list[FastRow] = []
        position = 0
        while position < len(rows):
            batch = self.producer.create_batch()
            members: list[FastRow] = []
            while position < len(rows):
                message = rows[position].message
                if _size(message) > self._max_bytes:  # the relay parks it with its error
                    break
                appended = batch.append(
                    key=message.key, value=message.value, timestamp=None,
                    headers=list(message.headers),
                )
                if appended is None:  # full: the row opens the next batch
                    break
                members.append(rows[position])
                position += 1
            if not members:
                return sent, rows[position:]
            batch.close()  # sent now, not after the producer's linger
            try:
                # A `publish <topic>` span linked to each message's trace (none while off).
                with tracing.publishing(topic, (m.message.headers for m in members)):
                    await (await self.producer.send_batch(batch, topic, partition=partition))
            except KafkaError as error:
                log.info("outbox fast path: %s; the relay sends these rows", describe(error))
                # Stop here: a later row of this partition must not overtake these.
                return sent, rows[position - len(members):]
            sent.extend(members)
        return sent, []

    async def _settle(
        self, previous: asyncio.Task[None] | None, sent: list[FastRow], failed: list[FastRow]
    ) -> None:
        """Deletes the acknowledged rows; hands the failed ones to the relay at once."""
        if previous is not None:
            await asyncio.wait({previous})
        self.sent_total += len(sent)
        if sent:
            metrics.OUTBOX_FAST_PATH.labels("sent").inc(len(sent))
        if failed:
            self._left(len(failed), "failed")
        try:
            async with self.engine.begin() as conn:
                if sent:
                    await conn.execute(_SETTLE, {"ids": [row.id for row in sent]})
                if failed:
                    keys = list({row.message.key for row in failed})
                    await conn.execute(_RELEASE, {"keys": keys})
                    await conn.execute(_NOTIFY)
        except Exception as error:
            # The rows stay in the outbox: the relay sends them again after their hold
            # (a repeat under the same CloudEvent id, which consumers drop).
            log.warning("outbox fast path: cannot settle %d rows (%s)", len(sent), describe(error))

    def _left(self, count: int, why: str) -> None:
        self.left_total += count
        metrics.OUTBOX_FAST_PATH.labels(why).inc(count)


def _size(message: OutboxMessage) -> int:
    """Roughly what the message weighs as a Kafka record, as the relay counts it."""
    return (
        len(message.key or b"")
        + len(message.value or b"")
        + sum(len(name) + len(value or b"") for name, value in message.headers)
        + 64
    )
