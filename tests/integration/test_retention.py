"""Retention (`service/application/retention.py`) on the real database.

Time passes by moving rows into the past (their `processed_at`, `dead_lettered_at`,
`updated_at`, `published_at`): the prune takes its cut-off from the database's clock,
so nothing here fakes a clock. Expectations are read back with plain SQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.tables import FINISHED_PHASES
from service.application.retention import Pruner, prune
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.records import cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)


# ------------------------------------------------------------------ helpers


async def age_events(s: Scenario, age: timedelta, *event_ids: str) -> None:
    """Make these consumed events (all of them, if none named) `age` old."""
    await s.execute(
        "UPDATE processed_events SET processed_at = now() - CAST(:age AS interval)"
        + (" WHERE event_id = ANY(CAST(:ids AS text[]))" if event_ids else ""),
        age=age,
        ids=list(event_ids),
    )


async def age_orders(s: Scenario, age: timedelta, *order_ids: str) -> None:
    await s.execute(
        "UPDATE orders SET updated_at = now() - CAST(:age AS interval) "
        "WHERE order_id = ANY(CAST(:ids AS text[]))",
        age=age,
        ids=list(order_ids),
    )


async def add_processed_events(s: Scenario, age: timedelta, count: int, prefix: str) -> None:
    await s.execute(
        "INSERT INTO processed_events (source, event_id, processed_at) "
        "SELECT 'seed', :prefix || n, now() - CAST(:age AS interval) "
        "FROM generate_series(1, :count) AS n",
        prefix=prefix,
        age=age,
        count=count,
    )


async def add_dead_letters(s: Scenario, age: timedelta, count: int, topic: str) -> None:
    await s.execute(
        'INSERT INTO dead_letters (topic, partition, "offset", record_timestamp, reason, '
        "dead_lettered_at) SELECT :topic, 0, n, 0, 'not JSON', now() - CAST(:age AS interval) "
        "FROM generate_series(1, :count) AS n",
        topic=topic,
        age=age,
        count=count,
    )


async def ids(s: Scenario, sql: str) -> set[str]:
    async with s.engine.connect() as conn:
        return {row[0] for row in await conn.execute(text(sql))}


class StatementLog:
    """Every statement the engine sends and every commit, as PostgreSQL receives them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        self.commits = 0
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._on_statement)
        event.listen(self._engine, "commit", self._on_commit)

    def _on_statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    def _on_commit(self, conn: Any) -> None:
        self.commits += 1

    def count(self, prefix: str) -> int:
        return sum(1 for statement in self.statements if statement.startswith(prefix))

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on_statement)
        event.remove(self._engine, "commit", self._on_commit)


async def orders_in_every_phase(s: Scenario, tag: str) -> dict[str, str]:
    """One order per phase (RESERVED and PENDING included), each through real events:
    phase -> order id."""
    o = {phase: f"{tag}-{phase.lower()}" for phase in (
        "RESERVED", "PENDING", "CONFIRMED", "RELEASED", "EXPIRED", "RETURNED", "REJECTED",
        "CONFIRM_FAILED",
    )}
    await s.deliver_each(
        checkout(o["RESERVED"], {"a": 1}),
        paid(o["PENDING"]),
        checkout(o["CONFIRMED"], {"a": 1, "b": 1}),
        paid(o["CONFIRMED"]),
        checkout(o["RELEASED"], {"a": 1}),
        payment_failed(o["RELEASED"]),
        # A checkout whose hold is already over is EXPIRED at once (CONTRACT, Staleness).
        checkout(o["EXPIRED"], {"a": 1}, expires_at=datetime.now(UTC) - timedelta(seconds=1)),
        checkout(o["RETURNED"], {"a": 1}),
        paid(o["RETURNED"]),
        cancelled(o["RETURNED"]),
        checkout(o["REJECTED"], {"a": 1_000}),
        checkout(o["CONFIRM_FAILED"], {"b": 1_000}),
        paid(o["CONFIRM_FAILED"]),
    )
    assert (await s.phases()).items() >= {(order_id, phase) for phase, order_id in o.items()}
    return o


