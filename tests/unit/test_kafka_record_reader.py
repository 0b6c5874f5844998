"""`stock_schemas.parse_record`: a Kafka record (value, headers) -> a validated event.

The same rule the worker applies (service/inbound.py is a thin adapter over it), here
as any other consumer of the contract sees it: no broker, no worker.
"""

import json
from datetime import UTC, datetime

import pytest
import stock_schemas
from stock_schemas import (
    CONSUMED_DATA_MODELS,
    CloudEvent,
    InvalidEvent,
    OrderCancelled,
    OrderCheckout,
    OrderLine,
    ParsedEvent,
    PaymentFailed,
    PaymentSucceeded,
    ReservationStatus,
    StockReservation,
    build_event,
    parse_record,
)

from service.domain.model import EventRef, LowStockAlert, ReservationOutcome, Shortage, StockChange
from service.inbound import InboundEvent, Poison, decode_record
from service.outbound import EventWriter
from service.settings import Settings
from tests.support.records import FakeRecord

TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

CONSUMED = {
    "order.checkout": OrderCheckout(order_id="o1", lines=[OrderLine(variant_id="v1", quantity=2)]),
    "payment.succeeded": PaymentSucceeded(
        order_id="o1", payment_id="p1", amount="9.90", currency="EUR"
    ),
    "payment.failed": PaymentFailed(order_id="o1", reason="card_declined"),
    "order.cancelled": OrderCancelled(order_id="o1", reason="customer"),
}


def structured(event: dict) -> tuple[bytes, list[tuple[str, bytes]]]:
    return json.dumps(event).encode(), [("content-type", b"application/cloudevents+json")]


def binary(event: dict) -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_" + name, str(value).encode())
        for name, value in event.items()
        if name not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", event["datacontenttype"].encode()))
    return json.dumps(event["data"]).encode(), headers


@pytest.mark.parametrize("mode", [structured, binary])
@pytest.mark.parametrize("event_type", list(CONSUMED))
def test_every_consumed_event_reads_back_typed_in_both_modes(event_type, mode) -> None:
    sent = build_event(
        event_type,
        CONSUMED[event_type],
        source="shop",
        event_id="e-1",
        time=TIME,
        correlationid="o1",
    )
    value, headers = mode(sent)
    parsed = parse_record(value, headers)
    assert isinstance(parsed, ParsedEvent)
    assert isinstance(parsed.envelope, CloudEvent)
    assert (parsed.type, parsed.source, parsed.id, parsed.time) == (event_type, "shop", "e-1", TIME)
    assert parsed.data == CONSUMED[event_type]
    assert type(parsed.data) is CONSUMED_DATA_MODELS[event_type]
    assert parsed.envelope.data == sent["data"]  # the JSON as it came
    assert parsed.envelope.datacontenttype == "application/json"
    assert parsed.envelope.model_extra == {"correlationid": "o1"}  # extensions are kept


def test_a_published_reservation_reads_back_for_a_consumer() -> None:
    answer = StockReservation(
        order_id="o1",
        status=ReservationStatus.RESERVED,
        lines=[OrderLine(variant_id="v1", quantity=2)],
    )
    value = json.dumps(build_event("stock.reservation", answer, source="stock-service")).encode()
    parsed = parse_record(value, None)
    assert parsed.data == answer and isinstance(parsed.data, StockReservation)


def test_what_the_worker_publishes_reads_back_with_its_model() -> None:
    writer = EventWriter(Settings(event_source="stock-service"))
    messages = [
        writer.reservation(
            ReservationOutcome(
                "o1",
                ReservationStatus.REJECTED,
                (("v1", 3),),
                "insufficient_stock",
                (Shortage("v1", 3, 1),),
            ),
            TIME,
        ),
        writer.stock_changed(
            StockChange(
                "v1",
                "p1",
                stock_schemas.ChangeType.RESERVE,
                0,
                2,
                10,
                2,
                7,
                "o1",
                None,
                EventRef("shop", "e1"),
            ),
            TIME,
        ),
        writer.stock_low(LowStockAlert("v1", "p1", 0, 5), TIME),
    ]
    for message in messages:
        parsed = parse_record(message.value, message.headers)
        assert parsed.type == message.topic and parsed.source == "stock-service"
        assert type(parsed.data) is stock_schemas.PUBLISHED_DATA_MODELS[parsed.type]
    reservation = parse_record(messages[0].value, messages[0].headers).data
    assert isinstance(reservation, StockReservation)
    assert reservation.shortages is not None and reservation.shortages[0].available == 1


def test_models_limit_the_types_read() -> None:
    value = json.dumps(
        build_event(
            "stock.low",
            {
                "variant_id": "v",
                "product_id": "p",
                "available": 1,
                "threshold": 5,
                "out_of_stock": False,
            },
            source="s",
        )
    ).encode()
    assert parse_record(value).type == "stock.low"
    with pytest.raises(InvalidEvent, match=r"unknown event type 'stock\.low'"):
        parse_record(value, models=CONSUMED_DATA_MODELS)


