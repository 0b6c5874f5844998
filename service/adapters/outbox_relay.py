"""Publishes outbox rows to Kafka in id order, then marks them published.

One relay at a time per database: the leader holds a session-level advisory
lock on its LISTEN connection; if it dies, the connection closes, the lock is
freed and another worker's relay takes over within a poll interval. A single
publisher, in id order, keeps every key's events in the order they committed.

Delivery is at least once: a relay that dies after publishing and before marking
republishes those rows. Each carries a stable CloudEvent `id` (and `stock.changed`
a per-variant `version`), so consumers drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from service import metrics
from service.adapters.database import asyncpg_dsn, is_transient
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
    WHERE published_at IS NULL ORDER BY id LIMIT $1
"""
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
_PARK = "UPDATE outbox SET published_at = now(), publish_error = $2 WHERE id = $1"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)"


async def _delivery_error(future: asyncio.Future[Any]) -> KafkaError | None:
    try:
        await future
    except KafkaError as error:
        return error
    return None


def _observe_published(rows: list[asyncpg.Record], since_fetch: float) -> None:
    for row in rows:
        metrics.OUTBOX_PUBLISHED.labels(row["topic"]).inc()
        metrics.OUTBOX_PUBLISH_SECONDS.observe(row["age"] + since_fetch)


class OutboxRelay:
    def __init__(self, settings: Settings, producer: Any) -> None:
        self.settings = settings
        self.producer = producer
        self.published_total = 0
        self.parked_total = 0
        self.is_leader = False
        self._wake = asyncio.Event()

    async def run_forever(self) -> None:
        backoff = self.settings.retry_initial_backoff_seconds
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.is_leader = False
                level = logging.WARNING if is_transient(error) else logging.ERROR
                log.log(
                    level,
                    "outbox relay interrupted (%s: %s); retry in %.1fs",
                    type(error).__name__,
                    error,
                    backoff,
                    exc_info=level == logging.ERROR,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_backoff_seconds)
            else:
                backoff = self.settings.retry_initial_backoff_seconds

    async def _lead(self) -> None:
        conn = await asyncpg.connect(
            asyncpg_dsn(self.settings.database_url),
            # A leader whose network died must not hold the lock (and stall publishing)
            # until TCP gives up hours later: the server drops it within a minute.
            command_timeout=60,
            server_settings=_LEADER_SESSION_SETTINGS,
        )
        try:
            # Polling is the point: the lock frees when the leader's session ends.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):  # noqa: ASYNC110
                await asyncio.sleep(self.settings.outbox_poll_interval_seconds)
            self.is_leader = True
            log.info("outbox relay: this worker is the leader")
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            rounds = 0
            while True:
                self._wake.clear()
                published = await self.publish_pending(conn)
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

        Rows are marked in order, up to the first one that failed for a passing reason
        (the broker is away): that one and the rest are sent again on the next round.
        A row Kafka refuses for good (too large, bad topic) is parked with its error
        instead, so one bad row never stops everything behind it.
        """
        rows = await conn.fetch(_FETCH, self.settings.outbox_batch_size)
        if not rows:
            return 0
        fetched_at = time.monotonic()
        in_flight: list[tuple[int, asyncio.Future[Any] | KafkaError]] = []
        for row in rows:
            try:
                future = await self.producer.send(
                    row["topic"],
                    value=row["value"],
                    key=row["key"],
                    headers=decode_headers(row["headers"]),
                )
            except KafkaError as refused:
                in_flight.append((row["id"], refused))
                if refused.retriable:
                    break
            else:
                in_flight.append((row["id"], future))
        sent: list[int] = []
        parked: list[tuple[int, str]] = []
        passing_failure: KafkaError | None = None
        for row_id, outcome in in_flight:
            error = outcome if isinstance(outcome, KafkaError) else await _delivery_error(outcome)
            if error is None:
                sent.append(row_id)
            elif error.retriable:
                passing_failure = error
                break
            else:
                log.error("outbox row %d refused by Kafka for good, parked: %r", row_id, error)
                parked.append((row_id, repr(error)))
        if sent:
            await conn.execute(_MARK, sent)
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

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.outbox_poll_interval_seconds)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()
