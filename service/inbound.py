"""Kafka record -> a valid consumed event, or the reason it goes to the dead-letter topic.

What a valid event is (both CloudEvents Kafka bindings, the envelope, `data` per type)
has one home, `stock_schemas.kafka.parse_record`, shared with every other consumer of
the contract. This adds what only the worker needs: only the consumed types, the
event type each topic accepts, the record's timestamp when the event has no `time`,
and `Poison` instead of an exception, so one bad message never stops a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from stock_schemas.events import CONSUMED_DATA_MODELS
from stock_schemas.kafka import InvalidEvent, parse_record

from service.domain.model import EventRef


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
    """The record as an event of `expected_type` (the type its topic carries), else
    `Poison` with the reason. A record of another consumed type is poison on this
    topic; its `data` is checked first, so invalid data is reported as such."""
    try:
        parsed = parse_record(record.value, record.headers, models=CONSUMED_DATA_MODELS)
    except InvalidEvent as invalid:
        return Poison(record, invalid.reason)
    # The attributes, not `parsed.envelope`: that is built only when asked for.
    if expected_type is not None and parsed.type != expected_type:
        return Poison(
            record, f"event type {parsed.type!r} is not accepted on topic {record.topic!r}"
        )
    return InboundEvent(
        ref=EventRef(parsed.source, parsed.id),
        type=parsed.type,
        data=parsed.data,
        time=_event_time(parsed.time, record),
        record=record,
    )


def _event_time(time: datetime | None, record: KafkaRecord) -> datetime:
    """The event's own `time`; else when Kafka took it. Always timezone-aware."""
    if time is None:
        return datetime.fromtimestamp(record.timestamp / 1000, UTC)
    if time.tzinfo is None:
        return time.replace(tzinfo=UTC)
    return time