def test_headers_may_be_absent_empty_or_any_iterable_of_pairs() -> None:
    value = json.dumps(build_event("order.cancelled", {"order_id": "o"}, source="s")).encode()
    for headers in (None, (), [], iter([("trace", b"x")]), [("trace", None)]):
        assert parse_record(value, headers).data == OrderCancelled(order_id="o")


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (None, None, "value is empty (a tombstone?)"),
        (b"", None, "value is not JSON"),
        (b"\xff\xfe{}", None, "value is not UTF-8 text"),
        (json.dumps({"a": 1}).encode("utf-16"), None, "not UTF-8"),
        (b"[1]", None, "value is JSON list, not a CloudEvent object"),
        (b"null", None, "value is JSON null, not a CloudEvent object"),
        (
            b'{"id": "e", "source": "s", "type": "order.cancelled"}',
            None,
            "not a CloudEvent: specversion is missing",
        ),
        (
            b'{"specversion": "1.0", "source": "s", "type": "order.cancelled"}',
            None,
            "not a CloudEvent: id: Field required",
        ),
        (
            b'{"specversion": "0.3", "id": "e", "source": "s", "type": "order.cancelled"}',
            None,
            "unsupported CloudEvents specversion '0.3'",
        ),
        (
            b'{"specversion": "1.0", "id": "e", "source": "s", "type": "order.shipped"}',
            None,
            "unknown event type 'order.shipped'",
        ),
        (
            b'{"specversion": "1.0", "id": "e", "source": "s", "type": "order.cancelled"}',
            None,
            "invalid data for order.cancelled: (root): Input should be",
        ),
        # json.loads raised a plain ValueError here, past the worker's handler.
        (b'{"id": ' + b"1" * 5000 + b"}", None, "value is not JSON: number out of range"),
        (b'{"id": "\\ud800"}', None, "value is not JSON"),  # PostgreSQL cannot store it
        (b"[" * 5000 + b"]" * 5000, None, "value is not JSON: recursion limit"),
        (b"not json", [("ce_specversion", b"1.0")], "value (binary-mode data) is not JSON"),
        (None, [("ce_specversion", b"1.0")], "value (binary-mode data) is empty"),
        (
            b"{}",
            [("ce_specversion", b"1.0"), ("ce_source", b"\xff")],
            "header 'ce_source' is not UTF-8",
        ),
        (
            b'{"order_id": ""}',
            [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"e"),
                ("ce_source", b"s"),
                ("ce_type", b"order.cancelled"),
            ],
            "invalid data for order.cancelled: order_id: String should have at least 1 character",
        ),
    ],
)
def test_invalid_records_raise_with_a_readable_reason(value, headers, reason) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_record(value, headers)
    assert reason in raised.value.reason
    assert str(raised.value) == raised.value.reason
    assert isinstance(raised.value, ValueError)


def test_reasons_are_bounded() -> None:
    lines = [{"variant_id": "", "quantity": 0}] * 1000
    value = json.dumps(
        build_event("order.checkout", {"order_id": "o", "lines": lines}, source="s")
    ).encode()
    with pytest.raises(InvalidEvent) as raised:
        parse_record(value)
    assert len(raised.value.reason) <= 1000 + len("invalid data for order.checkout: ")


def test_the_worker_reads_with_the_same_rule() -> None:
    """service.inbound adds only the topic check, the timestamp fallback and Poison."""
    bad = b'{"specversion": "1.0", "id": "e", "source": "s", "type": "stock.changed"}'
    with pytest.raises(InvalidEvent) as raised:
        parse_record(bad, models=CONSUMED_DATA_MODELS)
    poison = decode_record(FakeRecord("order.checkout", bad), "order.checkout")
    assert isinstance(poison, Poison) and poison.reason == raised.value.reason

    huge = b'{"id": ' + b"1" * 5000 + b"}"
    poison = decode_record(FakeRecord("order.checkout", huge), "order.checkout")
    assert isinstance(poison, Poison) and "not JSON" in poison.reason


def test_the_worker_checks_data_before_the_topic() -> None:
    wrong_topic = json.dumps(build_event("order.cancelled", {"order_id": "o"}, source="s"))
    decoded = decode_record(FakeRecord("order.checkout", wrong_topic.encode()), "order.checkout")
    assert isinstance(decoded, Poison)
    assert (
        decoded.reason == "event type 'order.cancelled' is not accepted on topic 'order.checkout'"
    )
    invalid = json.dumps(build_event("order.cancelled", {"order_id": ""}, source="s"))
    decoded = decode_record(FakeRecord("order.checkout", invalid.encode()), "order.checkout")
    assert isinstance(decoded, Poison) and decoded.reason.startswith("invalid data for")
    ok = decode_record(FakeRecord("order.cancelled", wrong_topic.encode()), "order.cancelled")
    assert isinstance(ok, InboundEvent) and ok.data == OrderCancelled(order_id="o")


def test_the_package_exports_the_reader() -> None:
    for name in (
        "parse_record",
        "ParsedEvent",
        "InvalidEvent",
        "build_event",
        "OrderCheckout",
        "StockReservation",
        "DATA_MODELS",
        "CONSUMED_DATA_MODELS",
    ):
        assert name in stock_schemas.__all__ and hasattr(stock_schemas, name)


@pytest.mark.parametrize("event_type", list(CONSUMED))
def test_the_one_call_fast_path_reads_what_the_long_way_reads(event_type) -> None:
    """A structured-mode value is read by one validate_json into a typed envelope; the
    long way (parse, envelope, data) is taken for binary mode. Both give the same event."""
    sent = build_event(
        event_type, CONSUMED[event_type], source="shop", event_id="e-9", time=TIME,
        correlationid="o1",
    )
    fast = parse_record(*structured(sent), models=CONSUMED_DATA_MODELS)
    long_way = parse_record(*binary(sent), models=CONSUMED_DATA_MODELS)
    assert (fast.type, fast.source, fast.id, fast.time) == (
        long_way.type, long_way.source, long_way.id, long_way.time,
    )
    assert fast.data == long_way.data == CONSUMED[event_type]
    # The envelope is built when asked for, as the long way builds it.
    assert fast.envelope == CloudEvent.model_validate(sent)
    assert fast == parse_record(*structured(sent), models=CONSUMED_DATA_MODELS)