# ------------------------------------------------------------------ what is deleted


async def test_prune_deletes_what_is_older_than_each_retention_and_nothing_else(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 100), ("b", 100))
    old = await orders_in_every_phase(s, "old")
    recent = await orders_in_every_phase(s, "recent")
    confirmed_month_old = (await orders_in_every_phase(s, "month"))["CONFIRMED"]
    # Finished orders of last month go (30 days); a sale of last month stays (365 days)
    # and one of last year goes; RESERVED and PENDING orders stay however old.
    await age_orders(s, 31 * DAY, *old.values(), confirmed_month_old)
    await age_orders(s, 366 * DAY, old["CONFIRMED"], old["RESERVED"], old["PENDING"])
    await add_processed_events(s, 9 * DAY, 5, "nine-days-")
    await add_processed_events(s, 7 * DAY, 5, "seven-days-")
    await add_dead_letters(s, 31 * DAY, 3, "month-old")
    await add_dead_letters(s, 29 * DAY, 2, "recent")
    # The outbox: published rows after 24 hours; an unpublished row never.
    first, second, third, *_ = [row.id for row in await s.outbox()]
    await s.execute(
        "UPDATE outbox SET created_at = now() - interval '30 hours', "
        "published_at = now() - interval '25 hours' WHERE id IN (:a, :b)",
        a=first, b=second,
    )
    await s.execute(
        "UPDATE outbox SET created_at = now() - interval '30 days' WHERE id = :c", c=third
    )
    await s.execute(
        "UPDATE outbox SET published_at = now() WHERE published_at IS NULL AND id > :c", c=third
    )
    outbox_before = await s.outbox_count()
    audit_before = len(await s.audit())
    lines_before = int(await s.scalar("SELECT count(*) FROM order_lines"))
    events_before = int(await s.scalar("SELECT count(*) FROM processed_events"))
    orders_before = set(await s.phases())

    report = await prune(engine, settings)

    pruned_orders = {old[p] for p in (
        "CONFIRMED", "RELEASED", "EXPIRED", "RETURNED", "REJECTED", "CONFIRM_FAILED"
    )}
    assert set(await s.phases()) == orders_before - pruned_orders
    assert {*recent.values(), confirmed_month_old, old["RESERVED"], old["PENDING"]} <= (
        orders_before - pruned_orders
    )
    for order_id in pruned_orders:
        assert await s.order_lines(order_id) == {}
    # Nine-day-old event ids go, seven-day-old ones stay (8 days).
    left = await ids(s, "SELECT event_id FROM processed_events WHERE source = 'seed'")
    assert left == {f"seven-days-{n}" for n in range(1, 6)}
    assert await ids(s, "SELECT topic FROM dead_letters") == {"recent"}
    kept_outbox = await ids(s, "SELECT id::text FROM outbox")
    assert str(first) not in kept_outbox and str(second) not in kept_outbox
    assert str(third) in kept_outbox  # never published: kept, however old
    # The audit log is never pruned; the stock it explains is still consistent.
    assert len(await s.audit()) == audit_before
    assert await invariant_violations(engine) == []

    tables = report.as_json()["tables"]
    assert tables["processed_events"]["deleted"] == 5
    assert events_before - 5 == int(await s.scalar("SELECT count(*) FROM processed_events"))
    assert tables["dead_letters"]["deleted"] == 3
    assert tables["orders"]["deleted"] == 6
    assert {phase: part["deleted"] for phase, part in tables["orders"]["phases"].items()} == {
        "REJECTED": 1, "CONFIRMED": 1, "RELEASED": 1, "EXPIRED": 1, "RETURNED": 1,
        "CONFIRM_FAILED": 1,
    }
    assert tables["orders"]["phases"]["CONFIRMED"]["retentionDays"] == 365
    lines_after = int(await s.scalar("SELECT count(*) FROM order_lines"))
    assert tables["order_lines"]["deleted"] == lines_before - lines_after == 7
    assert tables["outbox"]["deleted"] == outbox_before - await s.outbox_count() == 2
    assert report.deleted == 5 + 3 + 6 + 7 + 2

    # Nothing left to do: a second prune deletes nothing.
    again = await prune(engine, settings)
    assert again.deleted == 0


