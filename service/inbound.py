"""Kafka record -> a valid consumed event, or the reason it goes to the dead-letter topic.

Both CloudEvents Kafka bindings are accepted: structured mode (the value is the
whole event as JSON) and binary mode (`ce_*` headers, the value is `data`).
Nothing here raises for bad input: every failure becomes a `Poison` with a
readable reason, so one bad message never stops a batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError
from stock_schemas.envelope import CloudEvent
from stock_schemas.events import CONSUMED_DATA_MODELS

from service.domain.model import EventRef

_BINARY_PREFIX = "ce_"
_MAX_REASON = 1000


class KafkaRecord(Protocol):
    """What we read of an aiokafka ConsumerRecord (tests pass simple stand-ins)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass(frozen=True, slots=True)
class InboundEvent:
    ref: EventRef
    type: str
    data: Any
    time: datetime
    record: KafkaRecord


@dataclass(frozen=True, slots=True)
class Poison:
    record: KafkaRecord
    reason: str

    @property
    def position(self) -> tuple[str, int, int, int]:
        """Where and when the bad message sits in Kafka: its identity, so a redelivery
        is dead-lettered once. Kept apart from event ids, which any producer chooses;
        the timestamp tells a new record apart when a recreated topic reuses offsets."""
        record = self.record
        return (record.topic, record.partition, record.offset, record.timestamp)


def decode_record(record: KafkaRecord, expected_type: str | None) -> InboundEvent | Poison:
    try:
        attributes, data = _envelope(record)
        if "specversion" not in attributes:
            # Required by CloudEvents 1.0; the model's default is for building events.
            raise _BadEnvelope("not a CloudEvent: specversion is missing")
        event = CloudEvent.model_validate(attributes)
    except _BadEnvelope as bad:
        return Poison(record, str(bad))
    except ValidationError as error:
        return Poison(record, "not a CloudEvent: " + _summarize(error))
    if event.specversion != "1.0":
        return Poison(record, f"unsupported CloudEvents specversion {event.specversion!r}")
    model = CONSUMED_DATA_MODELS.get(event.type)
    if model is None:
        return Poison(record, f"unknown event type {event.type!r}")
    if expected_type is not None and event.type != expected_type:
        return Poison(
            record, f"event type {event.type!r} is not accepted on topic {record.topic!r}"
        )
    try:
        payload: BaseModel = model.model_validate(data)
    except ValidationError as error:
        return Poison(record, f"invalid data for {event.type}: " + _summarize(error))
    return InboundEvent(
        ref=EventRef(event.source, event.id),
        type=event.type,
        data=payload,
        time=_event_time(event.time, record),
        record=record,
    )


class _BadEnvelope(Exception):
    pass


def _envelope(record: KafkaRecord) -> tuple[dict[str, Any], Any]:
    headers = {name: value for name, value in (record.headers or ())}
    if _BINARY_PREFIX + "specversion" in headers:
        attributes: dict[str, Any] = {}
        for name, raw in headers.items():
            if not name.startswith(_BINARY_PREFIX):
                continue
            try:
                attributes[name[len(_BINARY_PREFIX) :]] = (raw or b"").decode("utf-8")
            except UnicodeDecodeError:
                raise _BadEnvelope(f"header {name!r} is not UTF-8") from None
        return attributes, _json(record.value, "value (binary-mode data)")
    document = _json(record.value, "value")
    if not isinstance(document, dict):
        raise _BadEnvelope(f"value is JSON {type(document).__name__}, not a CloudEvent object")
    return document, document.get("data")


def _json(raw: bytes | None, what: str) -> Any:
    if raw is None:
        raise _BadEnvelope(f"{what} is empty (a tombstone?)")
    try:
        # Decoded explicitly: json.loads(bytes) would also guess UTF-16 and UTF-32,
        # and JSON exchanged between systems is UTF-8 (RFC 8259).
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadEnvelope(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _BadEnvelope(f"{what} is not JSON: {error}") from None
    except RecursionError:
        raise _BadEnvelope(f"{what} is JSON nested too deeply") from None


def _event_time(time: datetime | None, record: KafkaRecord) -> datetime:
    """The event's own `time`; else when Kafka took it. Always timezone-aware."""
    if time is None:
        return datetime.fromtimestamp(record.timestamp / 1000, UTC)
    if time.tzinfo is None:
        return time.replace(tzinfo=UTC)
    return time


def _summarize(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:_MAX_REASON]
