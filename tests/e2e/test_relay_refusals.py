"""A row Kafka refuses for good is parked; the rows behind it are still published."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from service.adapters import stock_store
from service.adapters.kafka import ensure_topics
from service.adapters.outbox_relay import OutboxRelay
from service.outbound import OutboxMessage
from tests.support.kafka import TopicReader

pytestmark = [pytest.mark.e2e]


async def test_an_oversized_row_is_parked_and_the_rest_published(kafka_settings, engine) -> None:
    settings = kafka_settings
    await ensure_topics(settings)
    topic = settings.topic_stock_changed
    rows = [
        OutboxMessage(topic, b"k", b"first", ()),
        OutboxMessage(topic, b"k", b"x" * 2_000_000, ()),  # past the producer's 1 MB limit
        OutboxMessage(topic, b"k", b"third", ()),
    ]
    async with engine.begin() as conn:
        await stock_store.append_outbox(conn, rows)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    relay = OutboxRelay(settings, producer)
    task = asyncio.create_task(relay.run_forever())
    try:
        async with TopicReader(settings.kafka_bootstrap_servers, [topic]) as reader:
            await reader.wait_for(lambda: len(reader.messages[topic]) >= 2, what="2 messages")
            assert [m.value for m in reader.messages[topic]] == [b"first", b"third"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
    async with engine.connect() as conn:
        parked = (
            await conn.execute(
                text("SELECT publish_error FROM outbox WHERE publish_error IS NOT NULL")
            )
        ).scalars().all()
        unpublished = (
            await conn.execute(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        ).scalar()
    assert len(parked) == 1 and "TooLarge" in parked[0]
    assert unpublished == 0
    assert relay.parked_total == 1