async def test_a_dry_run_counts_what_a_prune_deletes_and_deletes_nothing(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 100), ("b", 100))
    old = await orders_in_every_phase(s, "old")
    await age_orders(s, 400 * DAY, *old.values())
    await add_processed_events(s, 9 * DAY, 4, "old-")
    await add_dead_letters(s, 40 * DAY, 2, "old")
    await s.execute("UPDATE outbox SET published_at = now() - interval '2 days'")
    counts = "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_lines) " \
        "+ (SELECT count(*) FROM processed_events) + (SELECT count(*) FROM dead_letters) " \
        "+ (SELECT count(*) FROM outbox)"
    before = await s.scalar(counts)

    dry = await prune(engine, settings, dry_run=True)
    assert await s.scalar(counts) == before
    assert dry.dry_run and dry.batches == 0
    real = await prune(engine, settings)
    assert before - await s.scalar(counts) == real.deleted == dry.deleted > 0
    assert {name: t["deleted"] for name, t in dry.as_json()["tables"].items()} == {
        name: t["deleted"] for name, t in real.as_json()["tables"].items()
    }


async def test_a_retention_of_zero_keeps_rows_for_ever(engine, settings) -> None:
    s = Scenario(engine, settings)
    await add_processed_events(s, 3650 * DAY, 3, "ancient-")
    await add_dead_letters(s, 3650 * DAY, 3, "ancient")
    keep = settings.model_copy(
        update={"retention_processed_events_days": 0, "retention_dead_letters_days": 0}
    )
    report = await prune(engine, keep)
    assert report.deleted == 0
    assert report.as_json()["tables"]["processed_events"]["retentionDays"] is None
    assert await s.scalar("SELECT count(*) FROM processed_events") == 3
    assert await s.scalar("SELECT count(*) FROM dead_letters") == 3


# ------------------------------------------------------------------ how it deletes


