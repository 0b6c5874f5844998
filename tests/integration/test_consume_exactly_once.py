"""`(source, id)` identifies an event: a redelivery, in the same batch or later, changes nothing.

Also the hold's default length, which is decided when the checkout is applied.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from tests.support.invariants import invariant_violations
from tests.support.records import FakeRecord, cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration


async def _snapshot(s: Scenario) -> tuple[object, ...]:
    """Everything an event can change: stock, orders, audit and outbox."""
    async with s.engine.connect() as conn:
        rows = []
        for sql in (
            "SELECT variant_id, on_hand, reserved, version FROM variants ORDER BY 1",
            "SELECT order_id, phase, expires_at, payment, cancelled, reason FROM orders ORDER BY 1",
            "SELECT order_id, variant_id, quantity FROM order_lines ORDER BY 1, 2",
            "SELECT count(*) FROM audit_log",
            "SELECT count(*) FROM outbox",
        ):
            rows.append(tuple(tuple(r) for r in await conn.execute(text(sql))))
    return tuple(rows)


async def test_same_event_twice_in_a_batch_and_again_later_is_applied_once(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    c1 = checkout("o1", {"v1": 2, "v2": 1})
    c2 = checkout("o2", {"v1": 3})
    p1 = paid("o1")
    x2 = cancelled("o2")

    first = await s.deliver(c1, c1, c2, p1, c1, p1, x2, x2)
    assert (first.applied, first.duplicates, first.dead_lettered) == (4, 4, 0)
    assert await s.stock("v1") == (8, 0)
    assert await s.stock("v2") == (9, 0)
    assert await s.statuses("o1") == ["RESERVED", "CONFIRMED"]
    assert await s.statuses("o2") == ["RESERVED", "RELEASED"]
    after_first = await _snapshot(s)

    # The whole batch redelivered (say the offsets were not committed), then one at a time.
    again = await s.deliver(c1, c1, c2, p1, c1, p1, x2, x2)
    assert (again.applied, again.duplicates, again.published) == (0, 8, 0)
    for repeat in (x2, p1, c2, c1):
        report = await s.deliver(repeat)
        assert (report.applied, report.duplicates, report.published) == (0, 1, 0)
    assert await _snapshot(s) == after_first
    assert await invariant_violations(engine) == []


async def test_a_redelivered_event_is_a_no_op_even_when_it_would_now_decide_differently(
    engine, settings
) -> None:
    """checkout(o1) is redelivered after a release: it must not reserve again."""
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    c1 = checkout("o1", {"v1": 4})
    f1 = payment_failed("o1")
    await s.deliver_each(c1, f1)
    before = await _snapshot(s)
    await s.deliver(c1, f1)
    await s.deliver(f1, c1)
    assert await _snapshot(s) == before
    assert await s.phase("o1") == "RELEASED"
    assert await invariant_violations(engine) == []


async def test_same_id_from_another_source_is_another_event(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    shop = checkout("o1", {"v1": 2}, source="shop", event_id="evt-1")
    web = checkout("o2", {"v1": 3}, source="web", event_id="evt-1")
    report = await s.deliver(shop, web)
    assert (report.applied, report.duplicates) == (2, 0)
    assert await s.stock("v1") == (10, 5)
    # The same id again from a third source, for an existing order: applied too.
    await s.deliver(paid("o1", source="payments", event_id="evt-1"))
    assert await s.phase("o1") == "CONFIRMED"
    # And the same (source, id) pair with another payload is still the same event.
    await s.deliver(cancelled("o2", source="web", event_id="evt-1"))
    assert await s.phase("o2") == "RESERVED"
    assert await s.stock("v1") == (8, 3)
    assert await invariant_violations(engine) == []


async def test_poison_record_redelivered_at_the_same_offset_is_dead_lettered_once(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    topic = settings.topic_order_checkout

    def bad(offset: int, partition: int = 1) -> FakeRecord:
        # A redelivery is the same record: same position, same broker timestamp.
        return FakeRecord(topic, b"{broken", key=b"o1", partition=partition, offset=offset,
                          timestamp=1_700_000_000_000)

    good = checkout("o1", {"v1": 1})
    first = await s.deliver(bad(41), s.record(good), bad(41))
    assert (first.applied, first.dead_lettered, first.duplicates) == (1, 1, 1)
    later = await s.deliver(bad(41))
    assert (later.applied, later.dead_lettered, later.duplicates) == (0, 0, 1)
    dead = await s.dead_letters()
    assert len(dead) == 1
    assert (dead[0].header("partition"), dead[0].header("offset")) == (b"1", b"41")

    # The same bytes at another offset, or another partition, are another message.
    await s.deliver(bad(42), bad(41, partition=2))
    dead = await s.dead_letters()
    assert [(d.header("partition"), d.header("offset")) for d in dead] == [
        (b"1", b"41"), (b"1", b"42"), (b"2", b"41"),
    ]
    assert await s.stock("v1") == (10, 1)

    # A recreated topic reuses offsets: a new record at an old position is new.
    reused = FakeRecord(topic, b"{other", key=b"o2", partition=1, offset=41,
                        timestamp=1_800_000_000_000)
    report = await s.deliver(reused)
    assert report.dead_lettered == 1
    assert await invariant_violations(engine) == []


async def test_poison_record_is_never_silently_dropped_by_a_colliding_event_id(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    topic = settings.topic_order_checkout
    lookalike = checkout("o1", {"v1": 1}, source=f"kafka:{topic}", event_id="0:900")
    await s.deliver(lookalike)
    assert await s.phase("o1") == "RESERVED"
    await s.deliver(FakeRecord(topic, b"not json", key=b"o2", partition=0, offset=900))
    assert len(await s.dead_letters()) == 1


# ------------------------------------------------------------------ hold length


async def test_expires_at_defaults_to_event_time_plus_the_configured_hold(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    time = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    await s.deliver(checkout("o1", {"v1": 1}, time=time))
    order = await s.order("o1")
    assert order.expires_at == time + timedelta(seconds=settings.reservation_ttl_seconds)
    assert settings.reservation_ttl_seconds == 15 * 60

    short = Scenario(engine, settings.model_copy(update={"reservation_ttl_seconds": 60}))
    await short.deliver(checkout("o2", {"v1": 1}, time=time))
    assert (await s.order("o2")).expires_at == time + timedelta(seconds=60)

    # An event time in another offset is the same instant.
    local = datetime(2031, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    await s.deliver(checkout("o3", {"v1": 1}, time=local))
    assert (await s.order("o3")).expires_at == datetime(2031, 5, 6, 7, 23, 9, tzinfo=UTC)
    assert await invariant_violations(engine) == []


async def test_expires_at_of_the_checkout_wins_over_the_default(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    time = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)
    own = datetime(2031, 5, 6, 7, 2, 30, tzinfo=UTC)
    await s.deliver(checkout("o1", {"v1": 1}, time=time, expires_at=own))
    assert (await s.order("o1")).expires_at == own
    assert await invariant_violations(engine) == []


async def test_checkout_without_time_holds_from_the_record_timestamp(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    sent = checkout("o1", {"v1": 1})
    del sent["time"]
    stamp = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = FakeRecord(
        settings.topic_order_checkout, json.dumps(sent).encode(), key=b"o1",
        timestamp=int(stamp.timestamp() * 1000),
    )
    await s.deliver(record)
    assert (await s.order("o1")).expires_at == stamp + timedelta(minutes=15)
    assert await invariant_violations(engine) == []
