"""`stock publish` and `stock tail`: talk to the broker by hand, as a newcomer would."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from stock_schemas.envelope import build_event

from service.adapters.kafka import kafka_client_options
from service.settings import Settings


async def publish_event(
    settings: Settings, event_type: str, data: dict[str, Any], *, source: str, event_id: str | None
) -> dict[str, Any]:
    """Wrap `data` in a CloudEvent and publish it on the topic for its type, keyed by order."""
    topic = {t: topic for topic, t in settings.consumed_topics.items()}.get(event_type)
    if topic is None:
        known = ", ".join(settings.consumed_topics.values())
        raise ValueError(f"unknown event type {event_type!r}; one of: {known}")
    event = build_event(event_type, data, source=source, event_id=event_id or str(uuid.uuid4()))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=settings.kafka_enable_idempotence,
        **kafka_client_options(settings),
    )
    try:
        await producer.start()
        key = str(data.get("order_id", "")).encode() or None
        await producer.send_and_wait(topic, json.dumps(event).encode(), key=key)
    finally:
        await producer.stop()
    return event


class UnknownTopics(ValueError):
    """Topics asked for that the broker does not have."""

    def __init__(self, missing: list[str], bootstrap_servers: str) -> None:
        names = ", ".join(missing)
        super().__init__(
            f"no topic {names} on the broker at {bootstrap_servers}"
            if len(missing) == 1
            else f"no topics {names} on the broker at {bootstrap_servers}"
        )
        self.missing = missing


async def tail_topics(settings: Settings, topics: list[str], *, seconds: float | None) -> None:
    """Print every message of the topics from the beginning, one JSON line each.

    The topics must exist (`UnknownTopics` otherwise): subscribing to a missing one
    would have a broker that auto-creates topics create it, with its own defaults,
    before the worker could create it as configured."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        **kafka_client_options(settings),
    )
    try:
        await consumer.start()
        existing = await consumer.topics()  # a metadata request for all: creates nothing
        missing = [topic for topic in topics if topic not in existing]
        if missing:
            raise UnknownTopics(missing, settings.kafka_bootstrap_servers)
        consumer.subscribe(topics)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while deadline is None or loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    print(_render(record), flush=True)
    finally:
        await consumer.stop()


def _render(record: Any) -> str:
    line: dict[str, Any] = {"topic": record.topic, "key": _text(record.key)}
    try:
        line["event"] = json.loads(record.value)
    except (TypeError, ValueError):
        line["value"] = _text(record.value)
    headers = {name: _text(value) for name, value in record.headers or ()}
    if headers:
        line["headers"] = headers
    return json.dumps(line)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", errors="backslashreplace")
