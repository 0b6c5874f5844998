"""Kafka plumbing: the producer the relay publishes with, and topic creation."""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from service.settings import Settings

log = logging.getLogger(__name__)


def create_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-relay",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
    )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the consumed and published topics that do not exist yet. Returns the new ones."""
    wanted = [*settings.consumed_topics, *settings.published_topics]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-admin",
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
