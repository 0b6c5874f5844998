"""The worker process: a FastStream batch subscriber, the hold sweeper and the outbox relay.

Offsets are committed only after the batch's database transaction commits:
the subscriber acknowledges (commits) when the handler returns, and rewinds
(`NACK_ON_ERROR`) if it raises, so an unhandled failure is consumed again, not lost.

A stop takes at most STOCK_SHUTDOWN_GRACE_SECONDS: the batch in hand gets all of it
but a reserve for leaving the group, flushing the relay's producer and closing the
pools. A batch waiting for an unreachable database is abandoned at once (it cannot
commit); an abandoned batch is rewound, uncommitted, and redelivered after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream import AckPolicy, Context
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaBroker

from service.adapters import fast_publish
from service.adapters.database import create_engine, database_outage, describe, watch_database
from service.adapters.kafka import (
    broker_watch,
    create_producer,
    ensure_topics,
    kafka_security,
    stop_producer,
    wait_for_broker,
)
from service.adapters.migrate import refuse_outdated_schema
from service.adapters.offsets import OffsetCommitter, next_offsets
from service.adapters.outbox_relay import OutboxRelay
from service.application.consume import BatchConsumer
from service.application.expiry import HoldSweeper
from service.application.jobs import JobScheduler
from service.settings import Settings

log = logging.getLogger(__name__)

#: Of the grace period, what the batch in hand leaves for the rest of the stop
#: (at most a quarter of it).
STOP_RESERVE_SECONDS = 3.0


async def within(work: Awaitable[Any], seconds: float, what: str) -> bool:
    """Wait up to `seconds` for `work`; past that, cancel it and say so. An error it
    ends with is logged in one line, not raised: a stop goes on with the next part."""
    future = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({future}, timeout=max(seconds, 0.0))
    if not done:
        future.cancel()
        await asyncio.wait({future}, timeout=1.0)
        log.warning("gave up waiting for %s to stop (no time left of the grace period)", what)
        return False
    error = None if future.cancelled() else future.exception()
    if error is not None:
        log.warning("%s stopped with an error (%s)", what, describe(error))
    return True


class BatchInHand:
    """The batch the subscriber's handler is working on, so that a stop can abandon it.

    Abandoning cancels the handler and turns the cancellation into a nack: FastStream
    rewinds the batch's partitions (nothing is committed) and logs no traceback.
    """

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.abandoned = False
        #: Set by a stop: a batch that comes now is not started (rewound, not committed).
        self.stopping = False

    async def handle(self, consumer: Any, records: Any) -> Any:
        if self.stopping:
            raise NackMessage()
        task = asyncio.current_task()
        self.task = task
        try:
            return await consumer.handle(records)
        except asyncio.CancelledError:
            if self.abandoned and task is not None and task.uncancel() == 0:
                raise NackMessage() from None
            raise
        finally:
            self.task = None

    def abandon(self) -> None:
        if self.task is not None and not self.abandoned:
            self.abandoned = True
            self.task.cancel()


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


class _CommitInBackground:
    """Stands in for the aiokafka consumer on one batch message. FastStream acknowledges
    a batch by `commit()` once its handler returned (the transaction committed): this
    hands the batch's own offsets to the committer and returns at once, so the next
    batch is fetched without waiting for the round trip. A nack's `seek()` (rewind)
    goes to the consumer as before. While the worker stops, the commit is waited for,
    as before: the consumer must not leave the group with it still in flight."""

    def __init__(
        self,
        committer: OffsetCommitter,
        consumer: AIOKafkaConsumer,
        records: tuple[Any, ...],
        batches: BatchInHand,
    ) -> None:
        self._committer = committer
        self._consumer = consumer
        self._records = records
        self._batches = batches

    async def commit(self) -> None:
        self._committer.hand_over(self._consumer, next_offsets(self._records))
        if self._batches.stopping:
            await self._committer.flush()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(partition, offset)


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another worker, commit what this one applied of them
    (else the other worker gets those records again: harmless, but wasted work)."""

    def __init__(self, committer: OffsetCommitter) -> None:
        self._committer = committer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._committer.flush()
        self._committer.forget(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def _next_batch(subscriber: Any, consumer: AIOKafkaConsumer) -> tuple[Any, ...]:
    """FastStream's batch fetch without its pause: after an empty fetch it sleeps the
    whole batch timeout, so a record that comes meanwhile waits for the sleep. aiokafka's
    getmany already returns at once with whatever is buffered (up to max_records) and
    waits up to the timeout only when nothing is: a quiet worker answers as soon as a
    record arrives, a busy one takes what has piled up."""
    batches = await consumer.getmany(
        timeout_ms=subscriber.batch_timeout_ms, max_records=subscriber.max_records
    )
    return tuple(itertools.chain.from_iterable(batches.values()))


def _track(tasks: list[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    tasks.append(task)
    task.add_done_callback(lambda done: done in tasks and tasks.remove(done))  # type: ignore[func-returns-value]


def build_broker(
    settings: Settings,
    consumer: BatchConsumer,
    in_hand: BatchInHand | None = None,
    committer: OffsetCommitter | None = None,
) -> KafkaBroker:
    batches = in_hand or BatchInHand()
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.kafka_client_id,
        enable_idempotence=settings.kafka_enable_idempotence,
        security=kafka_security(settings),
        log_level=logging.DEBUG,  # one line per batch at INFO is noise at this rate
        # On stop, the batch in hand gets this long to commit before it is cancelled
        # (uncommitted, so redelivered to whoever takes the partition); Worker.stop
        # abandons it sooner, within the same grace period.
        graceful_timeout=settings.shutdown_grace_seconds,
    )
    # A commit in flight is what FastStream's own commit was: it holds the subscriber's
    # lock (made when it starts), so a stop waits for it, and it is one of the
    # subscriber's tasks, so a stop that cannot wait (the broker is away) cancels it.
    offsets = committer or OffsetCommitter(
        hold=lambda: subscriber.lock, track=lambda task: _track(subscriber.tasks, task)
    )

    async def parse_batch(records: tuple[Any, ...], original_parser: Any) -> Any:
        message = await _tolerant_batch_parser(records, original_parser)
        if isinstance(message.consumer, AIOKafkaConsumer):
            message.consumer = _CommitInBackground(offsets, message.consumer, records, batches)
        return message

    subscriber = broker.subscriber(
        *settings.consumed_topics,
        group_id=settings.kafka_group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_linger_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        group_instance_id=settings.kafka_group_instance_id,
        # Co-partitioned input: partition i of every consumed topic goes to the same
        # worker (the topics have one partition count, ensure_topics), and producers
        # key every event by order id, so one order's events meet in one worker.
        # aiokafka's default, round robin, spreads each topic's partitions apart.
        partition_assignment_strategy=(RangePartitionAssignor,),
        listener=_FlushOnRevoke(offsets),
        auto_offset_reset="earliest",
        # A checkout from a producer transaction that aborted never happened.
        isolation_level="read_committed",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=parse_batch,
        decoder=_raw_decoder,
        title="stock-worker",
        description="Order and payment events: reserve, confirm, release, return stock.",
    )

    @subscriber
    async def consume_batch(body: Any, message: Any = Context("message")) -> None:
        await batches.handle(consumer, message.raw_message)

    subscriber.get_msg = functools.partial(_next_batch, subscriber)  # type: ignore[method-assign]
    return broker


class Worker:
    """Everything `stock run` runs, startable and stoppable in-process (tests use it)."""

    def __init__(self, settings: Settings, *, sweep: bool = True, relay: bool = True) -> None:
        self.settings = settings
        self.engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        watch_database(settings.database_url)
        self.consumer = BatchConsumer(self.engine, settings)
        self.sweeper = HoldSweeper(self.engine, settings)
        #: Maintenance jobs (prune, reconcile), leader-elected; off with STOCK_JOBS_ENABLED=false.
        self.scheduler = JobScheduler(self.engine, settings) if settings.jobs_enabled else None
        self.producer: Any = None  # aiokafka wants a running loop: made in start()
        self.relay: OutboxRelay | None = None
        #: Sends the stock.reservation rows this process commits (STOCK_OUTBOX_FAST_PATH).
        self.fast_publisher: fast_publish.FastPublisher | None = None
        self.in_hand = BatchInHand()
        self.broker = build_broker(settings, self.consumer, self.in_hand)
        [self.subscriber] = self.broker.subscribers
        self._sweep = sweep
        self._relay = relay
        self._tasks: list[asyncio.Task[None]] = []
        #: What start() is doing now, for the line of a stop that interrupts it.
        self.starting = "starting the worker"

    async def start(self) -> None:
        broker_at = f"the Kafka broker at {self.settings.kafka_bootstrap_servers}"
        self.starting = f"waiting for {database_outage.subject}"
        await self._check_schema()
        self.starting = f"waiting for {broker_at}"
        await wait_for_broker(self.settings)
        if self.settings.kafka_create_topics:
            self.starting = f"creating topics on {broker_at}"
            await ensure_topics(self.settings)
        if self._relay or self.settings.outbox_fast_path:
            self.starting = f"connecting the outbox relay to {broker_at}"
            await self._start_producer()
        if self.settings.outbox_fast_path:
            self.fast_publisher = fast_publish.FastPublisher(
                self.engine, self.producer, self.settings
            )
            self.fast_publisher.start()
            # This worker's batches and holds through its own publisher; the HTTP API
            # and CLI commands of this process through the installed one.
            self.consumer.unit_of_work.publisher = self.fast_publisher
            self.sweeper.unit_of_work.publisher = self.fast_publisher
            fast_publish.install(self.fast_publisher)
        if self._relay:
            self.relay = OutboxRelay(self.settings, self.producer)
            self._tasks.append(asyncio.create_task(self.relay.run_forever(), name="outbox-relay"))
        if self._sweep:
            self._tasks.append(asyncio.create_task(self.sweeper.run_forever(), name="sweeper"))
        if self.scheduler is not None:
            self._tasks.append(asyncio.create_task(self.scheduler.run_forever(), name="jobs"))
        group = self.settings.kafka_group_id
        self.starting = f"joining the consumer group {group!r} on {broker_at}"
        await self._join_group()
        self.starting = "started"
        log.info(
            "worker consuming %s as group %r from %s",
            ", ".join(self.settings.consumed_topics),
            self.settings.kafka_group_id,
            self.settings.kafka_bootstrap_servers,
        )

    # The broker may go away between the start-up wait and the next connection (a
    # worker restarted just before an outage): each connection waits for it again, as
    # `wait_for_broker` does, rather than exit and start a restart loop.

    async def _start_producer(self) -> None:
        while True:
            self.producer = create_producer(self.settings)
            try:
                await self.producer.start()
                return
            except KafkaConnectionError as error:
                broker_watch.failed(f"connecting the outbox relay: {describe(error)}", probe=False)
                with contextlib.suppress(KafkaError, OSError):
                    await self.producer.stop()
                self.producer = None
            await self._wait_for_broker_again()

    async def _join_group(self) -> None:
        while True:
            try:
                await self.broker.start()
                return
            except KafkaConnectionError as error:
                broker_watch.failed(f"joining the consumer group: {describe(error)}", probe=False)
                # Closes what the failed start opened (FastStream's clients, the
                # consumer), so the next start builds them afresh.
                try:
                    await self.broker.stop()
                except Exception as stop_error:  # half-open clients: nothing to keep
                    log.debug("closing the failed consumer start: %r", stop_error)
            await self._wait_for_broker_again()

    async def _wait_for_broker_again(self) -> None:
        await asyncio.sleep(self.settings.retry_initial_backoff_seconds)
        await wait_for_broker(self.settings)

    async def stop(self, grace: float | None = None) -> None:
        """Stops what started, safe after a start that failed or was cancelled half-way,
        in at most `grace` seconds (default STOCK_SHUTDOWN_GRACE_SECONDS)."""
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = loop.time() + budget
        # FastStream stops taking batches, waits for the one in hand, leaves the group.
        self.in_hand.stopping = True
        consumer_stopping = asyncio.ensure_future(self.broker.stop())
        await self._settle_batch_in_hand(
            consumer_stopping, deadline - min(STOP_RESERVE_SECONDS, budget / 4)
        )
        await within(consumer_stopping, deadline - loop.time(), "the Kafka consumer")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(deadline - loop.time(), 0.1))
        self._tasks.clear()
        if self.fast_publisher is not None:
            # What it has not sent by then stays in the outbox for the relay.
            fast_publish.uninstall(self.fast_publisher)
            await self.fast_publisher.stop(min(1.0, deadline - loop.time()))
            self.fast_publisher = None
        if self.producer is not None:
            await stop_producer(self.producer, deadline - loop.time())
            self.producer = None
        await within(self.engine.dispose(), deadline - loop.time(), "the database pool")

    async def _settle_batch_in_hand(
        self, consumer_stopping: asyncio.Future[Any], until: float
    ) -> None:
        """Let the batch in hand commit until `until`; abandon it sooner if it waits for
        an unreachable database. Past `until`, whatever still holds the subscriber (an
        offset commit to a broker that is away) is cancelled."""
        loop = asyncio.get_running_loop()
        while not consumer_stopping.done():
            if self.in_hand.task is not None and not self.in_hand.abandoned:
                if database_outage.is_out:
                    log.warning(
                        "abandoning the batch in hand: it waits for %s; uncommitted, it is "
                        "delivered again after the restart",
                        database_outage.subject,
                    )
                    self.in_hand.abandon()
                elif loop.time() >= until:
                    log.warning(
                        "abandoning the batch in hand: not committed within the grace period; "
                        "uncommitted, it is delivered again after the restart"
                    )
                    self.in_hand.abandon()
            acknowledging = self.in_hand.task is None and not self._subscriber_idle()
            if acknowledging and broker_watch.outage.is_out:
                # The batch is applied; its offsets cannot be committed to a broker that
                # is away. Redelivered after the restart, it is recognised as done.
                log.warning(
                    "not waiting to commit the last batch's offsets: %s; the batch is "
                    "delivered again after the restart (and recognised as applied)",
                    f"{broker_watch.outage.subject} is unreachable",
                )
                self._cancel_subscriber_tasks()
                return
            if loop.time() >= until:
                if acknowledging:
                    self._cancel_subscriber_tasks()
                return
            await asyncio.wait({consumer_stopping}, timeout=0.1)

    def _subscriber_idle(self) -> bool:
        """No batch between fetch and offset commit (FastStream holds a lock meanwhile)."""
        lock = getattr(self.subscriber, "lock", None)
        return bool(getattr(lock, "empty", True))

    def _cancel_subscriber_tasks(self) -> None:
        for task in list(getattr(self.subscriber, "tasks", ())):
            task.cancel()

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
