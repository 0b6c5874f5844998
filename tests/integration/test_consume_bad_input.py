"""Bad records go to the dead-letter outbox row intact; the good ones of the batch are applied.

A dead letter carries the original value bytes, the original key and the original
headers, then `reason`, `topic`, `partition` and `offset` headers (CONTRACT.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.invariants import invariant_violations
from tests.support.records import FakeRecord, cancelled, checkout, event, paid
from tests.support.scenario import Published, Scenario

pytestmark = pytest.mark.integration

#: Headers every poison record arrives with: the DLQ must keep them, bytes for bytes.
ORIGINAL_HEADERS = (
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("x-not-utf8", b"\xff\x00\xfe"),
)
POISON_PARTITION = 2


def _binary_headers(
    event_type: str, event_id: str, **override: bytes
) -> tuple[tuple[str, bytes], ...]:
    headers = {
        "ce_specversion": b"1.0",
        "ce_id": event_id.encode(),
        "ce_source": b"shop",
        "ce_type": event_type.encode(),
        "ce_time": b"2030-01-01T00:00:00Z",
        "content-type": b"application/json",
    }
    headers.update(override)
    return tuple(headers.items())


def _with_data(data: dict[str, Any]) -> dict[str, Any]:
    return {**checkout("bad", {"v1": 1}), "data": data}


def _line(quantity: Any) -> dict[str, Any]:
    return _with_data({"order_id": "bad", "lines": [{"variant_id": "v1", "quantity": quantity}]})


def _without(attribute: str) -> dict[str, Any]:
    sent = checkout("bad", {"v1": 1})
    del sent[attribute]
    return sent


@dataclass(frozen=True)
class PoisonCase:
    name: str
    value: bytes | None
    reason: str  # a fragment the readable reason must contain
    topic: str = "checkout"  # which of the consumed topics it arrives on
    headers: tuple[tuple[str, bytes], ...] = ()


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


POISONS: list[PoisonCase] = [
    PoisonCase("not_json", b"{this is not json", "not JSON"),
    PoisonCase("not_utf8", b'{"id": "\xff\xfe"}', "not UTF-8"),
    PoisonCase("utf16_json", json.dumps(checkout("bad", {"v1": 1})).encode("utf-16"),
               "not UTF-8"),
    PoisonCase("json_array", b'[{"specversion": "1.0"}]', "not a CloudEvent object"),
    PoisonCase("json_string", b'"order.checkout"', "not a CloudEvent object"),
    PoisonCase("missing_id", _json(_without("id")), "id: Field required"),
    PoisonCase("missing_source", _json(_without("source")), "source: Field required"),
    PoisonCase("missing_type", _json(_without("type")), "type: Field required"),
    PoisonCase("empty_id", _json({**checkout("bad", {"v1": 1}), "id": ""}), "id: String"),
    PoisonCase("specversion_0_3", _json({**checkout("bad", {"v1": 1}), "specversion": "0.3"}),
               "specversion"),
    PoisonCase("unknown_type", _json(event("order.shipped", {"order_id": "bad"})),
               "unknown event type"),
    PoisonCase("payment_on_checkout_topic", _json(paid("bad")), "not accepted on topic"),
    PoisonCase("checkout_on_payment_topic", _json(checkout("bad", {"v1": 1})),
               "not accepted on topic", topic="paid"),
    PoisonCase("missing_data", _json({**checkout("bad", {"v1": 1}), "data": None}),
               "invalid data for order.checkout"),
    PoisonCase("payment_without_order_id", _json(event("payment.succeeded", {"amount": 3})),
               "order_id: Field required", topic="paid"),
    PoisonCase("quantity_zero", _json(_line(0)), "quantity: Input should be greater than 0"),
    PoisonCase("quantity_negative", _json(_line(-2)), "greater than 0"),
    PoisonCase("quantity_string", _json(_line("2")), "valid integer"),
    PoisonCase("quantity_float", _json(_line(2.5)), "valid integer"),
    PoisonCase("quantity_huge", _json(_line(10**12)), "less than or equal"),
    PoisonCase("empty_lines", _json(_with_data({"order_id": "bad", "lines": []})),
               "at least 1"),
    PoisonCase("order_id_201_chars", _json(checkout("x" * 201, {"v1": 1})), "at most 200"),
    PoisonCase("order_id_empty", _json(checkout("", {"v1": 1})), "order_id: String"),
    PoisonCase("order_id_with_nul", _json(checkout("a\x00b", {"v1": 1})),
               "order_id: an id must not"),
    PoisonCase("variant_id_with_nul", _json(checkout("bad", {"v\x001": 1})),
               "variant_id: an id must not"),
    PoisonCase(
        "expires_at_without_timezone",
        _json(_with_data({"order_id": "bad", "lines": [{"variant_id": "v1", "quantity": 1}],
                          "expires_at": "2030-01-01T00:00:00"})),
        "timezone",
    ),
    PoisonCase("time_not_a_time", _json({**checkout("bad", {"v1": 1}), "time": "yesterday"}),
               "time: Input should be a valid datetime"),
    PoisonCase("tombstone", None, "empty"),
    PoisonCase(
        "binary_mode_header_not_utf8",
        _json({"order_id": "bad", "lines": [{"variant_id": "v1", "quantity": 1}]}),
        "'ce_source' is not UTF-8",
        headers=_binary_headers("order.checkout", "bin-bad", ce_source=b"sh\xffop"),
    ),
    PoisonCase(
        "binary_mode_value_not_json",
        b"order_id=bad",
        "not JSON",
        headers=_binary_headers("order.checkout", "bin-bad-2"),
    ),
]


def _poison_record(settings: Any, case: PoisonCase) -> FakeRecord:
    topic = {"checkout": settings.topic_order_checkout,
             "paid": settings.topic_payment_succeeded}[case.topic]
    return FakeRecord(
        topic=topic,
        value=case.value,
        key=f"key-{case.name}".encode(),
        headers=(*ORIGINAL_HEADERS, *case.headers),
        partition=POISON_PARTITION,
    )


def _dlq_problems(case: PoisonCase, record: FakeRecord, row: Published | None) -> list[str]:
    if row is None:
        return [f"{case.name}: no dead letter"]
    problems = []
    expected_value = record.value  # a tombstone is dead-lettered as a tombstone
    if row.value != expected_value:
        problems.append(f"{case.name}: value {row.value!r} != {expected_value!r}")
    if row.key != record.key:
        problems.append(f"{case.name}: key {row.key!r} != {record.key!r}")
    original = list(record.headers)
    if row.headers[: len(original)] != original:
        problems.append(f"{case.name}: original headers not kept: {row.headers}")
    added = dict(row.headers[len(original):])
    if set(added) != {"reason", "topic", "partition", "offset"}:
        problems.append(f"{case.name}: added headers {sorted(added)}")
        return problems
    if added["topic"] != record.topic.encode():
        problems.append(f"{case.name}: topic header {added['topic']!r}")
    if added["partition"] != str(record.partition).encode():
        problems.append(f"{case.name}: partition header {added['partition']!r}")
    if added["offset"] != str(record.offset).encode():
        problems.append(f"{case.name}: offset header {added['offset']!r}")
    reason = added["reason"].decode()
    if case.reason not in reason:
        problems.append(f"{case.name}: reason {reason!r} does not mention {case.reason!r}")
    return problems


async def test_every_kind_of_poison_is_dead_lettered_intact_and_the_good_records_applied(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    poison_records = {case.name: _poison_record(settings, case) for case in POISONS}
    good: list[Callable[[], FakeRecord]] = [
        lambda: s.record(checkout("good-1", {"v1": 2})),
        lambda: s.record(checkout("good-2", {"v2": 3})),
        lambda: s.record(paid("good-1")),
        lambda: s.record(checkout("good-3", {"v1": 1, "v2": 1})),
        lambda: s.record(cancelled("good-3")),
    ]
    batch: list[FakeRecord] = []
    for index, record in enumerate(poison_records.values()):
        if index % 6 == 0 and good:
            batch.append(good.pop(0)())
        batch.append(record)
    batch.extend(make() for make in good)

    report = await s.consumer.handle(batch)
    assert report.dead_lettered == len(POISONS)
    assert report.applied == 5

    dead = {d.header("offset"): d for d in await s.dead_letters()}
    assert len(dead) == len(POISONS)
    problems = [
        problem
        for case in POISONS
        for problem in _dlq_problems(
            case,
            poison_records[case.name],
            dead.get(str(poison_records[case.name].offset).encode()),
        )
    ]
    assert problems == []

    # The good records, in their batch order, around the poison.
    assert await s.phase("good-1") == "CONFIRMED"
    assert await s.phase("good-2") == "RESERVED"
    assert await s.phase("good-3") == "RELEASED"
    assert await s.stock("v1") == (8, 0)
    assert await s.stock("v2") == (10, 3)
    assert await s.phase("bad") is None, "nothing of a poison record may be applied"
    assert await invariant_violations(engine) == []


async def test_a_batch_of_only_poison_publishes_only_dead_letters(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    before = await s.outbox_count()
    records = [_poison_record(settings, case) for case in POISONS[:3]]
    report = await s.consumer.handle(records)
    assert (report.applied, report.dead_lettered, report.published) == (0, 3, 3)
    rows = await s.outbox()
    assert [r.topic for r in rows[before:]] == [settings.topic_dlq] * 3
    assert await s.scalar("SELECT count(*) FROM orders") == 0
    assert await invariant_violations(engine) == []


async def test_binary_mode_events_are_applied_like_structured_ones(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    binary_checkout = FakeRecord(
        settings.topic_order_checkout,
        _json({"order_id": "o1", "lines": [{"variant_id": "v1", "quantity": 4}]}),
        key=b"o1",
        headers=_binary_headers("order.checkout", "bin-1"),
    )
    binary_paid = FakeRecord(
        settings.topic_payment_succeeded,
        _json({"order_id": "o1", "payment_id": "pay-1"}),
        key=b"o1",
        headers=_binary_headers("payment.succeeded", "bin-2"),
    )
    report = await s.consumer.handle([binary_checkout])
    assert (report.applied, report.dead_lettered) == (1, 0)
    assert await s.phase("o1") == "RESERVED"
    assert await s.stock("v1") == (10, 4)
    # The hold runs from ce_time.
    order = await s.order("o1")
    assert order.expires_at.isoformat() == "2030-01-01T00:15:00+00:00"

    await s.consumer.handle([binary_paid])
    assert await s.phase("o1") == "CONFIRMED"
    assert await s.stock("v1") == (6, 0)

    # The same event, structured this time: same (source, id), so a duplicate.
    structured = paid("o1", source="shop", event_id="bin-2")
    report = await s.deliver(structured)
    assert (report.applied, report.duplicates) == (0, 1)
    assert await s.dead_letters() == []
    assert await invariant_violations(engine) == []


async def test_binary_mode_with_a_non_utf8_ce_header_is_dead_lettered_with_its_headers(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    headers = _binary_headers("order.checkout", "bin-x", ce_id=b"\xc3\x28")
    bad = FakeRecord(
        settings.topic_order_checkout,
        _json({"order_id": "o1", "lines": [{"variant_id": "v1", "quantity": 1}]}),
        key=b"o1",
        headers=headers,
    )
    report = await s.consumer.handle([bad, s.record(checkout("o2", {"v1": 2}))])
    assert (report.applied, report.dead_lettered) == (1, 1)
    [dead] = await s.dead_letters()
    assert dead.headers[: len(headers)] == list(headers)
    assert b"ce_id" in (dead.header("reason") or b"")
    assert dead.value == bad.value and dead.key == b"o1"
    assert await s.phase("o1") is None
    assert await s.stock("v1") == (10, 2)
    assert await invariant_violations(engine) == []


async def test_repeated_variant_lines_in_one_checkout_are_summed(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    sent = _with_data(
        {
            "order_id": "o1",
            "lines": [
                {"variant_id": "v1", "quantity": 2},
                {"variant_id": "v2", "quantity": 1},
                {"variant_id": "v1", "quantity": 3},
            ],
        }
    )
    await s.deliver(sent)
    assert await s.phase("o1") == "RESERVED"
    assert await s.stock("v1") == (10, 5)
    assert await s.order_lines("o1") == {"v1": 5, "v2": 1}
    [reserved] = await s.reservations("o1")
    assert sorted(reserved["lines"], key=lambda line: line["variant_id"]) == [
        {"variant_id": "v1", "quantity": 5},
        {"variant_id": "v2", "quantity": 1},
    ]
    # Summed lines are checked against stock as one: 6 + 6 > 10.
    await s.deliver(
        _with_data({"order_id": "o2", "lines": [{"variant_id": "v1", "quantity": 3},
                                                 {"variant_id": "v1", "quantity": 3}]})
    )
    [rejected] = await s.reservations("o2")
    assert rejected["status"] == "REJECTED"
    assert rejected["shortages"] == [{"variant_id": "v1", "requested": 6, "available": 5}]
    await s.deliver(paid("o1"))
    assert await s.stock("v1") == (5, 0)
    assert await invariant_violations(engine) == []


async def test_an_event_the_database_refuses_is_dead_lettered_alone(engine, settings) -> None:
    """A NUL in the event id passes validation but PostgreSQL text cannot hold it."""
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    refused = s.record(checkout("o2", {"v1": 1}, event_id="evt\x00nul"))
    batch = [s.record(checkout("o1", {"v1": 2})), refused, s.record(paid("o1"))]
    report = await s.consumer.handle(batch)
    assert (report.applied, report.dead_lettered) == (2, 1)
    [dead] = await s.dead_letters()
    assert dead.value == refused.value
    assert dead.header("offset") == str(refused.offset).encode()
    assert (dead.header("reason") or b"").startswith(b"processing failed")
    assert await s.phase("o1") == "CONFIRMED"
    assert await s.phase("o2") is None
    assert await s.stock("v1") == (8, 0)
    # Redelivered: neither applied again nor dead-lettered twice.
    await s.consumer.handle(batch)
    assert len(await s.dead_letters()) == 1
    assert await s.stock("v1") == (8, 0)
    assert await invariant_violations(engine) == []


async def test_structured_value_without_specversion_is_not_a_cloudevent(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    report = await s.deliver(_without("specversion"))
    assert report.dead_lettered == 1
    assert await s.stock("v1") == (10, 0)
