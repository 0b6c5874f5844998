"""What the worker publishes validates against the `schemas` package (the contract)."""

import json
from datetime import UTC, datetime

from stock_schemas import CloudEvent, StockChanged, StockLow, StockReservation
from stock_schemas.events import ChangeType, ReservationStatus

from service.domain.model import (
    EventRef,
    LowStockAlert,
    ReservationOutcome,
    Shortage,
    StockChange,
)
from service.inbound import Poison
from service.outbound import STRUCTURED_CONTENT_TYPE, EventWriter, decode_headers
from service.settings import Settings
from tests.support.records import FakeRecord

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WRITER = EventWriter(Settings(event_source="stock-test"))


def _envelope(message) -> CloudEvent:
    event = CloudEvent.model_validate_json(message.value)
    assert event.source == "stock-test"
    assert event.specversion == "1.0"
    assert event.datacontenttype == "application/json"
    assert dict(message.headers)["content-type"] == STRUCTURED_CONTENT_TYPE
    return event


def test_stock_changed_is_keyed_by_variant_and_carries_every_field() -> None:
    change = StockChange("v1", "p1", ChangeType.RESERVE, 0, 2, 10, 2, 7, "o1", None,
                         EventRef("shop", "e1"))
    message = WRITER.stock_changed(change, NOW)
    event = _envelope(message)
    assert message.topic == "stock.changed" and message.key == b"v1"
    assert event.type == "stock.changed"
    data = StockChanged.model_validate(event.data)
    assert (data.on_hand, data.reserved, data.available, data.version) == (10, 2, 8, 7)
    assert data.change_type is ChangeType.RESERVE and data.reference == "o1"


def test_stock_low_is_keyed_by_variant() -> None:
    message = WRITER.stock_low(LowStockAlert("v1", "p1", 0, 5), NOW)
    data = StockLow.model_validate(_envelope(message).data)
    assert message.key == b"v1"
    assert data.out_of_stock is True and data.threshold == 5


def test_reservation_is_keyed_by_order_and_carries_shortages() -> None:
    outcome = ReservationOutcome(
        "o1", ReservationStatus.REJECTED, (("v1", 3),), "insufficient_stock",
        (Shortage("v1", 3, 1),),
    )
    message = WRITER.reservation(outcome, NOW)
    event = _envelope(message)
    data = StockReservation.model_validate(event.data)
    assert message.key == b"o1"
    assert event.model_extra == {"correlationid": "o1"}
    assert data.status is ReservationStatus.REJECTED
    assert data.shortages is not None and data.shortages[0].available == 1


def test_reservation_without_reason_omits_reason_and_shortages() -> None:
    outcome = ReservationOutcome("o1", ReservationStatus.RESERVED, (("v1", 3),))
    data = json.loads(WRITER.reservation(outcome, NOW).value)["data"]
    assert "reason" not in data and "shortages" not in data


def test_dead_letter_keeps_original_bytes_and_headers_and_says_why() -> None:
    record = FakeRecord(topic="order.checkout", value=b"\xff garbage", key=b"k",
                        headers=(("trace", b"\xfe\x00"),), partition=2, offset=41)
    message = WRITER.dead_letter(Poison(record, "value is not UTF-8 text"))
    assert message.topic == "stock.dlq" and message.key == b"k"
    assert message.value == b"\xff garbage"
    headers = dict(message.headers)
    assert headers["trace"] == b"\xfe\x00"
    assert headers["reason"] == b"value is not UTF-8 text"
    assert (headers["topic"], headers["partition"], headers["offset"]) == (
        b"order.checkout", b"2", b"41")
    # Stored in the outbox as JSON with base64 values, and read back unchanged.
    assert decode_headers(message.headers_json()) == list(message.headers)


def test_an_oversized_dead_letter_is_cut_to_fit_and_says_so() -> None:
    writer = EventWriter(Settings(dlq_max_value_bytes=10))
    record = FakeRecord(topic="order.checkout", value=b"x" * 25)
    message = writer.dead_letter(Poison(record, "too big"))
    assert message.value == b"x" * 10
    assert dict(message.headers)["truncated-from"] == b"25"


def test_header_names_and_values_of_any_bytes_survive_the_outbox() -> None:
    record = FakeRecord(topic="t", value=None, headers=(("a\x00b", b"\x00"), ("n", None)))
    message = WRITER.dead_letter(Poison(record, "tombstone"))
    assert message.value is None
    assert decode_headers(message.headers_json())[:2] == [("a\x00b", b"\x00"), ("n", None)]


def test_event_ids_are_version_4_uuids_and_unique() -> None:
    import uuid

    from service.outbound import new_event_id

    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:500]:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, event_id)
