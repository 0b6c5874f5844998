"""Building consumed events and Kafka-record stand-ins for tests.

`FakeRecord` is not a mock of Kafka: it is the plain data a ConsumerRecord carries,
for tests that drive the batch consumer directly against the real database.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stock_schemas import build_event

from service.settings import Settings

_offsets = itertools.count()


@dataclass
class FakeRecord:
    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int = 0
    offset: int = field(default_factory=lambda: next(_offsets))
    timestamp: int = field(default_factory=lambda: int(datetime.now(UTC).timestamp() * 1000))


def event(event_type: str, data: dict[str, Any], *, source: str = "test",
          event_id: str | None = None, time: datetime | None = None) -> dict[str, Any]:
    return build_event(event_type, data, source=source, event_id=event_id or str(uuid.uuid4()),
                       time=time)


def checkout(order_id: str, lines: dict[str, int], **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": order_id,
        "lines": [{"variant_id": v, "quantity": q} for v, q in lines.items()],
    }
    if "expires_at" in kw:
        data["expires_at"] = kw.pop("expires_at").isoformat()
    return event("order.checkout", data, **kw)


def paid(order_id: str, **kw: Any) -> dict[str, Any]:
    return event("payment.succeeded", {"order_id": order_id, "payment_id": "p-" + order_id}, **kw)


def payment_failed(order_id: str, **kw: Any) -> dict[str, Any]:
    return event("payment.failed", {"order_id": order_id, "reason": "card_declined"}, **kw)


def cancelled(order_id: str, **kw: Any) -> dict[str, Any]:
    return event("order.cancelled", {"order_id": order_id, "reason": "customer"}, **kw)


def topic_for(settings: Settings, event_type: str) -> str:
    return {
        "order.checkout": settings.topic_order_checkout,
        "payment.succeeded": settings.topic_payment_succeeded,
        "payment.failed": settings.topic_payment_failed,
        "order.cancelled": settings.topic_order_cancelled,
    }[event_type]


def record_of(settings: Settings, cloud_event: dict[str, Any], **kw: Any) -> FakeRecord:
    """A structured-mode record on the topic its type belongs to."""
    return FakeRecord(
        topic=topic_for(settings, cloud_event["type"]),
        value=json.dumps(cloud_event).encode(),
        key=str(cloud_event["data"].get("order_id", "")).encode(),
        **kw,
    )
