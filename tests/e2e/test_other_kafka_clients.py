"""Services not written with aiokafka talk to the real worker (docs/clients.md).

A librdkafka client (`confluent-kafka`) publishes a checkout, in binary mode with the
headers written by hand as a Go or Node service would, or in structured mode as the
CloudEvents SDK serialises it; the real worker reserves in the real database; the
same client reads the `stock.reservation` answer back in a consumer group of its own.

tansu completes a first group join only after about half the session timeout (about
20 s with librdkafka's default of 45 s), so the consumer sets a shorter one, the reads
have generous timeouts, and they run in a thread: the worker shares this event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, KafkaError, Message, Producer
from stock_schemas import OrderCheckout, OrderLine, ReservationStatus, StockReservation

from service.application.admin import StockAdmin
from service.settings import Settings
from tests.e2e.helpers import running_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Joining a group, then finding the answer: a few seconds, but generous on a busy machine.
ANSWER_TIMEOUT = 90.0
VARIANT = "tee-red-m"
#: librdkafka's own log lines go through this logger (warnings and worse) to pytest.
LOG = logging.getLogger("librdkafka")


def _client_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 4, "logger": LOG}


def _produce(
    settings: Settings,
    topic: str,
    key: str | bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> None:
    """Publish one message and wait for the broker's acknowledgement (blocking)."""
    failures: list[KafkaError] = []
    producer = Producer(_client_config(settings))
    producer.produce(
        topic,
        key=key,
        value=value,
        headers=headers,
        on_delivery=lambda error, _msg: failures.append(error) if error else None,
    )
    assert producer.flush(30) == 0, "message not delivered within 30 s"
    assert failures == []


def _read_answer(settings: Settings, order_id: str) -> Message:
    """Join a new consumer group on stock.reservation and read until the answer for
    `order_id` comes (blocking)."""
    consumer = Consumer(
        {
            **_client_config(settings),
            "group.id": f"{settings.kafka_group_id}-other-client-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            # The worker's own value: tansu then joins the group in about 5 s, not 20.
            "session.timeout.ms": 10_000,
            # tansu holds an empty fetch for the whole wait: keep it short.
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([settings.topic_stock_reservation])
    deadline = time.monotonic() + ANSWER_TIMEOUT
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:  # transient ones (topic not known yet) pass
                assert not message.error().fatal(), message.error()
                continue
            if message.key() == order_id.encode():
                return message
    finally:
        consumer.close()
    raise AssertionError(f"no stock.reservation for {order_id} within {ANSWER_TIMEOUT}s")


async def _seed(engine: Any, settings: Settings) -> None:
    await StockAdmin(engine, settings).restock(VARIANT, 10, product_id="tee", reference="seed")


def _rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_librdkafka_binary_mode_checkout_and_its_answer_in_a_group(
    kafka_settings, engine
) -> None:
    s = kafka_settings
    await _seed(engine, s)
    order_id = "order-librdkafka-binary"
    data = OrderCheckout(order_id=order_id, lines=[OrderLine(variant_id=VARIANT, quantity=2)])
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", b"/orders/go-service"),
        ("ce_type", b"order.checkout"),
        ("ce_time", _rfc3339_now().encode()),
        ("content-type", b"application/json"),
    ]

    async with running_worker(s):
        await asyncio.to_thread(
            _produce,
            s,
            s.topic_order_checkout,
            order_id.encode(),
            data.model_dump_json(exclude_none=True).encode(),
            headers,
        )
        message = await asyncio.to_thread(_read_answer, s, order_id)

    event = json.loads(message.value())
    assert (event["specversion"], event["type"]) == ("1.0", "stock.reservation")
    assert dict(message.headers() or [])["content-type"].startswith(b"application/cloudevents+json")
    answer = StockReservation.model_validate(event["data"])
    assert answer.order_id == order_id
    assert answer.status == ReservationStatus.RESERVED
    assert [(line.variant_id, line.quantity) for line in answer.lines] == [(VARIANT, 2)]


async def test_cloudevents_sdk_structured_checkout_and_its_answer_in_a_group(
    kafka_settings, engine
) -> None:
    s = kafka_settings
    await _seed(engine, s)
    order_id = "order-sdk-structured"
    checkout = CloudEvent(
        attributes={
            "type": "order.checkout",
            "source": "/orders/node-service",
            "datacontenttype": "application/json",
        },
        data={"order_id": order_id, "lines": [{"variant_id": VARIANT, "quantity": 3}]},
    )
    # The Kafka key is the order id (the SDK's default would read a `partitionkey` attribute).
    outgoing = to_structured(checkout, JSONFormat(), key_mapper=lambda _event: order_id)
    assert outgoing.headers == {"content-type": b"application/cloudevents+json"}

    async with running_worker(s):
        await asyncio.to_thread(
            _produce,
            s,
            s.topic_order_checkout,
            outgoing.key,
            outgoing.value,  # the whole event: specversion, id, source, type, time, data
            list(outgoing.headers.items()),
        )
        message = await asyncio.to_thread(_read_answer, s, order_id)

    answer = from_structured(
        KafkaMessage(
            headers=dict(message.headers() or []), key=message.key(), value=message.value()
        ),
        JSONFormat(),
    )
    assert answer.get_type() == "stock.reservation"
    assert answer.get_source() == s.event_source
    assert answer.get_extension("partitionkey") == order_id  # the binding's name for the key
    data = answer.get_data()
    assert isinstance(data, dict)
    assert (data["order_id"], data["status"]) == (order_id, "RESERVED")
    assert data["lines"] == [{"variant_id": VARIANT, "quantity": 3}]
