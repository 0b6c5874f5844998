"""The hold sweeper on PostgreSQL: what it expires, what it publishes, and two at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from service.adapters.database import create_engine
from service.application.consume import BatchConsumer
from service.application.expiry import HoldSweeper
from tests.support.invariants import invariant_violations
from tests.support.records import cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


async def test_sweeper_expires_only_reserved_orders_whose_hold_is_due(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 100), ("v2", 100))
    past = NOW - timedelta(minutes=1)
    await s.deliver(
        checkout("due", {"v1": 2, "v2": 1}, expires_at=past),
        checkout("due-now", {"v1": 3}, expires_at=NOW),  # expires_at == now: due
        checkout("later", {"v1": 4}, expires_at=NOW + timedelta(microseconds=1)),
        checkout("paid", {"v1": 5}, expires_at=past),
        checkout("failed", {"v1": 6}, expires_at=past),
        checkout("cancelled", {"v1": 7}, expires_at=past),
        checkout("rejected", {"v1": 1000}, expires_at=past),
        paid("paid"),
        payment_failed("failed"),
        cancelled("cancelled"),
    )
    await s.deliver(paid("pending-only"))  # PENDING: no checkout, no hold
    assert await s.stock("v1") == (95, 9)
    outbox_before = await s.outbox_count()

    sweeper = HoldSweeper(engine, settings)
    assert await sweeper.sweep_once(now=NOW) == 2
    phases = {o: await s.phase(o) for o in
              ("due", "due-now", "later", "paid", "failed", "cancelled", "rejected",
               "pending-only")}
    assert phases == {
        "due": "EXPIRED", "due-now": "EXPIRED", "later": "RESERVED", "paid": "CONFIRMED",
        "failed": "RELEASED", "cancelled": "RELEASED", "rejected": "REJECTED",
        "pending-only": "PENDING",
    }
    assert await s.stock("v1") == (95, 4)
    assert await s.stock("v2") == (100, 0)

    for order_id in ("due", "due-now"):
        expired = (await s.reservations(order_id))[-1]
        assert (expired["status"], expired["reason"]) == ("EXPIRED", "hold_expired")
    expired_lines = (await s.reservations("due"))[-1]["lines"]
    assert sorted(expired_lines, key=lambda line: line["variant_id"]) == [
        {"variant_id": "v1", "quantity": 2}, {"variant_id": "v2", "quantity": 1},
    ]
    new_rows = (await s.outbox())[outbox_before:]
    new_changes = [r.data for r in new_rows if r.topic == settings.topic_stock_changed]
    assert sorted(
        (c["variant_id"], c["change_type"], c["delta_on_hand"], c["delta_reserved"],
         c["reference"])
        for c in new_changes
    ) == [
        ("v1", "EXPIRE", 0, -3, "due-now"),
        ("v1", "EXPIRE", 0, -2, "due"),
        ("v2", "EXPIRE", 0, -1, "due"),
    ]
    assert {r.topic for r in new_rows} == {
        settings.topic_stock_changed, settings.topic_stock_reservation
    }
    expire_audit = [a for a in await s.audit() if a.change_type == "EXPIRE"]
    assert len(expire_audit) == 3
    assert all(a.source_event_id is None for a in expire_audit)

    # Sweeping again at the same time does nothing; later, the last hold goes too.
    count = await s.outbox_count()
    assert await sweeper.sweep_once(now=NOW) == 0
    assert await s.outbox_count() == count
    assert await sweeper.sweep_once(now=NOW + timedelta(seconds=1)) == 1
    assert await s.phase("later") == "EXPIRED"
    assert await s.stock("v1") == (95, 0)
    assert sweeper.expired_total == 3
    assert await invariant_violations(engine) == []


async def test_default_hold_expires_after_the_configured_ttl(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.deliver(checkout("o1", {"v1": 1}, time=NOW))
    sweeper = HoldSweeper(engine, settings)
    ttl = timedelta(seconds=settings.reservation_ttl_seconds)
    assert await sweeper.sweep_once(now=NOW + ttl - timedelta(microseconds=1)) == 0
    assert await sweeper.sweep_once(now=NOW + ttl) == 1
    assert await s.phase("o1") == "EXPIRED"
    assert await invariant_violations(engine) == []


async def test_two_sweepers_at_once_expire_each_hold_exactly_once(
    engine, settings, database_url
) -> None:
    s = Scenario(engine, settings)
    variants = [f"v{i}" for i in range(6)]
    await s.restock(*((v, 1000) for v in variants))
    orders = 200
    lines_total = 0
    batch = []
    for n in range(orders):
        lines = {variants[n % 6]: 1 + n % 3}
        if n % 2:
            lines[variants[(n + 3) % 6]] = 2
        lines_total += len(lines)
        batch.append(checkout(f"o{n:03d}", lines, expires_at=NOW - timedelta(seconds=n)))
    await s.deliver(*batch)
    assert await s.scalar("SELECT count(*) FROM orders WHERE phase = 'RESERVED'") == orders

    small = settings.model_copy(update={"sweep_batch_size": 15})
    engines = [create_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        sweepers = [HoldSweeper(e, small) for e in engines]
        counts = await asyncio.gather(*(sw.sweep_once(now=NOW) for sw in sweepers))
    finally:
        for e in engines:
            await e.dispose()

    assert sum(counts) == orders
    assert await s.scalar("SELECT count(*) FROM orders WHERE phase = 'EXPIRED'") == orders
    assert await s.scalar("SELECT count(*) FROM audit_log WHERE change_type = 'EXPIRE'") == (
        lines_total
    )
    assert await s.scalar("SELECT coalesce(sum(reserved), 0) FROM variants") == 0
    assert await s.scalar("SELECT sum(on_hand) FROM variants") == 6000
    expired = [r for r in await s.reservations() if r["status"] == "EXPIRED"]
    assert len(expired) == orders
    assert len({r["order_id"] for r in expired}) == orders
    for v in variants:
        changes = await s.changes(v)
        assert [c["version"] for c in changes] == list(range(1, len(changes) + 1))
    assert await invariant_violations(engine) == []


async def test_payment_after_expiry_takes_the_stock_again(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.deliver(checkout("o1", {"v1": 4}, expires_at=NOW))
    assert await HoldSweeper(engine, settings).sweep_once(now=NOW) == 1
    assert await s.stock("v1") == (10, 0)
    await s.deliver(paid("o1"))
    assert await s.phase("o1") == "CONFIRMED"
    assert await s.stock("v1") == (6, 0)
    assert await s.statuses("o1") == ["RESERVED", "EXPIRED", "CONFIRMED"]
    sale = (await s.changes("v1"))[-1]
    assert (sale["change_type"], sale["delta_on_hand"], sale["delta_reserved"]) == ("SALE", -4, 0)
    # The sale is not undone by another sweep.
    assert await HoldSweeper(engine, settings).sweep_once(now=NOW + timedelta(days=1)) == 0
    assert await s.stock("v1") == (6, 0)
    assert await invariant_violations(engine) == []


async def test_sweeper_racing_payments_never_loses_or_doubles_a_sale(
    engine, settings, database_url
) -> None:
    """Payments and the sweep at once: each order ends CONFIRMED, its stock sold once."""
    s = Scenario(engine, settings)
    await s.restock(("v1", 500), ("v2", 500))
    orders = [f"o{n:02d}" for n in range(60)]
    await s.deliver(
        *(checkout(o, {"v1": 2, "v2": 1}, expires_at=NOW) for o in orders)
    )
    small = settings.model_copy(update={"sweep_batch_size": 7})
    engines = [create_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        consumer = BatchConsumer(engines[0], settings)
        sweeper = HoldSweeper(engines[1], small)

        async def pay() -> None:
            for start in range(0, len(orders), 6):
                await consumer.handle([s.record(paid(o)) for o in orders[start:start + 6]])

        await asyncio.gather(pay(), sweeper.sweep_once(now=NOW))
    finally:
        for e in engines:
            await e.dispose()
    assert await s.scalar("SELECT count(*) FROM orders WHERE phase = 'CONFIRMED'") == len(orders)
    assert await s.stock("v1") == (500 - 2 * len(orders), 0)
    assert await s.stock("v2") == (500 - len(orders), 0)
    for o in orders:
        assert await s.statuses(o) in (
            ["RESERVED", "CONFIRMED"], ["RESERVED", "EXPIRED", "CONFIRMED"]
        ), o
    assert await invariant_violations(engine) == []


async def test_an_order_that_cannot_expire_does_not_hold_back_the_others(
    engine, settings
) -> None:
    from sqlalchemy import text

    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    soon = datetime.now(UTC) + timedelta(minutes=1)
    await s.deliver(
        s.record(checkout("o-broken", {"v1": 3}, expires_at=soon)),
        s.record(checkout("o-fine", {"v2": 2}, expires_at=soon)),
    )
    # A hand-made "fix" breaks v1's books: expiring o-broken would make reserved < 0.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE variants SET reserved = 0 WHERE variant_id = 'v1'"))

    expired = await HoldSweeper(engine, settings).sweep_once(now=soon + timedelta(seconds=1))

    assert expired == 1
    assert await s.phase("o-fine") == "EXPIRED"
    assert await s.phase("o-broken") == "RESERVED"
    assert await s.stock("v2") == (10, 0)
