"""CONTRACT.md's reservation state table, cell by cell, through BatchConsumer on PostgreSQL.

Every cell is driven twice, each time with its own order and variants:
once with one batch per event (the state goes through the tables between events)
and once with all its events in one batch (the state stays in one transaction).
A hold expiry cannot be inside a batch: there the batch is cut around the sweep.
Each cell checks the order's phase, both variants' stock, the statuses published on
`stock.reservation` and the change types published on `stock.changed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.application.expiry import HoldSweeper
from tests.support.invariants import invariant_violations
from tests.support.records import cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
HOLD_UNTIL = NOW + timedelta(hours=1)
AFTER_HOLD = HOLD_UNTIL + timedelta(seconds=1)

#: Stock of the two variants every cell starts from.
A_STOCK, B_STOCK = 10, 20
#: The order's lines: 2 of A and 1 of B. "Cbig" asks for more A than there is.
A_QTY, B_QTY = 2, 1
A_BIG = 11

SWEEP = "S"


@dataclass(frozen=True)
class Cell:
    steps: str  # tokens separated by spaces; see _events_for
    phase: str
    a: tuple[int, int]  # (on_hand, reserved) of A at the end
    statuses: tuple[str, ...]  # everything published on stock.reservation for the order
    a_changes: tuple[str, ...]  # change types of A after its RESTOCK
    reason: str | None = None  # reason carried by the last status

    @property
    def b(self) -> tuple[int, int]:
        """B moves with A: half as many units, or not at all for the big order."""
        sold_a = A_STOCK - self.a[0]
        return B_STOCK - sold_a * B_QTY // A_QTY, self.a[1] * B_QTY // A_QTY


RES, CONF, REL, EXP, RET, REJ, CF = (
    "RESERVED", "CONFIRMED", "RELEASED", "EXPIRED", "RETURNED", "REJECTED", "CONFIRM_FAILED",
)
RESERVE, RELEASE, EXPIRE, SALE, RETURN = "RESERVE", "RELEASE", "EXPIRE", "SALE", "RETURN"
HELD = (A_STOCK, A_QTY)
SOLD = (A_STOCK - A_QTY, 0)
FREE = (A_STOCK, 0)

CELLS: dict[str, Cell] = {
    # ---- the order is unknown
    "unknown__checkout_reserves": Cell("C", RES, HELD, (RES,), (RESERVE,)),
    "unknown__checkout_short_is_rejected": Cell(
        "Cbig", REJ, FREE, (REJ,), (), "insufficient_stock"
    ),
    "unknown__payment_succeeded_remembered_confirms_at_checkout": Cell(
        "P C", CONF, SOLD, (RES, CONF), (RESERVE, SALE)
    ),
    "unknown__payment_succeeded_remembered_then_short_checkout_confirm_failed": Cell(
        "P Cbig", CF, FREE, (REJ, CF), (), "insufficient_stock"
    ),
    "unknown__payment_failed_remembered_checkout_holds_nothing": Cell(
        "F C", REL, FREE, (REL,), (), "payment_failed"
    ),
    "unknown__cancel_remembered_checkout_rejected": Cell(
        "X C", REJ, FREE, (REJ,), (), "order_cancelled"
    ),
    # Cancellation wins; the payment is still answered (CONFIRM_FAILED: refund it).
    "unknown__cancel_remembered_wins_over_remembered_success": Cell(
        "P X C", CF, FREE, (REJ, CF), (), "order_cancelled"
    ),
    # ---- RESERVED
    "reserved__checkout_again_is_no_op": Cell("C C2", RES, HELD, (RES,), (RESERVE,)),
    "reserved__payment_succeeded_confirms": Cell("C P", CONF, SOLD, (RES, CONF), (RESERVE, SALE)),
    "reserved__payment_failed_releases": Cell(
        "C F", REL, FREE, (RES, REL), (RESERVE, RELEASE), "payment_failed"
    ),
    "reserved__cancel_releases": Cell(
        "C X", REL, FREE, (RES, REL), (RESERVE, RELEASE), "order_cancelled"
    ),
    "reserved__hold_expiry_expires": Cell(
        "C S", EXP, FREE, (RES, EXP), (RESERVE, EXPIRE), "hold_expired"
    ),
    # ---- CONFIRMED
    "confirmed__checkout_again_is_no_op": Cell("C P C2", CONF, SOLD, (RES, CONF), (RESERVE, SALE)),
    "confirmed__payment_succeeded_again_is_no_op": Cell(
        "C P P2", CONF, SOLD, (RES, CONF), (RESERVE, SALE)
    ),
    "confirmed__payment_failed_is_no_op": Cell("C P F", CONF, SOLD, (RES, CONF), (RESERVE, SALE)),
    "confirmed__cancel_returns_the_stock": Cell(
        "C P X", RET, FREE, (RES, CONF, RET), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    "confirmed__hold_expiry_does_nothing": Cell(
        "C P S", CONF, SOLD, (RES, CONF), (RESERVE, SALE)
    ),
    # ---- RELEASED (by a payment failure)
    "released__checkout_again_is_no_op": Cell(
        "C F C2", REL, FREE, (RES, REL), (RESERVE, RELEASE), "payment_failed"
    ),
    "released__payment_succeeded_takes_the_stock_again": Cell(
        "C F P", CONF, SOLD, (RES, REL, CONF), (RESERVE, RELEASE, SALE)
    ),
    "released__payment_failed_again_is_no_op": Cell(
        "C F F2", REL, FREE, (RES, REL), (RESERVE, RELEASE), "payment_failed"
    ),
    "released__hold_expiry_does_nothing": Cell(
        "C F S", REL, FREE, (RES, REL), (RESERVE, RELEASE), "payment_failed"
    ),
    "released__cancel_is_no_op": Cell(
        "C F X", REL, FREE, (RES, REL), (RESERVE, RELEASE), "payment_failed"
    ),
    "released_then_cancelled__payment_succeeded_is_confirm_failed": Cell(
        "C F X P", CF, FREE, (RES, REL, CF), (RESERVE, RELEASE), "order_cancelled"
    ),
    # ---- RELEASED (by a cancellation): cancellation wins over a later payment
    "released_by_cancel__payment_succeeded_is_confirm_failed": Cell(
        "C X P", CF, FREE, (RES, REL, CF), (RESERVE, RELEASE), "order_cancelled"
    ),
    "released_by_cancel__hold_expiry_does_nothing": Cell(
        "C X S", REL, FREE, (RES, REL), (RESERVE, RELEASE), "order_cancelled"
    ),
    # ---- EXPIRED
    "expired__checkout_again_is_no_op": Cell(
        "C S C2", EXP, FREE, (RES, EXP), (RESERVE, EXPIRE), "hold_expired"
    ),
    "expired__payment_succeeded_takes_the_stock_again": Cell(
        "C S P", CONF, SOLD, (RES, EXP, CONF), (RESERVE, EXPIRE, SALE)
    ),
    "expired__payment_failed_is_no_op": Cell(
        "C S F", EXP, FREE, (RES, EXP), (RESERVE, EXPIRE), "hold_expired"
    ),
    "expired__cancel_is_no_op": Cell(
        "C S X", EXP, FREE, (RES, EXP), (RESERVE, EXPIRE), "hold_expired"
    ),
    "expired__hold_expiry_again_does_nothing": Cell(
        "C S S", EXP, FREE, (RES, EXP), (RESERVE, EXPIRE), "hold_expired"
    ),
    # ---- RETURNED
    "returned__checkout_again_is_no_op": Cell(
        "C P X C2", RET, FREE, (RES, CONF, RET), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    "returned__payment_succeeded_answers_confirm_failed_and_stays_returned": Cell(
        "C P X P2", RET, FREE, (RES, CONF, RET, CF), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    "returned__payment_failed_is_no_op": Cell(
        "C P X F", RET, FREE, (RES, CONF, RET), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    "returned__cancel_again_is_no_op": Cell(
        "C P X X2", RET, FREE, (RES, CONF, RET), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    "returned__hold_expiry_does_nothing": Cell(
        "C P X S", RET, FREE, (RES, CONF, RET), (RESERVE, SALE, RETURN), "order_cancelled"
    ),
    # ---- REJECTED
    "rejected__checkout_again_is_no_op": Cell(
        "Cbig C2", REJ, FREE, (REJ,), (), "insufficient_stock"
    ),
    "rejected__payment_succeeded_is_confirm_failed": Cell(
        "Cbig P", CF, FREE, (REJ, CF), (), "insufficient_stock"
    ),
    "rejected__payment_failed_is_no_op": Cell(
        "Cbig F", REJ, FREE, (REJ,), (), "insufficient_stock"
    ),
    "rejected__cancel_is_no_op": Cell("Cbig X", REJ, FREE, (REJ,), (), "insufficient_stock"),
    "rejected__hold_expiry_does_nothing": Cell(
        "Cbig S", REJ, FREE, (REJ,), (), "insufficient_stock"
    ),
}


def _events_for(token: str, order_id: str, a: str, b: str) -> dict[str, Any]:
    """One event per token; a token is one event id, so `C2` is a new checkout event."""
    if token in ("C", "C2"):
        return checkout(order_id, {a: A_QTY, b: B_QTY}, expires_at=HOLD_UNTIL)
    if token == "Cbig":
        return checkout(order_id, {a: A_BIG, b: B_QTY}, expires_at=HOLD_UNTIL)
    builder = {"P": paid, "P2": paid, "F": payment_failed, "F2": payment_failed,
               "X": cancelled, "X2": cancelled}[token]
    return builder(order_id)


async def _drive(s: Scenario, cell: Cell, mode: str, tag: str) -> tuple[str, str, str]:
    order_id, a, b = f"order-{tag}", f"A-{tag}", f"B-{tag}"
    await s.restock((a, A_STOCK), (b, B_STOCK))
    # Every token builds a new event (a new id): C2, P2, F2, X2 are second events of a kind.
    segments: list[list[dict[str, Any]]] = [[]]
    for token in cell.steps.split():
        if token == SWEEP:
            segments.append([])
        else:
            segments[-1].append(_events_for(token, order_id, a, b))
    sweeper = HoldSweeper(s.engine, s.settings)
    for index, segment in enumerate(segments):
        if index:
            await sweeper.sweep_once(now=AFTER_HOLD)
        if mode == "each":
            await s.deliver_each(*segment)
        elif segment:
            await s.deliver(*segment)
    return order_id, a, b


async def assert_changes_consistent(s: Scenario, variant_id: str) -> None:
    """stock.changed of a variant: versions 1..n, each applying its deltas to the last."""
    changes = await s.changes(variant_id)
    assert [c["version"] for c in changes] == list(range(1, len(changes) + 1))
    on_hand = reserved = 0
    for c in changes:
        on_hand += c["delta_on_hand"]
        reserved += c["delta_reserved"]
        assert (c["on_hand"], c["reserved"], c["available"]) == (
            on_hand, reserved, on_hand - reserved
        ), c
    assert await s.stock(variant_id) == (on_hand, reserved)
    assert await s.version(variant_id) == len(changes)


COLUMNS = sorted({name.split("__")[0] for name in CELLS})


@pytest.mark.parametrize("column", COLUMNS)
async def test_state_table_column(engine, settings, column: str) -> None:
    """Every cell of one column (one database per column keeps the suite fast).

    A cell is checked as soon as it has run: a later cell's sweep may expire an
    earlier cell's hold, which is then no longer that cell's business.
    """
    s = Scenario(engine, settings)
    for name, cell in CELLS.items():
        if name.split("__")[0] != column:
            continue
        for mode in ("each", "one"):
            tag = f"{name}-{mode}"
            order_id, a, b = await _drive(s, cell, mode, tag)
            where = f"{name} ({mode} batch)"
            assert await s.phase(order_id) == cell.phase, where
            assert await s.stock(a) == cell.a, where
            assert await s.stock(b) == cell.b, where
            published = await s.reservations(order_id)
            assert tuple(r["status"] for r in published) == cell.statuses, where
            if cell.reason is not None:
                assert published[-1].get("reason") == cell.reason, where
            assert tuple(await s.change_types(a))[1:] == cell.a_changes, where
            for variant_id in (a, b):
                await assert_changes_consistent(s, variant_id)
    assert await invariant_violations(engine) == []


# ------------------------------------------------- what the cells publish, in detail


async def test_checkout_reserves_all_lines_and_publishes_reservation_with_lines(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    sent = checkout("o1", {"v1": 3, "v2": 4})
    report = await s.deliver(sent)
    assert report.applied == 1 and report.dead_lettered == 0
    assert (await s.stock("v1"), await s.stock("v2")) == ((10, 3), (10, 4))
    assert await s.phase("o1") == "RESERVED"
    assert await s.order_lines("o1") == {"v1": 3, "v2": 4}
    [row] = await s.outbox(settings.topic_stock_reservation)
    assert row.key == b"o1"
    assert row.event["type"] == "stock.reservation"
    assert row.event["source"] == settings.event_source
    assert row.event["specversion"] == "1.0"
    assert row.event["datacontenttype"] == "application/json"
    assert row.event["correlationid"] == "o1"
    assert row.data["status"] == "RESERVED"
    assert sorted(row.data["lines"], key=lambda line: line["variant_id"]) == [
        {"variant_id": "v1", "quantity": 3},
        {"variant_id": "v2", "quantity": 4},
    ]
    assert "shortages" not in row.data
    changed = [c for c in await s.outbox(settings.topic_stock_changed) if c.data["version"] == 2]
    assert {c.key for c in changed} == {b"v1", b"v2"}
    for c in changed:
        assert c.data["change_type"] == "RESERVE"
        assert c.data["delta_on_hand"] == 0
        assert c.data["reference"] == "o1"
        assert c.data["product_id"] == "p-" + c.data["variant_id"]
        assert c.event["correlationid"] == "o1"
    # The audit log names the event that caused each change.
    for variant_id in ("v1", "v2"):
        reserve = (await s.audit(variant_id))[-1]
        assert (reserve.change_type, reserve.reference) == ("RESERVE", "o1")
        assert (reserve.source_event_source, reserve.source_event_id) == ("test", sent["id"])
    assert await invariant_violations(engine) == []


async def test_checkout_short_on_some_lines_reserves_nothing_and_lists_every_shortage(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10), ("v3", 5))
    await s.deliver(checkout("o1", {"v1": 11, "v2": 1, "v3": 30}))
    assert await s.phase("o1") == "REJECTED"
    for variant_id, level in (("v1", 10), ("v2", 10), ("v3", 5)):
        assert await s.stock(variant_id) == (level, 0)
        assert await s.change_types(variant_id) == ["RESTOCK"]
    [rejected] = await s.reservations("o1")
    assert rejected["status"] == "REJECTED"
    assert rejected["reason"] == "insufficient_stock"
    assert sorted(rejected["shortages"], key=lambda x: x["variant_id"]) == [
        {"variant_id": "v1", "requested": 11, "available": 10},
        {"variant_id": "v3", "requested": 30, "available": 5},
    ]
    assert await invariant_violations(engine) == []


async def test_checkout_with_unknown_variant_is_rejected_unknown_variant(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.deliver(checkout("o1", {"v1": 1, "ghost": 2}))
    assert await s.phase("o1") == "REJECTED"
    assert await s.stock("v1") == (10, 0)
    assert await s.stock("ghost") is None, "a checkout must not create a variant"
    [rejected] = await s.reservations("o1")
    assert rejected["reason"] == "unknown_variant"
    assert rejected["shortages"] == [{"variant_id": "ghost", "requested": 2, "available": 0}]
    # A payment for it later: CONFIRM_FAILED, still unknown_variant.
    await s.deliver(paid("o1"))
    assert await s.phase("o1") == "CONFIRM_FAILED"
    assert (await s.reservations("o1"))[-1]["reason"] == "unknown_variant"
    assert await invariant_violations(engine) == []


async def test_checkout_takes_stock_first_come_first_served_within_one_batch(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 5))
    await s.deliver(checkout("o1", {"v1": 3}), checkout("o2", {"v1": 3}), checkout("o3", {"v1": 2}))
    assert [await s.phase(o) for o in ("o1", "o2", "o3")] == ["RESERVED", "REJECTED", "RESERVED"]
    assert (await s.reservations("o2"))[0]["shortages"] == [
        {"variant_id": "v1", "requested": 3, "available": 2}
    ]
    assert await s.stock("v1") == (5, 5)
    assert await invariant_violations(engine) == []


@pytest.mark.parametrize("split", [False, True], ids=["one_batch", "batch_per_event"])
async def test_late_payment_after_expiry_is_confirm_failed_when_the_stock_is_gone(
    engine, settings, split: bool
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10), ("v2", 10))
    await s.deliver(checkout("o1", {"v1": 8, "v2": 2}, expires_at=HOLD_UNTIL))
    assert await HoldSweeper(engine, settings).sweep_once(now=AFTER_HOLD) == 1
    # Another order takes v1; v2 alone would still be there: all or nothing, so nothing.
    rest = [checkout("o2", {"v1": 5}), paid("o1")]
    if split:
        await s.deliver_each(*rest)
    else:
        await s.deliver(*rest)
    assert await s.phase("o1") == "CONFIRM_FAILED"
    assert await s.phase("o2") == "RESERVED"
    assert await s.stock("v1") == (10, 5)
    assert await s.stock("v2") == (10, 0)
    failed = (await s.reservations("o1"))[-1]
    assert failed["status"] == "CONFIRM_FAILED"
    assert failed["reason"] == "insufficient_stock"
    assert failed["shortages"] == [{"variant_id": "v1", "requested": 8, "available": 5}]
    assert await s.change_types("v1") == ["RESTOCK", "RESERVE", "EXPIRE", "RESERVE"]
    assert await s.change_types("v2") == ["RESTOCK", "RESERVE", "EXPIRE"]
    assert await invariant_violations(engine) == []


async def test_late_payment_after_release_takes_the_stock_again_without_touching_reserved(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.deliver_each(checkout("o1", {"v1": 4}), payment_failed("o1"), checkout("o2", {"v1": 3}))
    await s.deliver(paid("o1"))
    assert await s.phase("o1") == "CONFIRMED"
    assert await s.stock("v1") == (6, 3)
    sale = (await s.changes("v1"))[-1]
    assert (sale["change_type"], sale["delta_on_hand"], sale["delta_reserved"]) == ("SALE", -4, 0)
    assert await invariant_violations(engine) == []


# ------------------------------------------------------------ versions and stock.low


async def test_stock_changed_version_grows_by_one_per_change_across_and_within_batches(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 50))
    # Five changes of v1 in one batch, then three more one batch each.
    await s.deliver(
        checkout("o1", {"v1": 1}), checkout("o2", {"v1": 2}), paid("o1"),
        cancelled("o2"), checkout("o3", {"v1": 3}),
    )
    await s.deliver_each(paid("o3"), cancelled("o3"), checkout("o4", {"v1": 4}))
    assert await s.change_types("v1") == [
        "RESTOCK", "RESERVE", "RESERVE", "SALE", "RELEASE", "RESERVE", "SALE", "RETURN", "RESERVE",
    ]
    await assert_changes_consistent(s, "v1")
    assert await s.stock("v1") == (49, 4)
    audit = await s.audit("v1")
    assert [row.version for row in audit] == list(range(1, 10))
    assert await invariant_violations(engine) == []


async def test_stock_low_is_edge_triggered_at_the_default_threshold_of_five(
    engine, settings
) -> None:
    assert settings.low_stock_threshold == 5
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.deliver(checkout("a", {"v1": 4}))  # available 6: above the threshold
    assert await s.lows("v1") == []
    await s.deliver(checkout("b", {"v1": 1}))  # 6 -> 5: crosses
    await s.deliver(checkout("c", {"v1": 1}))  # 5 -> 4: already low, no new alert
    lows = await s.lows("v1")
    assert lows == [
        {"variant_id": "v1", "product_id": "p-v1", "available": 5, "threshold": 5,
         "out_of_stock": False}
    ]
    [low_row] = await s.outbox(settings.topic_stock_low)
    assert low_row.key == b"v1" and low_row.event["type"] == "stock.low"
    await s.deliver(cancelled("b"), cancelled("c"))  # back to 6: above again, no alert
    assert len(await s.lows("v1")) == 1
    await s.deliver(checkout("d", {"v1": 6}))  # 6 -> 0: crosses again, out of stock
    lows = await s.lows("v1")
    assert len(lows) == 2
    assert (lows[1]["available"], lows[1]["out_of_stock"]) == (0, True)
    await s.deliver(paid("d"))  # a sale of held units leaves available at 0: no new alert
    assert len(await s.lows("v1")) == 2
    assert await invariant_violations(engine) == []


async def test_stock_low_uses_the_variant_threshold_when_set(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("v1", 10))
    await s.execute("UPDATE variants SET low_stock_threshold = 2 WHERE variant_id = 'v1'")
    await s.deliver(checkout("a", {"v1": 7}))  # available 3: above 2
    assert await s.lows("v1") == []
    await s.deliver(checkout("b", {"v1": 1}))  # 3 -> 2
    [low] = await s.lows("v1")
    assert (low["available"], low["threshold"]) == (2, 2)
    assert await invariant_violations(engine) == []
