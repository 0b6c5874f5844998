"""Two workers (separate engines, separate connections) on one database, at once.

A flash sale: one hot variant with little stock, wanted by far more orders than it
can serve, plus a few plentiful variants on multi-line orders whose lines come in
varied order (the lock-order deadlock bait). No oversell, no unit left unsold while
demand remains, nothing escapes the consumers, and the invariants hold.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from service.adapters.database import create_engine
from service.application.consume import BatchConsumer
from tests.support.invariants import invariant_violations
from tests.support.records import FakeRecord, checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

HOT_STOCK = 37
PLENTY = 100_000


def _batches(records: Sequence[FakeRecord], rng: random.Random) -> list[list[FakeRecord]]:
    out: list[list[FakeRecord]] = []
    index = 0
    while index < len(records):
        size = rng.randint(1, 9)
        out.append(list(records[index:index + size]))
        index += size
    return out


async def _run(consumer: BatchConsumer, batches: list[list[FakeRecord]]) -> int:
    applied = 0
    for batch in batches:
        report = await consumer.handle(batch)
        assert report.dead_lettered == 0, "a valid event must never be dead-lettered"
        applied += report.applied
        await asyncio.sleep(0)
    return applied


async def _flash_sale(s: Scenario, database_url: str, tag: str, seed: int) -> None:
    rng = random.Random(seed)
    hot = f"{tag}-hot"
    others = [f"{tag}-{name}" for name in ("a", "b", "c", "d")]
    await s.restock((hot, HOT_STOCK), *((v, PLENTY) for v in others))

    orders: dict[str, dict[str, int]] = {}
    for n in range(150):
        order_id = f"{tag}-o{n:03d}"
        lines: dict[str, int] = {}
        wants_hot = n % 10 != 0  # every tenth order wants only plentiful variants
        names = rng.sample(others, rng.randint(0 if wants_hot else 1, 3))
        if wants_hot:
            names.insert(rng.randint(0, len(names)), hot)
        for name in names:
            lines[name] = 1 if name == hot else rng.randint(1, 3)
        orders[order_id] = lines
    paying = {o for o in orders if rng.random() < 0.5}

    events: list[dict[str, Any]] = [checkout(o, lines) for o, lines in orders.items()]
    events += [paid(o) for o in paying]
    rng.shuffle(events)
    # Each worker gets half the events: an order's checkout and payment may go to
    # different workers, so both touch the same orders and variants at once.
    records = [s.record(e) for e in events]
    halves = records[::2], records[1::2]

    engines = [create_engine(database_url, pool_size=4) for _ in range(2)]
    try:
        consumers = [BatchConsumer(e, s.settings) for e in engines]
        applied = await asyncio.gather(
            *(_run(c, _batches(h, rng)) for c, h in zip(consumers, halves, strict=True))
        )
    finally:
        for e in engines:
            await e.dispose()
    assert sum(applied) == len(events)

    every_phase = await s.phases()
    phases = {o: every_phase[o] for o in orders}
    first_status = {}
    for r in await s.reservations():
        first_status.setdefault(r["order_id"], r)
    hot_demand = sum(1 for lines in orders.values() if hot in lines)
    holding = [o for o, p in phases.items() if p in ("RESERVED", "CONFIRMED")]
    hot_taken = sum(orders[o].get(hot, 0) for o in holding)
    assert hot_demand > HOT_STOCK
    assert hot_taken <= HOT_STOCK, "oversold"
    assert hot_taken == min(HOT_STOCK, hot_demand), "units left unsold while demand remained"

    on_hand, reserved = await s.stock(hot) or (None, None)
    sold = sum(orders[o].get(hot, 0) for o in holding if phases[o] == "CONFIRMED")
    assert (on_hand, reserved) == (HOT_STOCK - sold, hot_taken - sold)
    for order_id, phase in phases.items():
        lines = orders[order_id]
        if hot not in lines:
            expected = "CONFIRMED" if order_id in paying else "RESERVED"
            assert phase == expected, order_id
        elif phase in ("REJECTED", "CONFIRM_FAILED"):
            rejected = first_status[order_id]
            assert [x["variant_id"] for x in rejected["shortages"]] == [hot], order_id
        else:
            expected = "CONFIRMED" if order_id in paying else "RESERVED"
            assert phase == expected, order_id
    for variant_id in (hot, *others):
        versions = [c["version"] for c in await s.changes(variant_id)]
        assert versions == list(range(1, len(versions) + 1)), variant_id


async def test_two_workers_at_once_never_oversell_a_hot_variant(
    engine, settings, database_url
) -> None:
    s = Scenario(engine, settings)
    for round_number in range(2):
        await _flash_sale(s, database_url, f"r{round_number}", seed=1000 + round_number)
        assert await invariant_violations(engine) == []


async def test_two_workers_given_the_same_events_apply_each_once(
    engine, settings, database_url
) -> None:
    """A rebalance can hand the same records to two workers: the claim keeps them once."""
    s = Scenario(engine, settings)
    rng = random.Random(7)
    variants = ["a", "b", "c"]
    await s.restock(*((v, 1000) for v in variants))
    orders = {
        f"o{n:02d}": {v: rng.randint(1, 4) for v in rng.sample(variants, rng.randint(1, 3))}
        for n in range(60)
    }
    events = [checkout(o, lines) for o, lines in orders.items()]
    events += [paid(o) for o in list(orders)[::2]]
    rng.shuffle(events)
    other_order = events[:]
    rng.shuffle(other_order)

    engines = [create_engine(database_url, pool_size=4) for _ in range(2)]
    try:
        consumers = [BatchConsumer(e, settings) for e in engines]
        applied = await asyncio.gather(
            _run(consumers[0], _batches([s.record(e) for e in events], rng)),
            _run(consumers[1], _batches([s.record(e) for e in other_order], rng)),
        )
    finally:
        for e in engines:
            await e.dispose()
    assert sum(applied) == len(events)
    for v in variants:
        sold = sum(lines.get(v, 0) for o, lines in orders.items() if int(o[1:]) % 2 == 0)
        held = sum(lines.get(v, 0) for o, lines in orders.items() if int(o[1:]) % 2 == 1)
        assert await s.stock(v) == (1000 - sold, held), v
    reservations = await s.reservations()
    assert len(reservations) == len(orders) + len(orders) // 2
    assert await invariant_violations(engine) == []


async def test_events_of_the_same_orders_on_two_consumers_never_deadlock(
    engine, settings, database_url
) -> None:
    """Checkouts and payments travel on different topics, so two workers often hold
    events of the same order at once; locks in key order mean they only ever wait."""
    import random

    from sqlalchemy import text

    from service.adapters.database import create_engine
    from service.application.admin import StockAdmin
    from service.application.consume import BatchConsumer
    from tests.support.invariants import invariant_violations
    from tests.support.records import checkout, paid, record_of

    await StockAdmin(engine, settings).restock("hot", 10_000, product_id="p")
    order_ids = [f"o{i:04d}" for i in range(600)]
    rng = random.Random(7)
    checkouts = [record_of(settings, checkout(o, {"hot": 1})) for o in order_ids]
    payments = [record_of(settings, paid(o)) for o in order_ids]
    rng.shuffle(checkouts)
    rng.shuffle(payments)
    engines = [create_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        one, two = (BatchConsumer(e, settings) for e in engines)

        async def feed(consumer: BatchConsumer, records: list) -> None:
            for start in range(0, len(records), 50):
                await consumer.handle(records[start : start + 50])

        await asyncio.gather(feed(one, checkouts), feed(two, payments))
    finally:
        for e in engines:
            await e.dispose()

    async with engine.connect() as conn:
        deadlocks = (
            await conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
        ).scalar()
        phases = (
            await conn.execute(text("SELECT phase, count(*) FROM orders GROUP BY phase"))
        ).all()
    assert deadlocks == 0
    assert dict(phases) == {"CONFIRMED": 600}
    assert await invariant_violations(engine) == []
