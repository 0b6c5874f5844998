"""CloudEvents 1.0 envelope, structured mode, as published and accepted.

Reading one from a Kafka record (either mode) is `stock_schemas.kafka.parse_record`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The only CloudEvents version written and accepted.
SPECVERSION = "1.0"


class EventType(StrEnum):
    """Every event type of the contract. Each is also its topic's default name."""

    ORDER_CHECKOUT = "order.checkout"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    ORDER_CANCELLED = "order.cancelled"
    STOCK_CHANGED = "stock.changed"
    STOCK_LOW = "stock.low"
    STOCK_RESERVATION = "stock.reservation"
    STOCK_ANOMALY = "stock.anomaly"
    STOCK_REPLENISHED = "stock.replenished"
    STOCK_REORDER = "stock.reorder"


class CloudEvent(BaseModel):
    """The attributes the contract names; extension attributes are kept as extras."""

    model_config = ConfigDict(extra="allow")

    specversion: str = SPECVERSION
    id: str = Field(min_length=1, max_length=500)
    source: str = Field(min_length=1, max_length=500)
    type: str = Field(min_length=1)
    time: datetime | None = None
    datacontenttype: str | None = "application/json"
    subject: str | None = None
    data: Any = None


def build_event(
    event_type: str,
    data: BaseModel | dict[str, Any],
    *,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
    **extensions: str,
) -> dict[str, Any]:
    """A structured-mode CloudEvent as a JSON-ready dict (what goes on the wire)."""
    payload = (
        data.model_dump(mode="json", exclude_none=True) if isinstance(data, BaseModel) else data
    )
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": (time or datetime.now(UTC)).isoformat(),
        "datacontenttype": "application/json",
        "data": payload,
    }
    event.update(extensions)
    return event
