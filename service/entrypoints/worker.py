"""The worker process: a FastStream batch subscriber, the hold sweeper and the outbox relay.

Offsets are committed only after the batch's database transaction commits:
the subscriber acknowledges (commits) when the handler returns, and rewinds
(`NACK_ON_ERROR`) if it raises, so an unhandled failure is consumed again, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from aiokafka import TopicPartition
from faststream import AckPolicy, Context
from faststream.kafka import KafkaBroker

from service.adapters.database import create_engine
from service.adapters.kafka import create_producer, ensure_topics, kafka_security, wait_for_broker
from service.adapters.migrate import refuse_outdated_schema
from service.adapters.outbox_relay import OutboxRelay
from service.application.consume import BatchConsumer
from service.application.expiry import HoldSweeper
from service.settings import Settings

log = logging.getLogger(__name__)


async def _tolerant_batch_parser(records: tuple[Any, ...], original_parser: Any) -> Any:
    """FastStream decodes every header value as UTF-8 and would fail the whole batch on
    one bad header. Then let it parse header-less copies; the handler reads the
    originals (and dead-letters what is bad). Copies only when needed: they cost."""
    try:
        message = await original_parser(records)
    except UnicodeDecodeError:
        safe = tuple(dataclasses.replace(record, headers=()) for record in records)
        message = await original_parser(safe)
    message.raw_message = records
    return message


async def _raw_decoder(message: Any, original_decoder: Any) -> Any:
    """The handler decodes each record itself (bad JSON is a DLQ case, not an error)."""
    return None


def build_broker(settings: Settings, consumer: BatchConsumer) -> KafkaBroker:
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id,
        enable_idempotence=settings.kafka_enable_idempotence,
        security=kafka_security(settings),
        log_level=logging.DEBUG,  # one line per batch at INFO is noise at this rate
        # On stop, the batch in hand gets this long to commit before it is cancelled
        # (uncommitted, so redelivered to whoever takes the partition).
        graceful_timeout=settings.shutdown_grace_seconds,
    )

    @broker.subscriber(
        *settings.consumed_topics,
        group_id=settings.kafka_group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_linger_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        group_instance_id=settings.kafka_group_instance_id,
        auto_offset_reset="earliest",
        # A checkout from a producer transaction that aborted never happened.
        isolation_level="read_committed",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=_tolerant_batch_parser,
        decoder=_raw_decoder,
        title="stock-worker",
        description="Order and payment events: reserve, confirm, release, return stock.",
    )
    async def consume_batch(body: Any, message: Any = Context("message")) -> None:
        await consumer.handle(message.raw_message)

    return broker


class Worker:
    """Everything `stock run` runs, startable and stoppable in-process (tests use it)."""

    def __init__(self, settings: Settings, *, sweep: bool = True, relay: bool = True) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.consumer = BatchConsumer(self.engine, settings)
        self.sweeper = HoldSweeper(self.engine, settings)
        self.producer: Any = None  # aiokafka wants a running loop: made in start()
        self.relay: OutboxRelay | None = None
        self.broker = build_broker(settings, self.consumer)
        [self.subscriber] = self.broker.subscribers
        self._sweep = sweep
        self._relay = relay
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._check_schema()
        await wait_for_broker(self.settings)
        if self.settings.kafka_create_topics:
            await ensure_topics(self.settings)
        if self._relay:
            self.producer = create_producer(self.settings)
            await self.producer.start()
            self.relay = OutboxRelay(self.settings, self.producer)
            self._tasks.append(asyncio.create_task(self.relay.run_forever(), name="outbox-relay"))
        if self._sweep:
            self._tasks.append(asyncio.create_task(self.sweeper.run_forever(), name="sweeper"))
        await self.broker.start()
        log.info(
            "worker consuming %s as group %r from %s",
            ", ".join(self.settings.consumed_topics),
            self.settings.kafka_group_id,
            self.settings.kafka_bootstrap_servers,
        )

    async def stop(self) -> None:
        await self.broker.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        await self.engine.dispose()

    async def _check_schema(self) -> None:
        await refuse_outdated_schema(self.engine)

    def consumer_assignment(self) -> set[TopicPartition]:
        """The partitions this worker's consumer holds now (empty while rebalancing)."""
        consumer = self._kafka_consumer()
        return set(consumer.assignment()) if consumer is not None else set()

    async def consumer_lag(self) -> dict[TopicPartition, int]:
        """Records past the consumer's position, per assigned partition, from what the
        consumer already knows (the high watermark of its last fetch): no round trip."""
        consumer = self._kafka_consumer()
        lag: dict[TopicPartition, int] = {}
        if consumer is None:
            return lag
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(Exception):
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
                lag[tp] = max(highwater - position, 0)
        return lag

    def _kafka_consumer(self) -> Any:
        return getattr(self.subscriber, "consumer", None)
