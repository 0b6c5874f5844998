"""Kafka plumbing: the producer the relay publishes with, topic creation, and what
the process says while the broker is away.

aiokafka logs an ERROR for every failed connection, metadata refresh, heartbeat and
fetch of every client: hundreds of lines a second while the broker is down. While
a process runs, `broker_watch` (a filter on aiokafka's loggers) turns them into
one warning when the broker becomes unreachable, one every 30 s while it stays
away, and one when a probe of its own (a metadata request every second) finds it
back, with how long it was away. aiokafka's other lines pass as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from service.adapters.database import OutageLog, describe
from service.settings import Settings

log = logging.getLogger(__name__)

#: Errors that mean the broker cannot be reached (or its coordinator is gone with it).
BROKER_UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
    OSError,  # refused, reset, timed out
)
#: aiokafka's lines about an unreachable broker that carry no error object.
_UNREACHABLE_TEMPLATES = frozenset(
    {
        "Unable to update metadata from %s",
        "Marking the coordinator dead (node %s)for group %s.",
        "Heartbeat session expired - marking coordinator dead",
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
    }
)
#: How often the watch asks the broker whether it is back.
PROBE_SECONDS = 1.0
#: After the broker is back, the clients' own reconnection errors for this long are
#: the tail of the outage that ended, not a new one.
SETTLE_SECONDS = 5.0


def says_broker_unreachable(record: logging.LogRecord) -> bool:
    """An aiokafka line that only says the broker cannot be reached (yet)."""
    if record.levelno < logging.WARNING:
        return False
    if isinstance(record.msg, str) and record.msg in _UNREACHABLE_TEMPLATES:
        return True
    arguments = record.args if isinstance(record.args, tuple) else ()
    if any(isinstance(argument, BROKER_UNREACHABLE_ERRORS) for argument in arguments):
        return True
    error = record.exc_info[1] if record.exc_info else None
    return isinstance(error, BROKER_UNREACHABLE_ERRORS)


def _aiokafka_loggers() -> list[logging.Logger]:
    names = {"aiokafka"} | {
        name for name in logging.root.manager.loggerDict if name.startswith("aiokafka.")
    }
    return [logging.getLogger(name) for name in sorted(names)]


class BrokerWatch(logging.Filter):
    """The process's view of its broker: `outage` says when it goes and comes back.

    `watch(settings)` puts the filter on aiokafka's loggers and lets it probe;
    `failed()` and `answered()` are for the process's own code (the start-up wait,
    the relay). Without `watch` (a worker inside a test) the lines of the process's
    own code are still rate-limited, and aiokafka's pass untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        # Confirmed at once: aiokafka's errors come in floods; the probe says when it ends.
        self.outage = OutageLog(
            "the Kafka broker", confirm_after=0.0, attempts="client errors", logger=log
        )
        #: aiokafka lines held back (for tests and curiosity).
        self.suppressed = 0
        self._settings: Settings | None = None
        self._probe: asyncio.Task[None] | None = None
        self._back_at = -math.inf
        self._watchers = 0

    def watch(self, settings: Settings) -> None:
        """Each `watch` wants an `unwatch` (a test may run two processes in one)."""
        self._watchers += 1
        self._settings = settings
        self.outage.subject = f"the Kafka broker at {settings.kafka_bootstrap_servers}"
        for logger in _aiokafka_loggers():
            if self not in logger.filters:
                logger.addFilter(self)

    async def unwatch(self) -> None:
        self._watchers = max(self._watchers - 1, 0)
        if self._watchers:
            return
        for logger in _aiokafka_loggers():
            logger.removeFilter(self)
        self._settings = None
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    def filter(self, record: logging.LogRecord) -> bool:
        if not says_broker_unreachable(record):
            return True
        self.suppressed += 1
        if self.outage.is_out or time.monotonic() - self._back_at >= SETTLE_SECONDS:
            self.failed(record.getMessage())
        else:
            # Just back: most likely a client catching up. An outage if a probe says so.
            self._start_probe(confirm=record.getMessage())
        return False

    def failed(self, detail: str, *, probe: bool = True) -> None:
        self.outage.failed(detail)
        if probe:
            self._start_probe()

    def answered(self) -> None:
        if self.outage.recovered() is not None:
            self._back_at = time.monotonic()

    def _start_probe(self, confirm: str | None = None) -> None:
        """Probe until the broker answers; with `confirm`, first check that it does not
        answer now (and only then call it an outage, with that detail)."""
        settings = self._settings
        if settings is None or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        probing = self._probe_until_back(settings, confirm)
        self._probe = loop.create_task(probing, name="broker-probe")

    async def _probe_until_back(self, settings: Settings, confirm: str | None) -> None:
        if confirm is not None:
            if await broker_answers(settings):
                return
            self.outage.failed(confirm)
        while self.outage.is_out:
            await asyncio.sleep(PROBE_SECONDS)
            if await broker_answers(settings):
                self.answered()


#: The process's one broker (every client of a process points at the same one).
broker_watch = BrokerWatch()


async def broker_answers(settings: Settings, wait_seconds: float = 5.0) -> bool:
    """Whether the broker answers a metadata request now (a fresh connection)."""
    client = AIOKafkaClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-probe",
        request_timeout_ms=int(wait_seconds * 1000),
        **kafka_client_options(settings),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), wait_seconds)
    except (KafkaError, OSError):  # TimeoutError is an OSError
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    return True


