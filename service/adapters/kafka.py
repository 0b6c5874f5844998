"""Kafka plumbing: the producer the relay publishes with, and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from service.settings import Settings

log = logging.getLogger(__name__)


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


def create_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-relay",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        **kafka_client_options(settings),
    )


async def wait_for_broker(settings: Settings) -> None:
    """At start, a broker that cannot be reached yet is waited for, with backoff.

    A worker restarted during a broker outage would otherwise exit, be restarted,
    exit again: a crash loop whose restart delays (Kubernetes doubles them up to five
    minutes) outlast the outage. Errors other than "cannot connect" still fail fast.
    """
    backoff = settings.retry_initial_backoff_seconds
    failures = 0
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-admin",
            **kafka_client_options(settings),
        )
        try:
            await admin.start()
            await admin.list_topics()
            if failures:
                log.warning("broker reachable after %d attempts", failures + 1)
            return
        except KafkaConnectionError as error:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "waiting for the broker (%s); retry %d in %.1fs", error, failures, backoff
                )
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, settings.retry_max_backoff_seconds)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the consumed and published topics that do not exist yet. Returns the new ones."""
    wanted = [*settings.consumed_topics, *settings.published_topics]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-admin",
        **kafka_client_options(settings),
    )
    await admin.start()
    try:
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
        return missing
    finally:
        await admin.close()