async def test_prune_deletes_in_bounded_batches_each_its_own_transaction(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 100))
    await add_processed_events(s, 9 * DAY, 7, "old-")
    await add_dead_letters(s, 31 * DAY, 4, "old")
    orders = [f"o{n}" for n in range(5)]
    await s.deliver_each(*[e for o in orders for e in (checkout(o, {"a": 1}), cancelled(o))])
    await age_orders(s, 31 * DAY, *orders)
    log = StatementLog(engine)
    try:
        report = await prune(engine, settings, batch_size=2)
    finally:
        log.close()

    # 7 rows by 2: 2, 2, 2 and the last 1, which shows there is no more.
    assert log.count("WITH gone AS ( DELETE FROM processed_events") == 4
    # 4 rows by 2: 2, 2, then an empty batch to find the end.
    assert log.count("WITH gone AS ( DELETE FROM dead_letters") == 3
    # 5 RELEASED orders: 2, 2, 1; each batch locks its orders, then deletes lines and orders.
    assert log.count("SELECT order_id, updated_at FROM orders WHERE phase = 'RELEASED'") == 3
    assert log.count("DELETE FROM orders") == 3
    tables = report.as_json()["tables"]
    assert (tables["processed_events"]["batches"], tables["processed_events"]["deleted"]) == (4, 7)
    assert (tables["dead_letters"]["batches"], tables["dead_letters"]["deleted"]) == (3, 4)
    assert tables["orders"]["phases"]["RELEASED"]["deleted"] == 5
    # Every batch committed on its own: no transaction spans two batches.
    assert log.commits >= report.batches >= 4 + 3 + 3
    assert await s.scalar("SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize("coefficient", [0.0, 1.0, 3.0])
async def test_prune_rests_after_every_batch_in_proportion_to_its_time(
    engine, settings, coefficient
) -> None:
    """A prune of a day's rows must not take the hot path's share of the database for
    minutes at a time: after each batch it rests `retention_sleep_coefficient` times
    as long as the batch took (0: none)."""
    s = Scenario(engine, settings)
    await add_processed_events(s, 9 * DAY, 5, "old-")
    rests: list[float] = []

    async def rest(seconds: float) -> None:
        rests.append(seconds)

    paced = settings.model_copy(update={"retention_sleep_coefficient": coefficient})
    pruner = Pruner(engine, paced, batch_size=2, rest=rest)
    report = await pruner.run()

    assert report.tables["processed_events"].deleted == 5
    # One rest per transaction (processed events 2, 2, 1; the other tables one empty
    # batch each, every finished phase of the orders one).
    assert len(rests) == report.batches == 3 + 1 + len(FINISHED_PHASES) + 1
    if coefficient == 0:
        assert set(rests) == {0.0}
    else:
        assert all(r > 0 for r in rests)
    assert pruner.pause_after(0.02) == pytest.approx(0.02 * coefficient)


async def test_an_order_a_worker_holds_is_skipped_not_waited_for(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 100))
    orders = ["busy", "idle-1", "idle-2"]
    await s.deliver_each(*[e for o in orders for e in (checkout(o, {"a": 1}), cancelled(o))])
    await age_orders(s, 31 * DAY, *orders)
    async with engine.connect() as worker:
        # A worker's batch holds the order's row lock (as lock_orders does).
        await worker.execute(text("SELECT 1 FROM orders WHERE order_id = 'busy' FOR UPDATE"))
        report = await asyncio.wait_for(prune(engine, settings, batch_size=1), 10)
        await worker.rollback()
    assert report.as_json()["tables"]["orders"]["deleted"] == 2
    assert set(await s.phases()) == {"busy"}
    # The next prune finds it free.
    await prune(engine, settings)
    assert await s.phases() == {}


# ------------------------------------------------------------------ redeliveries


async def test_an_event_redelivered_inside_the_retention_is_still_a_no_op(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 10))
    c, p = checkout("o1", {"a": 2}), paid("o1")
    await s.deliver_each(c, p)
    # A week later (Kafka's default retention): still within the 8 days of event ids.
    await age_events(s, 7 * DAY)
    await prune(engine, settings)
    assert await ids(s, "SELECT event_id FROM processed_events") == {c["id"], p["id"]}
    outbox = await s.outbox_count()

    report = await s.deliver(c, p)
    assert (report.applied, report.duplicates) == (0, 2)
    assert await s.stock("a") == (8, 0)
    assert await s.outbox_count() == outbox
    assert await ids(s, "SELECT event_id FROM processed_events") == {c["id"], p["id"]}


async def test_an_event_redelivered_after_the_retention_is_applied_again_and_the_state_table_absorbs_it(  # noqa: E501
    engine, settings
) -> None:
    """Its id is forgotten, so the event is applied a second time. For an order that
    still exists, the state table makes that harmless to stock: a checkout of a known
    order and a payment of a sold one change nothing. One answer is repeated: a payment
    of a RETURNED order is answered CONFIRM_FAILED again (the payment service's cue to
    refund, which it already did once)."""
    s = Scenario(engine, settings)
    await s.restock(("a", 10))
    sold = [checkout("sold", {"a": 2}), paid("sold")]
    returned = [checkout("returned", {"a": 1}), paid("returned"), cancelled("returned")]
    await s.deliver_each(*sold, *returned)
    await age_events(s, 9 * DAY)
    await prune(engine, settings)
    assert await s.scalar("SELECT count(*) FROM processed_events") == 0
    assert await s.phases() == {"sold": "CONFIRMED", "returned": "RETURNED"}
    changes = await s.changes("a")
    statuses = await s.statuses("returned")

    report = await s.deliver(*sold, *returned)
    assert (report.applied, report.duplicates) == (5, 0)  # nothing told them apart
    assert await s.phases() == {"sold": "CONFIRMED", "returned": "RETURNED"}
    assert await s.stock("a") == (8, 0)
    assert await s.changes("a") == changes  # no stock moved
    assert await s.statuses("sold") == ["RESERVED", "CONFIRMED"]
    assert await s.statuses("returned") == [*statuses, "CONFIRM_FAILED"]
    assert await invariant_violations(engine) == []
    # Claimed again: a further redelivery is a duplicate once more.
    assert (await s.deliver(*sold)).duplicates == 2