def kafka_security(settings: Settings) -> BaseSecurity | None:
    """STOCK_KAFKA_SECURITY_* as FastStream's security object: the one place TLS and
    SASL are read. `kafka_client_options` turns it into aiokafka's arguments the way
    FastStream does, so the consumer and the other clients cannot disagree."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = (
        create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
        if use_ssl
        else None
    )
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return sasl[settings.kafka_sasl_mechanism](
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=use_ssl,
    )


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured TLS and SASL (none for PLAINTEXT)."""
    return parse_security(kafka_security(settings))


#: Under Kafka's default message.max.bytes (1 MiB) with room for the batch's overhead.
PRODUCER_BATCH_BYTES = 512 * 1024


def create_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-relay",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        # One record batch per partition per round, not aiokafka's 16 KiB ones: the relay
        # and the fast path await each batch before the next for a partition (key
        # order), so with small batches their rate is 16 KiB per broker round trip,
        # and a slower broker (tansu as its memory grows) let the outbox fall behind.
        max_batch_size=PRODUCER_BATCH_BYTES,
        **kafka_client_options(settings),
    )


async def wait_for_broker(settings: Settings) -> None:
    """At start, a broker that cannot be reached yet is waited for, with backoff.

    A worker restarted during a broker outage would otherwise exit, be restarted,
    exit again: a crash loop whose restart delays (Kubernetes doubles them up to five
    minutes) outlast the outage. Errors other than "cannot connect" still fail fast.
    """
    backoff = settings.retry_initial_backoff_seconds
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-admin",
            **kafka_client_options(settings),
        )
        try:
            await admin.start()
            await admin.list_topics()
            broker_watch.answered()
            return
        except KafkaConnectionError as error:
            # This loop is the probe: no second one.
            broker_watch.failed(f"start-up: {describe(error)}", probe=False)
            log.debug("broker not reachable at start (%s); retry in %.1fs", error, backoff)
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, settings.retry_max_backoff_seconds)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the consumed and published topics that do not exist yet. Returns the new ones.

    A broker that goes away meanwhile is waited for, as at `wait_for_broker`."""
    backoff = settings.retry_initial_backoff_seconds
    while True:
        try:
            return await _ensure_topics(settings)
        except KafkaConnectionError as error:
            broker_watch.failed(f"creating topics: {describe(error)}", probe=False)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, settings.retry_max_backoff_seconds)


async def stop_producer(producer: AIOKafkaProducer, seconds: float) -> None:
    """Flush and close the producer, giving up on what is not delivered in `seconds`
    (in 1 s once the broker is known to be away).

    Only the outbox relay publishes, and it marks a row published after its delivery:
    a record given up here stays in the outbox and is published after the restart.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, 0.0)
    stopping = asyncio.ensure_future(producer.stop())
    while not stopping.done():
        if broker_watch.outage.is_out:
            deadline = min(deadline, loop.time() + 1.0)
        left = deadline - loop.time()
        if left <= 0:
            break
        await asyncio.wait({stopping}, timeout=min(left, 0.2))
    if not stopping.done():
        log.warning(
            "the relay's producer did not deliver its last records in time; they stay in "
            "the outbox and are published after the restart"
        )
        # The flush that producer.stop() waits for ends with the sender: its batches
        # are dropped, not failed (nobody awaits them any more).
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        if task is not None:
            task.cancel()
        await asyncio.wait({stopping}, timeout=2.0)
    if not stopping.done():
        stopping.cancel()
        await asyncio.wait({stopping})
        return
    error = None if stopping.cancelled() else stopping.exception()
    if error is not None:
        log.warning("the relay's producer stopped with an error (%s)", describe(error))


async def _ensure_topics(settings: Settings) -> list[str]:
    wanted = [*settings.consumed_topics, *settings.published_topics]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-admin",
        **kafka_client_options(settings),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(wanted) if name not in existing]
        if missing:
            # Another worker may create them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            settings.kafka_topic_partitions,
                            settings.kafka_topic_replication_factor,
                        )
                        for name in missing
                    ]
                )
            log.info("created topics %s", ", ".join(missing))
        _warn_unless_copartitioned(
            settings, await admin.describe_topics(list(settings.consumed_topics))
        )
        return missing
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()


def partition_counts(described: list[Any]) -> dict[str, int]:
    """Topic -> partition count, from `AIOKafkaAdminClient.describe_topics`."""
    return {
        topic["topic"]: len(topic.get("partitions") or ())
        for topic in described
        if topic.get("partitions")
    }


def _warn_unless_copartitioned(settings: Settings, described: list[Any]) -> None:
    """The consumed topics must have one partition count: with range assignment, then,
    partition i of each goes to the same worker, and (keyed by order id) one order's
    checkout, payment and cancellation meet in one worker and one batch. Different
    counts stay correct (the database decides) but spread an order over workers."""
    counts = partition_counts(described)
    if len(set(counts.values())) > 1:
        log.warning(
            "the consumed topics have different partition counts (%s): one order's events "
            "may reach different workers; give them the same count (docs/reference.md, "
            "STOCK_KAFKA_TOPIC_PARTITIONS)",
            ", ".join(f"{topic} {count}" for topic, count in sorted(counts.items())),
        )
