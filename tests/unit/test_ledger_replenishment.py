"""The ledger's back-in-stock and reorder edges (CONTRACT.md, "Events added").

`stock.replenished`: `available` rises from 0 to above 0, for a variant that had run
out (not its first delivery). `stock.reorder`: `available` falls from above the
effective reorder point to at or below it, and again only after it rose above.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain.ledger import StockLedger
from service.domain.model import ReorderAlert, ReplenishedAlert, Variant

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FAR = T0 + timedelta(hours=1)


def ledger_at(now: datetime, *variants: Variant) -> StockLedger:
    return StockLedger(
        {v.variant_id: v for v in variants}, {}, default_low_stock_threshold=5, now=now
    )


def sell(ledger: StockLedger, order_id: str, variant_id: str, quantity: int) -> None:
    ledger.checkout(order_id, {variant_id: quantity}, FAR)
    ledger.payment_succeeded(order_id)


def test_a_variant_sold_out_and_restocked_twice_publishes_two_replenished() -> None:
    mug = Variant("mug", "p-mug", 3, 0, version=1)
    first = ledger_at(T0, mug)
    sell(first, "o1", "mug", 3)
    assert mug.available == 0 and mug.out_of_stock_since == T0
    assert first.replenished == []

    # Another transaction, ten minutes later: the same Variant row, as loaded again.
    second = ledger_at(T0 + timedelta(minutes=10), mug)
    second.restock("mug", 4)
    assert second.replenished == [ReplenishedAlert("mug", "p-mug", 4, 600.0)]
    assert mug.out_of_stock_since is None
    second.restock("mug", 1)  # already in stock: nothing more
    assert len(second.replenished) == 1

    third = ledger_at(T0 + timedelta(hours=2), mug)
    sell(third, "o2", "mug", 5)
    assert mug.out_of_stock_since == T0 + timedelta(hours=2)
    fourth = ledger_at(T0 + timedelta(hours=5), mug)
    fourth.restock("mug", 2)
    assert fourth.replenished == [ReplenishedAlert("mug", "p-mug", 2, 3 * 3600.0)]


def test_a_new_variants_first_delivery_is_not_back_in_stock() -> None:
    ledger = ledger_at(T0)
    ledger.restock("new", 5, product_id="p-new")  # created by the restock
    assert ledger.replenished == []
    existing_empty = Variant("empty", "p", 0, 0)  # created at 0 (an HTTP restock's row)
    ledger = ledger_at(T0, existing_empty)
    ledger.restock("empty", 5)
    assert ledger.replenished == []


def test_out_of_stock_by_reservation_and_back_when_the_hold_is_released() -> None:
    cap = Variant("cap", "p-cap", 2, 0, version=1)
    ledger = ledger_at(T0, cap)
    ledger.checkout("o1", {"cap": 2}, FAR)
    assert cap.available == 0 and cap.out_of_stock_since == T0
    ledger.payment_failed("o1")  # the hold goes back: available 2 again
    assert ledger.replenished == [ReplenishedAlert("cap", "p-cap", 2, 0.0)]


def test_sold_out_and_restocked_in_one_batch_publishes_once() -> None:
    pen = Variant("pen", "p-pen", 1, 0, version=1)
    ledger = ledger_at(T0, pen)
    sell(ledger, "o1", "pen", 1)
    ledger.restock("pen", 3)
    assert [r.available for r in ledger.replenished] == [3]


def test_crossing_the_reorder_point_publishes_one_reorder_until_stock_rises_above() -> None:
    tee = Variant("tee", "p-tee", 20, 0, version=1, reorder_point=10)
    ledger = ledger_at(T0, tee)
    sell(ledger, "o1", "tee", 5)  # 15: above
    assert ledger.reorders == []
    sell(ledger, "o2", "tee", 5)  # 10: at the point
    assert ledger.reorders == [ReorderAlert("tee", "p-tee", 10, 10)]
    sell(ledger, "o3", "tee", 4)  # 6: still below, no second one
    ledger.restock("tee", 4)  # 10: back to the point, not above it
    sell(ledger, "o4", "tee", 1)  # 9
    assert len(ledger.reorders) == 1
    ledger.restock("tee", 2)  # 11: above again
    sell(ledger, "o5", "tee", 1)  # 10: crosses again
    assert ledger.reorders[1:] == [ReorderAlert("tee", "p-tee", 10, 10)]


def test_a_reservation_crosses_the_point_too_and_a_single_change_may_skip_past_it() -> None:
    bag = Variant("bag", "p-bag", 12, 0, version=1, reorder_point=8)
    ledger = ledger_at(T0, bag)
    ledger.checkout("o1", {"bag": 12}, FAR)  # 12 -> 0: past the point at once
    assert ledger.reorders == [ReorderAlert("bag", "p-bag", 0, 8)]
    assert bag.out_of_stock_since == T0


def test_no_reorder_point_no_reorder_and_a_point_of_zero_alerts_at_zero() -> None:
    plain = Variant("plain", "p", 3, 0, version=1)
    zero = Variant("zero", "p", 3, 0, version=1, reorder_point=0)
    ledger = ledger_at(T0, plain, zero)
    sell(ledger, "o1", "plain", 3)
    sell(ledger, "o2", "zero", 2)
    assert ledger.reorders == []
    sell(ledger, "o3", "zero", 1)
    assert ledger.reorders == [ReorderAlert("zero", "p", 0, 0)]


def test_an_adjustment_crosses_like_any_change() -> None:
    box = Variant("box", "p-box", 30, 0, version=1, reorder_point=10)
    ledger = ledger_at(T0, box)
    ledger.adjust("box", 4, reason="damaged")
    assert ledger.reorders == [ReorderAlert("box", "p-box", 4, 10)]
    ledger.adjust("box", 0, reason="lost")
    assert box.out_of_stock_since == T0
    assert ledger.changes[-1].version == 3


def test_the_ledger_without_a_time_decides_at_now() -> None:
    ledger = StockLedger({}, {}, default_low_stock_threshold=5)
    assert abs((datetime.now(UTC) - ledger.now).total_seconds()) < 5


def test_a_restock_keeps_its_supplier_and_order_time_on_the_change() -> None:
    ordered = T0 - timedelta(days=4)
    ledger = ledger_at(T0, Variant("v", "p", 0, 0))
    change = ledger.restock("v", 5, supplier_id="acme", ordered_at=ordered)
    assert (change.supplier_id, change.ordered_at) == ("acme", ordered)
    sold = ledger.adjust("v", 4, reason="count")
    assert (sold.supplier_id, sold.ordered_at) == (None, None)
