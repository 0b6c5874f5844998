"""Kafka record -> event or poison, without any broker: the decoding rules alone."""

import json
from datetime import UTC, datetime

import pytest
from stock_schemas.events import OrderCheckout

from service.inbound import InboundEvent, Poison, decode_record
from tests.support.records import FakeRecord, checkout, event, paid


def _record(value, topic="order.checkout", headers=()) -> FakeRecord:
    raw = value if isinstance(value, bytes | None) else json.dumps(value).encode()
    return FakeRecord(topic=topic, value=raw, headers=headers)


def test_structured_checkout_decodes_with_identity_and_time() -> None:
    sent = checkout("o1", {"v1": 2}, time=datetime(2026, 1, 1, tzinfo=UTC))
    decoded = decode_record(_record(sent), "order.checkout")
    assert isinstance(decoded, InboundEvent)
    assert (decoded.ref.source, decoded.ref.id) == ("test", sent["id"])
    assert isinstance(decoded.data, OrderCheckout)
    assert decoded.time == datetime(2026, 1, 1, tzinfo=UTC)


def test_binary_mode_reads_ce_headers_and_data_from_the_value() -> None:
    headers = (
        ("ce_specversion", b"1.0"), ("ce_id", b"e-1"), ("ce_source", b"shop"),
        ("ce_type", b"payment.succeeded"), ("ce_time", b"2026-01-01T00:00:00Z"),
    )
    decoded = decode_record(_record({"order_id": "o1"}, "payment.succeeded", headers),
                            "payment.succeeded")
    assert isinstance(decoded, InboundEvent)
    assert decoded.ref.id == "e-1" and decoded.data.order_id == "o1"


def test_missing_time_falls_back_to_the_record_timestamp() -> None:
    sent = paid("o1")
    del sent["time"]
    record = _record(sent, "payment.succeeded")
    decoded = decode_record(record, "payment.succeeded")
    assert isinstance(decoded, InboundEvent)
    assert decoded.time == datetime.fromtimestamp(record.timestamp / 1000, UTC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (None, "empty"),
        ([1, 2], "not a CloudEvent object"),
        ({"specversion": "1.0", "source": "s", "type": "order.checkout"}, "id"),
        ({**checkout("o", {"v": 1}), "specversion": "0.3"}, "specversion"),
        (event("order.shipped", {"order_id": "o"}), "unknown event type"),
        (paid("o1"), "not accepted on topic"),
        (checkout("o", {"v": 0}), "greater than 0"),
        (checkout("o", {"v": 10**12}), "less than or equal"),
        ({**checkout("o", {"v": 1}), "data": {"order_id": "o", "lines": []}}, "at least 1"),
        (checkout("x" * 201, {"v": 1}), "at most 200"),
        (checkout("a\x00b", {"v": 1}), "order_id"),
        ({**checkout("o", {"v": 1}),
          "data": {"order_id": "o", "lines": [{"variant_id": "v", "quantity": "2"}]}},
         "valid integer"),
        ({**checkout("o", {"v": 1}),
          "data": {"order_id": "o", "lines": [{"variant_id": "v", "quantity": 1}],
                   "expires_at": "2026-01-01T00:00:00"}},
         "timezone"),
        ({**checkout("o", {"v": 1}),
          "data": {"order_id": "o", "lines": [{"variant_id": "v", "quantity": 1}],
                   "expires_at": "9999-12-31T23:59:59-14:00"}},
         "out of range"),
    ],
)
def test_bad_input_is_poison_with_a_readable_reason(value, reason) -> None:
    decoded = decode_record(_record(value), "order.checkout")
    assert isinstance(decoded, Poison)
    assert reason in decoded.reason


def test_binary_mode_header_that_is_not_utf8_is_poison() -> None:
    headers = (("ce_specversion", b"1.0"), ("ce_id", b"\xff"), ("ce_source", b"s"),
               ("ce_type", b"order.checkout"))
    decoded = decode_record(_record({"order_id": "o"}, headers=headers), "order.checkout")
    assert isinstance(decoded, Poison) and "ce_id" in decoded.reason


def test_repeated_variant_lines_are_summed() -> None:
    data = OrderCheckout.model_validate(
        {"order_id": "o", "lines": [{"variant_id": "a", "quantity": 1},
                                    {"variant_id": "b", "quantity": 2},
                                    {"variant_id": "a", "quantity": 3}]}
    )
    assert data.merged_lines() == {"a": 4, "b": 2}