async def test_an_event_redelivered_after_its_order_was_pruned_too_sells_the_stock_twice(
    engine, settings
) -> None:
    """Why event ids must be kept longer than Kafka keeps the events: once the order is
    pruned as well, nothing remembers it. The redelivered checkout is stale (its hold
    ended long ago), so it holds nothing and answers EXPIRED; the redelivered payment
    then takes the stock of an EXPIRED order, as a late payment does: the units are
    sold a second time. With the defaults this cannot happen: Kafka drops an event
    after 7 days, its id is kept 8, and a sale 365."""
    s = Scenario(engine, settings)
    await s.restock(("a", 10))
    hold_ends = datetime.now(UTC) + timedelta(seconds=1.5)
    c, p = checkout("o1", {"a": 2}, expires_at=hold_ends), paid("o1")
    await s.deliver_each(c, p)
    assert await s.stock("a") == (8, 0)
    await age_events(s, 9 * DAY)
    await age_orders(s, 366 * DAY, "o1")
    report = await prune(engine, settings)
    assert report.as_json()["tables"]["orders"]["deleted"] == 1
    assert await s.phases() == {}
    await asyncio.sleep(max((hold_ends - datetime.now(UTC)).total_seconds(), 0) + 0.1)

    assert (await s.deliver(c)).applied == 1
    assert await s.phase("o1") == "EXPIRED"
    assert await s.stock("a") == (8, 0)  # a stale checkout holds nothing
    assert (await s.deliver(p)).applied == 1
    assert await s.phase("o1") == "CONFIRMED"
    assert await s.stock("a") == (6, 0)  # sold twice
    assert await s.change_types("a") == ["RESTOCK", "RESERVE", "SALE", "SALE"]
    assert [v for v in await invariant_violations(engine) if v.startswith("4:")] == [
        "4: order o1 (CONFIRMED) net sold 4 of a, expected 2"
    ]


async def test_prune_runs_beside_the_consumer(engine, settings) -> None:
    """Batches of events keep committing while a prune deletes in small batches."""
    s = Scenario(engine, settings)
    await s.restock(("a", 10_000))
    await add_processed_events(s, 9 * DAY, 3000, "old-")
    done = asyncio.Event()

    async def consume() -> Counter[str]:
        seen: Counter[str] = Counter()
        while not done.is_set():
            order = f"o-{uuid.uuid4().hex[:8]}"
            report = await s.deliver(checkout(order, {"a": 1}), cancelled(order))
            seen["applied"] += report.applied
        return seen

    consumer = asyncio.create_task(consume())
    report = await prune(engine, settings, batch_size=100)
    done.set()
    seen = await consumer
    assert report.as_json()["tables"]["processed_events"]["deleted"] == 3000
    assert seen["applied"] > 0
    assert await invariant_violations(engine) == []


def test_the_defaults_keep_event_ids_longer_than_kafka_keeps_events() -> None:
    kafka_default_retention_days = 7  # log.retention.hours=168
    defaults = Settings.model_fields
    processed = defaults["retention_processed_events_days"].default
    assert processed > kafka_default_retention_days
    for name in ("retention_orders_days", "retention_confirmed_orders_days"):
        assert defaults[name].default >= processed
