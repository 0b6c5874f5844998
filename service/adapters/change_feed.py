"""Tails `stock.changed` from Kafka and fans it out to live subscribers (the SSE stream
and the WebSocket).

It reads what was published, not what this process wrote: every change of every
worker reaches every API process, after it committed. No consumer group: each API
process reads every partition from its end, and nothing it does affects the workers.

Each subscriber has a bounded buffer. One that reads too slowly is cut off (it is
told so, and reconnects) rather than buffered without end or allowed to hold up
the others: the feed never waits for a subscriber.

It also tails the alert topics (`stock.low`, `stock.anomaly`, and `stock.replenished`
and `stock.reorder` where the settings name them), but offers an alert only to a
subscriber that asked for its type: one that names none gets `stock.changed` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service import metrics
from service.adapters.database import OutageLog, describe
from service.adapters.kafka import BROKER_UNREACHABLE_ERRORS, broker_watch, kafka_client_options
from service.settings import Settings

log = logging.getLogger(__name__)

CHANGED = "stock.changed"
#: The event types the feed carries, by the setting that names their topic. A type
#: whose setting does not exist (an older version of the settings) is not carried.
CARRIED_TYPES: dict[str, str] = {
    CHANGED: "topic_stock_changed",
    "stock.low": "topic_stock_low",
    "stock.anomaly": "topic_stock_anomaly",
    "stock.replenished": "topic_stock_replenished",
    "stock.reorder": "topic_stock_reorder",
}


def carried_topics(settings: Settings) -> dict[str, str]:
    """Event type -> its topic, for the types these settings name a topic for."""
    found: dict[str, str] = {}
    for event_type, setting in CARRIED_TYPES.items():
        topic = getattr(settings, setting, None)
        if isinstance(topic, str) and topic:
            found[event_type] = topic
    return found


@dataclass(frozen=True, slots=True)
class PublishedChange:
    """One CloudEvent as it was published: a `stock.changed`, or an alert."""

    event_id: str
    variant_id: str
    product_id: str
    data: dict[str, Any]
    event_type: str = CHANGED


class SubscriberTooSlow(Exception):
    """The subscriber's buffer overflowed; it has missed changes."""


class FeedClosed(Exception):
    """The process is stopping: subscribers end their streams."""


class Subscription:
    def __init__(
        self,
        capacity: int,
        variant_ids: Collection[str],
        product_ids: Collection[str],
        event_types: Collection[str] = (CHANGED,),
    ) -> None:
        self._capacity = capacity
        self._variant_ids = frozenset(variant_ids)
        self._product_ids = frozenset(product_ids)
        self._event_types = frozenset(event_types)
        self._items: deque[PublishedChange] = deque()
        self._ready = asyncio.Event()
        #: Set once the subscription ends (overflowed or closed): a reader blocked
        #: elsewhere (on a slow socket) can wait for it.
        self.ended = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def wants(self, change: PublishedChange) -> bool:
        if change.event_type not in self._event_types:
            return False
        if not self._variant_ids and not self._product_ids:
            return True
        return change.variant_id in self._variant_ids or change.product_id in self._product_ids

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self.ended.set()

    def offer(self, change: PublishedChange) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self._capacity:
            self.lose()
        else:
            self._items.append(change)
            self._ready.set()

    def lose(self) -> None:
        """This subscriber misses changes: its stream ends with an overflow event."""
        if not self.overflowed:
            self.overflowed = True
            self._items.clear()
            metrics.STREAM_DROPPED.inc()
        self._ready.set()
        self.ended.set()

    async def next(self, wait_seconds: float) -> PublishedChange | None:
        """The next change, or None after `wait_seconds` without one."""
        if not self._items and not self.overflowed and not self.closed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_seconds)
        if self.closed:
            raise FeedClosed
        if self.overflowed:
            raise SubscriberTooSlow
        return self._items.popleft() if self._items else None


class StockChangeFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic_stock_changed
        #: Event type -> topic, `stock.changed` first.
        self.event_topics = carried_topics(settings)
        self._type_of = {topic: event_type for event_type, topic in self.event_topics.items()}
        self._subscriptions: set[Subscription] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.tailing = asyncio.Event()
        #: Interruptions other than the broker being away (which its own lines report).
        self.interruption = OutageLog(
            "the stock change feed", down="interrupted", up="tailing again", logger=log
        )
        self._tailed_before = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="stock-change-feed")

    def close(self) -> None:
        """End every subscriber's stream (before the HTTP server stops)."""
        for subscription in self._subscriptions:
            subscription.close()

    async def stop(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def subscribe(
        self,
        variant_ids: Collection[str] = (),
        product_ids: Collection[str] = (),
        event_types: Collection[str] = (CHANGED,),
    ) -> Subscription:
        subscription = Subscription(
            self.settings.stream_client_buffer, variant_ids, product_ids, event_types
        )
        self._subscriptions.add(subscription)
        metrics.STREAM_CLIENTS.set(len(self._subscriptions))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        metrics.STREAM_CLIENTS.set(len(self._subscriptions))

    async def broker_reachable(self, wait_seconds: float = 2.0) -> bool:
        """A metadata round trip through the feed's connection."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            await asyncio.wait_for(consumer.topics(), wait_seconds)
        except Exception:
            return False
        return True

    async def _run_forever(self) -> None:
        backoff = self.settings.retry_initial_backoff_seconds
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Changes published while it reconnects are not sent: tell every
                # subscriber (as if it were too slow) so it reconnects and re-reads.
                for subscription in list(self._subscriptions):
                    subscription.lose()
                if isinstance(error, BROKER_UNREACHABLE_ERRORS):
                    broker_watch.failed(f"stock change feed: {describe(error)}")
                else:
                    self.interruption.failed(describe(error))
                log.debug("stock change feed interrupted (%s); retry in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_backoff_seconds)

    async def _tail(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.settings.kafka_client_id}-feed",
            group_id=None,
            enable_auto_commit=False,
            # Changes are pushed as soon as the relay publishes them.
            fetch_max_wait_ms=100,
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        self._consumer = consumer
        try:
            await consumer.topics()  # loads the metadata partitions_for_topic reads
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic!r} does not exist yet")
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            for topic in self._type_of:
                if topic == self.topic:
                    continue
                alert_partitions = consumer.partitions_for_topic(topic)
                if not alert_partitions:
                    # The alerts are extras: their absence must not stop the changes.
                    log.log(
                        logging.DEBUG if self._tailed_before else logging.INFO,
                        "topic %r does not exist; its events are not streamed",
                        topic,
                    )
                    continue
                assigned += [TopicPartition(topic, p) for p in sorted(alert_partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)  # resolve "the end" now, not at first fetch
            self.tailing.set()
            if self.interruption.first_failure is not None:
                self.interruption.recovered()
            if broker_watch.outage.first_failure is not None:
                broker_watch.answered()
            log.log(
                logging.DEBUG if self._tailed_before else logging.INFO,
                "stock change feed tailing %s (%d partitions)",
                ", ".join(dict.fromkeys(tp.topic for tp in assigned)),
                len(assigned),
            )
            self._tailed_before = True
            async for record in consumer:
                change = _parse(record.value, self._type_of.get(record.topic, CHANGED))
                if change is None:
                    continue
                for subscription in list(self._subscriptions):
                    if subscription.wants(change):
                        subscription.offer(change)
        finally:
            self.tailing.clear()
            self._consumer = None
            await consumer.stop()


def _parse(value: bytes | None, event_type: str = CHANGED) -> PublishedChange | None:
    try:
        event = json.loads(value or b"")
        data = event["data"]
        return PublishedChange(
            str(event["id"]), data["variant_id"], data["product_id"], data, event_type
        )
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable message on the %s topic; not streamed", event_type)
        return None
