"""The rules of synchronous requests (HTTP, CLI) on top of the pure `StockLedger`.

A request is all or nothing and names every part that failed; a reservation id is
idempotent. Each test builds a small ledger, brings reservations into the state it
needs through the ledger's own commands, and checks the answer, the order phases,
the stock changes and the stock levels. After every successful request the invariant
`0 <= reserved <= on_hand` is checked on every variant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from stock_schemas.events import ChangeType

from service.domain.errors import (
    CountBelowReserved,
    InsufficientStock,
    InvalidQuantity,
    ReservationClosed,
    ReservationMismatch,
    UnknownReservation,
    UnknownVariant,
)
from service.domain.ledger import StockLedger
from service.domain.model import EventRef, OrderPhase, Shortage, Variant
from service.domain.requests import (
    CountRequest,
    ReleaseRequest,
    ReservationRequest,
    RestockRequest,
    SaleConfirmation,
    adjust,
    confirm_sales,
    release,
    reserve,
    restock,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(minutes=15)
CAUSE = EventRef("stock-api", "request-1")
#: A second request, so the changes of each can be told apart.
LATER = EventRef("stock-api", "request-2")


# ----------------------------------------------------------------- helpers


def variant(variant_id: str, on_hand: int, reserved: int = 0) -> Variant:
    return Variant(variant_id, f"p-{variant_id}", on_hand, reserved)


def make_ledger(*variants: Variant) -> StockLedger:
    """A and B with 10 on hand each, unless other variants are given."""
    if not variants:
        variants = (variant("A", 10), variant("B", 10))
    return StockLedger(
        variants={v.variant_id: v for v in variants},
        orders={},
        default_low_stock_threshold=0,
    )


def levels(ledger: StockLedger) -> dict[str, tuple[int, int, int]]:
    """(on_hand, reserved, version) per variant."""
    return {vid: (v.on_hand, v.reserved, v.version) for vid, v in ledger.variants.items()}


def phase(ledger: StockLedger, order_id: str) -> OrderPhase:
    return ledger.orders[order_id].phase


def assert_invariant(ledger: StockLedger) -> None:
    for v in ledger.variants.values():
        assert 0 <= v.reserved <= v.on_hand, f"{v.variant_id}: {v}"


class Mark:
    """Where the ledger stood, so a test looks only at what one request did."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.changes = len(ledger.changes)
        self.outcomes = len(ledger.outcomes)
        self.levels = levels(ledger)

    def new_changes(self) -> list:
        return self.ledger.changes[self.changes :]

    def assert_stock_untouched(self) -> None:
        assert self.new_changes() == []
        assert levels(self.ledger) == self.levels


def hold(rid: str, lines: dict[str, int], expires_at: datetime = EXPIRES) -> ReservationRequest:
    return ReservationRequest(rid, dict(lines), expires_at)


def sell(rid: str, expected: dict[str, int | None] | None = None) -> SaleConfirmation:
    return SaleConfirmation(rid, dict(expected or {}))


def reserved(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    """Reservation `rid` holds `lines` (through the request rules themselves)."""
    reserve(ledger, [hold(rid, lines)], CAUSE)
    assert phase(ledger, rid) is OrderPhase.RESERVED
    return ledger


def confirmed(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    reserved(ledger, rid, lines)
    ledger.payment_succeeded(rid)
    assert phase(ledger, rid) is OrderPhase.CONFIRMED
    return ledger


def released(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    reserved(ledger, rid, lines)
    assert ledger.release(rid) is True
    assert phase(ledger, rid) is OrderPhase.RELEASED
    return ledger


def expired(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    reserved(ledger, rid, lines)
    assert ledger.expire(rid, EXPIRES) is True
    assert phase(ledger, rid) is OrderPhase.EXPIRED
    return ledger


def rejected(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    """A checkout event that came while a rival held all the stock; the rival let go since."""
    rival = f"{rid}-rival"
    reserved(ledger, rival, {vid: ledger.variants[vid].available for vid in lines})
    ledger.checkout(rid, dict(lines), EXPIRES)
    assert phase(ledger, rid) is OrderPhase.REJECTED
    assert ledger.release(rival) is True
    return ledger


def returned(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    confirmed(ledger, rid, lines)
    ledger.cancel(rid)
    assert phase(ledger, rid) is OrderPhase.RETURNED
    return ledger


def confirm_failed(ledger: StockLedger, rid: str, lines: dict[str, int]) -> StockLedger:
    """Released, its stock sold to another order, then paid: CONFIRM_FAILED."""
    released(ledger, rid, lines)
    everything = {vid: ledger.variants[vid].available for vid in lines}
    confirmed(ledger, f"{rid}-rival", everything)
    ledger.payment_succeeded(rid)
    assert phase(ledger, rid) is OrderPhase.CONFIRM_FAILED
    return ledger


# ================================================================= reserve


def test_reserve_holds_every_line_of_every_new_reservation() -> None:
    ledger = make_ledger()

    orders = reserve(ledger, [hold("r1", {"A": 2, "B": 3}), hold("r2", {"A": 1})], CAUSE)

    assert [(o.order_id, o.phase, o.lines) for o in orders] == [
        ("r1", OrderPhase.RESERVED, {"A": 2, "B": 3}),
        ("r2", OrderPhase.RESERVED, {"A": 1}),
    ]
    assert levels(ledger) == {"A": (10, 3, 2), "B": (10, 3, 1)}
    assert [
        (c.variant_id, c.change_type, c.delta_reserved, c.reference) for c in ledger.changes
    ] == [
        ("A", ChangeType.RESERVE, 2, "r1"),
        ("B", ChangeType.RESERVE, 3, "r1"),
        ("A", ChangeType.RESERVE, 1, "r2"),
    ]
    assert all(c.cause == CAUSE for c in ledger.changes)
    assert_invariant(ledger)


def test_reserve_records_the_expiry_of_each_reservation() -> None:
    ledger = make_ledger()
    later = EXPIRES + timedelta(hours=1)

    reserve(ledger, [hold("r1", {"A": 1}), hold("r2", {"B": 1}, later)], CAUSE)

    assert ledger.orders["r1"].expires_at == EXPIRES
    assert ledger.orders["r2"].expires_at == later
    assert_invariant(ledger)


def test_reserve_may_take_exactly_what_is_available() -> None:
    ledger = make_ledger(variant("A", 10, reserved=4))

    [order] = reserve(ledger, [hold("r1", {"A": 6})], CAUSE)

    assert order.phase is OrderPhase.RESERVED
    assert levels(ledger)["A"] == (10, 10, 1)
    assert_invariant(ledger)


def test_reserve_of_nothing_answers_nothing() -> None:
    ledger = make_ledger()
    mark = Mark(ledger)

    assert reserve(ledger, [], CAUSE) == []
    mark.assert_stock_untouched()


def test_reserve_counts_shortages_over_all_requests_together() -> None:
    """Each reservation fits alone (6 of 10); together they ask 12."""
    ledger = make_ledger()
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        reserve(ledger, [hold("r1", {"A": 6}), hold("r2", {"A": 6})], CAUSE)

    assert refused.value.shortages == (Shortage("A", 12, 10),)
    mark.assert_stock_untouched()
    assert ledger.outcomes == []
    assert "r1" not in ledger.orders and "r2" not in ledger.orders


def test_reserve_lists_every_short_variant_not_just_the_first() -> None:
    ledger = make_ledger(variant("A", 1), variant("B", 4, reserved=3), variant("C", 10))
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        reserve(ledger, [hold("r1", {"A": 2, "C": 1}), hold("r2", {"B": 5})], CAUSE)

    by_variant = {s.variant_id: s for s in refused.value.shortages}
    assert by_variant == {"A": Shortage("A", 2, 1), "B": Shortage("B", 5, 1)}
    mark.assert_stock_untouched()


def test_reserve_shortage_reports_what_is_available_after_other_holds() -> None:
    ledger = reserved(make_ledger(), "earlier", {"A": 7})
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        reserve(ledger, [hold("r1", {"A": 4})], CAUSE)

    assert refused.value.shortages == (Shortage("A", 4, 3),)
    mark.assert_stock_untouched()


def test_reserve_names_every_unknown_variant() -> None:
    ledger = make_ledger()
    mark = Mark(ledger)

    with pytest.raises(UnknownVariant) as refused:
        reserve(ledger, [hold("r1", {"A": 1, "X": 1}), hold("r2", {"Y": 2, "X": 1})], CAUSE)

    assert refused.value.variant_ids == ("X", "Y")
    mark.assert_stock_untouched()
    assert ledger.outcomes == []


def test_reserve_reports_unknown_variants_even_when_others_are_short() -> None:
    ledger = make_ledger()

    with pytest.raises(UnknownVariant) as refused:
        reserve(ledger, [hold("r1", {"A": 99, "X": 1})], CAUSE)

    assert refused.value.variant_ids == ("X",)
    assert ledger.changes == []


def test_repeating_a_held_reservation_with_the_same_lines_answers_it_unchanged() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2, "B": 3})
    before = ledger.orders["r1"]
    mark = Mark(ledger)

    [order] = reserve(ledger, [hold("r1", {"A": 2, "B": 3})], LATER)

    assert order is before
    assert order.phase is OrderPhase.RESERVED
    mark.assert_stock_untouched()
    assert ledger.outcomes[mark.outcomes :] == []
    assert_invariant(ledger)


def test_repeating_a_sold_reservation_with_the_same_lines_answers_it_unchanged() -> None:
    ledger = confirmed(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    [order] = reserve(ledger, [hold("r1", {"A": 2})], LATER)

    assert order.phase is OrderPhase.CONFIRMED
    mark.assert_stock_untouched()
    assert ledger.outcomes[mark.outcomes :] == []
    assert_invariant(ledger)


def test_repeating_a_reservation_does_not_need_its_stock_a_second_time() -> None:
    """All of A is held by r1; asking r1 again is an answer, not a second hold."""
    ledger = reserved(make_ledger(), "r1", {"A": 10})
    mark = Mark(ledger)

    [order] = reserve(ledger, [hold("r1", {"A": 10})], LATER)

    assert order.phase is OrderPhase.RESERVED
    mark.assert_stock_untouched()


def test_a_repeat_and_a_new_reservation_in_one_request_hold_only_the_new_one() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    orders = reserve(ledger, [hold("r1", {"A": 2}), hold("r2", {"B": 4})], LATER)

    assert [(o.order_id, o.phase) for o in orders] == [
        ("r1", OrderPhase.RESERVED),
        ("r2", OrderPhase.RESERVED),
    ]
    assert [(c.variant_id, c.reference) for c in mark.new_changes()] == [("B", "r2")]
    assert_invariant(ledger)


@pytest.mark.parametrize("make", [reserved, confirmed], ids=["reserved", "confirmed"])
@pytest.mark.parametrize(
    "other_lines",
    [{"A": 3}, {"A": 2, "B": 1}, {"B": 2}],
    ids=["other-quantity", "extra-line", "other-variant"],
)
def test_repeating_a_reservation_with_other_lines_is_a_mismatch(make, other_lines) -> None:
    ledger = make(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationMismatch) as refused:
        reserve(ledger, [hold("r1", other_lines)], LATER)

    assert refused.value.held == {"r1": {"A": 2}}
    mark.assert_stock_untouched()


def test_a_mismatch_refuses_the_new_reservations_of_the_same_request_too() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationMismatch):
        reserve(ledger, [hold("r2", {"B": 1}), hold("r1", {"A": 5})], LATER)

    mark.assert_stock_untouched()
    assert "r2" not in ledger.orders


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (released, "RELEASED"),
        (expired, "EXPIRED"),
        (rejected, "REJECTED"),
        (returned, "RETURNED"),
        (confirm_failed, "CONFIRM_FAILED"),
    ],
    ids=["released", "expired", "rejected", "returned", "confirm-failed"],
)
def test_repeating_a_closed_reservation_is_refused(make, status) -> None:
    ledger = make(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        reserve(ledger, [hold("r1", {"A": 2})], LATER)

    assert refused.value.statuses == {"r1": status}
    mark.assert_stock_untouched()


def test_a_closed_reservation_refuses_the_new_reservations_of_the_same_request_too() -> None:
    ledger = expired(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed):
        reserve(ledger, [hold("r2", {"B": 1}), hold("r1", {"A": 2})], LATER)

    mark.assert_stock_untouched()
    assert "r2" not in ledger.orders


def test_reserve_of_an_order_cancelled_before_its_checkout_is_closed() -> None:
    ledger = make_ledger()
    ledger.cancel("r1")
    assert phase(ledger, "r1") is OrderPhase.PENDING
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        reserve(ledger, [hold("r1", {"A": 2})], CAUSE)

    assert refused.value.statuses == {"r1": "REJECTED"}
    mark.assert_stock_untouched()


def test_reserve_of_an_order_whose_payment_failed_before_its_checkout_is_closed() -> None:
    ledger = make_ledger()
    ledger.payment_failed("r1")
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        reserve(ledger, [hold("r1", {"A": 2})], CAUSE)

    assert refused.value.statuses == {"r1": "RELEASED"}
    mark.assert_stock_untouched()


def test_reserve_of_an_order_already_paid_sells_it_at_once() -> None:
    ledger = make_ledger()
    ledger.payment_succeeded("r1")
    assert phase(ledger, "r1") is OrderPhase.PENDING

    [order] = reserve(ledger, [hold("r1", {"A": 2, "B": 3})], CAUSE)

    assert order.phase is OrderPhase.CONFIRMED
    assert levels(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}
    assert [c.change_type for c in ledger.changes] == [
        ChangeType.RESERVE,
        ChangeType.RESERVE,
        ChangeType.SALE,
        ChangeType.SALE,
    ]
    assert_invariant(ledger)


def test_reserve_of_an_order_already_paid_still_needs_its_stock() -> None:
    ledger = make_ledger()
    ledger.payment_succeeded("r1")
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        reserve(ledger, [hold("r1", {"A": 11})], CAUSE)

    assert refused.value.shortages == (Shortage("A", 11, 10),)
    mark.assert_stock_untouched()
    assert phase(ledger, "r1") is OrderPhase.PENDING


# =========================================================== confirm_sales


def test_confirm_names_every_unknown_reservation() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(UnknownReservation) as refused:
        confirm_sales(ledger, [sell("nope-1"), sell("r1"), sell("nope-2")], LATER)

    assert refused.value.reservation_ids == ("nope-1", "nope-2")
    mark.assert_stock_untouched()
    assert phase(ledger, "r1") is OrderPhase.RESERVED


def test_confirm_of_a_pending_order_is_an_unknown_reservation() -> None:
    """Events arrived for it, but no checkout: there is nothing to sell."""
    ledger = make_ledger()
    ledger.payment_failed("r1")
    mark = Mark(ledger)

    with pytest.raises(UnknownReservation) as refused:
        confirm_sales(ledger, [sell("r1")], CAUSE)

    assert refused.value.reservation_ids == ("r1",)
    mark.assert_stock_untouched()


def test_confirm_sells_a_held_reservation() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2, "B": 3})
    mark = Mark(ledger)

    [order] = confirm_sales(ledger, [sell("r1")], LATER)

    assert order.phase is OrderPhase.CONFIRMED
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.delta_reserved, c.reference, c.cause)
        for c in mark.new_changes()
    ] == [
        ("A", ChangeType.SALE, -2, -2, "r1", LATER),
        ("B", ChangeType.SALE, -3, -3, "r1", LATER),
    ]
    assert levels(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}
    assert_invariant(ledger)


def test_confirm_answers_the_reservations_in_request_order() -> None:
    ledger = reserved(reserved(make_ledger(), "r1", {"A": 1}), "r2", {"B": 1})

    orders = confirm_sales(ledger, [sell("r2"), sell("r1")], LATER)

    assert [o.order_id for o in orders] == ["r2", "r1"]
    assert_invariant(ledger)


def test_confirming_a_sold_reservation_again_changes_nothing() -> None:
    ledger = confirmed(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    [order] = confirm_sales(ledger, [sell("r1")], LATER)

    assert order.phase is OrderPhase.CONFIRMED
    mark.assert_stock_untouched()
    assert_invariant(ledger)


def test_a_reservation_named_twice_in_one_request_is_sold_once() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    orders = confirm_sales(ledger, [sell("r1"), sell("r1")], LATER)

    assert [o.order_id for o in orders] == ["r1"]
    assert [c.change_type for c in mark.new_changes()] == [ChangeType.SALE]
    assert levels(ledger)["A"] == (8, 0, 2)
    assert_invariant(ledger)


@pytest.mark.parametrize(
    "expected",
    [{"A": 3}, {"B": 1}, {"A": 2, "B": None}],
    ids=["wrong-quantity", "variant-not-held", "one-of-two-not-held"],
)
def test_confirm_with_lines_the_reservation_does_not_hold_is_a_mismatch(expected) -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationMismatch) as refused:
        confirm_sales(ledger, [sell("r1", expected)], LATER)

    assert refused.value.held == {"r1": {"A": 2}}
    mark.assert_stock_untouched()
    assert phase(ledger, "r1") is OrderPhase.RESERVED


def test_a_mismatch_sells_none_of_the_other_reservations() -> None:
    ledger = reserved(reserved(make_ledger(), "r1", {"A": 2}), "r2", {"B": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationMismatch) as refused:
        confirm_sales(ledger, [sell("r1", {"A": 2}), sell("r2", {"B": 9})], LATER)

    assert refused.value.held == {"r2": {"B": 2}}
    mark.assert_stock_untouched()
    assert phase(ledger, "r1") is OrderPhase.RESERVED


def test_confirm_expecting_a_variant_with_no_quantity_accepts_any_quantity() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})

    [order] = confirm_sales(ledger, [sell("r1", {"A": None})], LATER)

    assert order.phase is OrderPhase.CONFIRMED
    assert_invariant(ledger)


def test_confirm_sells_the_whole_reservation_even_if_only_some_lines_are_named() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2, "B": 3})

    confirm_sales(ledger, [sell("r1", {"A": 2})], LATER)

    assert levels(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}
    assert_invariant(ledger)


@pytest.mark.parametrize("make", [expired, released], ids=["expired", "released"])
def test_confirm_of_a_lapsed_reservation_takes_its_stock_again(make) -> None:
    ledger = make(make_ledger(), "r1", {"A": 2, "B": 3})
    mark = Mark(ledger)

    [order] = confirm_sales(ledger, [sell("r1")], LATER)

    assert order.phase is OrderPhase.CONFIRMED
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()
    ] == [
        ("A", ChangeType.SALE, -2, 0),
        ("B", ChangeType.SALE, -3, 0),
    ]
    assert levels(ledger) == {"A": (8, 0, 3), "B": (7, 0, 3)}
    assert_invariant(ledger)


def test_confirm_of_an_expired_reservation_whose_stock_is_gone_is_insufficient_stock() -> None:
    ledger = expired(make_ledger(), "r1", {"A": 8})
    reserved(ledger, "r2", {"A": 5})
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        confirm_sales(ledger, [sell("r1")], LATER)

    assert refused.value.shortages == (Shortage("A", 8, 5),)
    mark.assert_stock_untouched()


def test_confirm_lists_every_short_variant_of_every_lapsed_reservation() -> None:
    ledger = expired(make_ledger(), "r1", {"A": 8})
    expired(ledger, "r2", {"B": 9})
    reserved(ledger, "rival", {"A": 5, "B": 5})
    mark = Mark(ledger)

    with pytest.raises(InsufficientStock) as refused:
        confirm_sales(ledger, [sell("r1"), sell("r2")], LATER)

    by_variant = {s.variant_id: s for s in refused.value.shortages}
    assert by_variant == {"A": Shortage("A", 8, 5), "B": Shortage("B", 9, 5)}
    assert all(c.change_type is not ChangeType.SALE for c in mark.new_changes())


def test_confirm_counts_shortages_of_lapsed_reservations_over_the_whole_request() -> None:
    """Each lapsed reservation could be retaken alone (6 of 10); together they need 12."""
    ledger = expired(make_ledger(), "r1", {"A": 6})
    expired(ledger, "r2", {"A": 6})

    with pytest.raises(InsufficientStock) as refused:
        confirm_sales(ledger, [sell("r1"), sell("r2")], LATER)

    assert refused.value.shortages == (Shortage("A", 12, 10),)


@pytest.mark.parametrize(
    ("make", "status"),
    [(rejected, "REJECTED"), (returned, "RETURNED"), (confirm_failed, "CONFIRM_FAILED")],
    ids=["rejected", "returned", "confirm-failed"],
)
def test_confirm_of_a_refused_or_refunded_reservation_is_closed(make, status) -> None:
    ledger = make(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        confirm_sales(ledger, [sell("r1")], LATER)

    assert refused.value.statuses == {"r1": status}
    mark.assert_stock_untouched()


def test_confirm_of_a_cancelled_order_is_closed_although_its_stock_is_back() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    ledger.cancel("r1")
    assert phase(ledger, "r1") is OrderPhase.RELEASED
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        confirm_sales(ledger, [sell("r1")], LATER)

    assert refused.value.statuses == {"r1": "RELEASED"}
    mark.assert_stock_untouched()


def test_a_closed_reservation_sells_none_of_the_others() -> None:
    ledger = returned(make_ledger(), "r1", {"A": 2})
    reserved(ledger, "r2", {"B": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed):
        confirm_sales(ledger, [sell("r2"), sell("r1")], LATER)

    mark.assert_stock_untouched()
    assert phase(ledger, "r2") is OrderPhase.RESERVED


# ================================================================= release


def test_release_gives_back_a_held_reservation() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2, "B": 3})
    mark = Mark(ledger)

    [order] = release(ledger, [ReleaseRequest("r1", "cart abandoned")], LATER)

    assert order.phase is OrderPhase.RELEASED
    assert order.reason == "released"
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.delta_reserved, c.reference)
        for c in mark.new_changes()
    ] == [
        ("A", ChangeType.RELEASE, 0, -2, "r1"),
        ("B", ChangeType.RELEASE, 0, -3, "r1"),
    ]
    assert levels(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}
    assert_invariant(ledger)


def test_release_carries_the_callers_note_into_the_audit_reason() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    release(ledger, [ReleaseRequest("r1", "cart abandoned")], LATER)

    [change] = mark.new_changes()
    assert change.reason == "cart abandoned"
    assert change.cause == LATER
    assert ledger.orders["r1"].reason == "released"


def test_release_without_a_note_leaves_the_audit_reason_empty() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    release(ledger, [ReleaseRequest("r1")], LATER)

    [change] = mark.new_changes()
    assert change.reason is None
    assert_invariant(ledger)


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (released, OrderPhase.RELEASED),
        (expired, OrderPhase.EXPIRED),
        (rejected, OrderPhase.REJECTED),
        (returned, OrderPhase.RETURNED),
    ],
    ids=["released", "expired", "rejected", "returned"],
)
def test_release_of_a_reservation_that_holds_nothing_answers_it_as_is(make, status) -> None:
    ledger = make(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    [order] = release(ledger, [ReleaseRequest("r1")], LATER)

    assert order.phase is status
    mark.assert_stock_untouched()
    assert_invariant(ledger)


def test_release_of_a_sold_reservation_is_closed() -> None:
    ledger = confirmed(make_ledger(), "r1", {"A": 2})
    reserved(ledger, "r2", {"B": 2})
    mark = Mark(ledger)

    with pytest.raises(ReservationClosed) as refused:
        release(ledger, [ReleaseRequest("r2"), ReleaseRequest("r1")], LATER)

    assert refused.value.statuses == {"r1": "CONFIRMED"}
    mark.assert_stock_untouched()
    assert phase(ledger, "r2") is OrderPhase.RESERVED


def test_release_names_every_unknown_reservation_and_releases_nothing() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    ledger.cancel("pending")  # known to the ledger, but never checked out
    mark = Mark(ledger)

    with pytest.raises(UnknownReservation) as refused:
        release(
            ledger, [ReleaseRequest("r1"), ReleaseRequest("nope"), ReleaseRequest("pending")], LATER
        )

    assert refused.value.reservation_ids == ("nope", "pending")
    mark.assert_stock_untouched()
    assert phase(ledger, "r1") is OrderPhase.RESERVED


def test_a_reservation_released_twice_in_one_request_is_released_once() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    orders = release(ledger, [ReleaseRequest("r1"), ReleaseRequest("r1")], LATER)

    assert [o.order_id for o in orders] == ["r1"]
    assert len(mark.new_changes()) == 1
    assert_invariant(ledger)


# ================================================================= restock


def test_restock_adds_units_to_a_known_variant() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    [change] = restock(ledger, [RestockRequest("A", 5, reason="delivery", reference="po-7")], LATER)

    assert (change.change_type, change.delta_on_hand, change.delta_reserved) == (
        ChangeType.RESTOCK,
        5,
        0,
    )
    assert (change.on_hand, change.reserved, change.reason, change.reference, change.cause) == (
        15,
        2,
        "delivery",
        "po-7",
        LATER,
    )
    assert mark.new_changes() == [change]
    assert_invariant(ledger)


def test_restock_of_an_unknown_variant_without_its_product_is_refused() -> None:
    ledger = make_ledger()
    mark = Mark(ledger)

    with pytest.raises(UnknownVariant) as refused:
        restock(
            ledger,
            [
                RestockRequest("A", 1),
                RestockRequest("X", 1),
                RestockRequest("Y", 1),
                RestockRequest("X", 2),
            ],
            CAUSE,
        )

    assert refused.value.variant_ids == ("X", "Y")
    mark.assert_stock_untouched()
    assert set(ledger.variants) == {"A", "B"}


def test_restock_of_an_unknown_variant_with_its_product_creates_it() -> None:
    ledger = make_ledger()

    [change] = restock(ledger, [RestockRequest("N", 4, product_id="p-new")], CAUSE)

    assert ledger.variants["N"].product_id == "p-new"
    assert (ledger.variants["N"].on_hand, ledger.variants["N"].reserved) == (4, 0)
    assert change.product_id == "p-new"
    assert "N" in ledger.created_variants
    assert_invariant(ledger)


def test_restock_answers_the_changes_in_request_order() -> None:
    ledger = make_ledger()

    changes = restock(ledger, [RestockRequest("B", 1), RestockRequest("A", 2)], CAUSE)

    assert [(c.variant_id, c.on_hand) for c in changes] == [("B", 11), ("A", 12)]
    assert_invariant(ledger)


@pytest.mark.parametrize("quantity", [0, -1], ids=["zero", "negative"])
def test_restock_of_no_units_is_an_invalid_quantity(quantity) -> None:
    ledger = make_ledger()
    mark = Mark(ledger)

    with pytest.raises(InvalidQuantity):
        restock(ledger, [RestockRequest("A", quantity)], CAUSE)

    mark.assert_stock_untouched()


# ================================================================== adjust


def test_adjust_sets_on_hand_to_the_count() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 2})
    mark = Mark(ledger)

    [change] = adjust(ledger, [CountRequest("A", 7, reason="cycle count", reference="c-1")], LATER)

    assert (change.change_type, change.delta_on_hand, change.on_hand, change.reserved) == (
        ChangeType.ADJUSTMENT,
        -3,
        7,
        2,
    )
    assert (change.reason, change.reference, change.cause) == ("cycle count", "c-1", LATER)
    assert mark.new_changes() == [change]
    assert_invariant(ledger)


def test_adjust_records_a_count_that_matches_the_stock() -> None:
    ledger = make_ledger()

    [change] = adjust(ledger, [CountRequest("A", 10, reason="audit")], CAUSE)

    assert change.delta_on_hand == 0
    assert levels(ledger)["A"] == (10, 0, 1)
    assert_invariant(ledger)


def test_adjust_may_count_exactly_what_is_reserved() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 4})

    adjust(ledger, [CountRequest("A", 4, reason="count")], LATER)

    assert levels(ledger)["A"][:2] == (4, 4)
    assert_invariant(ledger)


def test_the_later_count_of_a_variant_in_one_request_wins() -> None:
    ledger = make_ledger()

    adjust(
        ledger, [CountRequest("A", 3, reason="first"), CountRequest("A", 6, reason="second")], CAUSE
    )

    assert levels(ledger)["A"] == (6, 0, 2)
    assert_invariant(ledger)


def test_adjust_names_every_unknown_variant() -> None:
    ledger = make_ledger()
    mark = Mark(ledger)

    with pytest.raises(UnknownVariant) as refused:
        adjust(
            ledger,
            [
                CountRequest("A", 1, reason="count"),
                CountRequest("X", 1, reason="count"),
                CountRequest("Y", 1, reason="count"),
                CountRequest("X", 2, reason="count"),
            ],
            CAUSE,
        )

    assert refused.value.variant_ids == ("X", "Y")
    mark.assert_stock_untouched()


def test_a_count_below_what_is_reserved_anywhere_in_the_request_changes_nothing() -> None:
    ledger = reserved(make_ledger(), "r1", {"B": 4})
    mark = Mark(ledger)

    with pytest.raises(CountBelowReserved) as refused:
        adjust(
            ledger,
            [CountRequest("A", 1, reason="count"), CountRequest("B", 3, reason="count")],
            LATER,
        )

    assert (refused.value.variant_id, refused.value.counted, refused.value.reserved) == ("B", 3, 4)
    mark.assert_stock_untouched()


def test_a_negative_count_is_an_invalid_quantity() -> None:
    ledger = reserved(make_ledger(), "r1", {"A": 4})
    mark = Mark(ledger)

    with pytest.raises(InvalidQuantity):
        adjust(ledger, [CountRequest("A", -1, reason="count")], LATER)

    mark.assert_stock_untouched()


# ======================================================= one story, end to end


def test_a_reservation_lives_through_hold_release_and_late_sale() -> None:
    ledger = make_ledger()

    reserve(ledger, [hold("r1", {"A": 4}), hold("r2", {"A": 3, "B": 1})], CAUSE)
    assert levels(ledger)["A"][:2] == (10, 7)
    assert_invariant(ledger)

    release(ledger, [ReleaseRequest("r1", "changed mind")], CAUSE)
    assert levels(ledger)["A"][:2] == (10, 3)
    assert_invariant(ledger)

    confirm_sales(ledger, [sell("r2", {"A": 3, "B": None})], CAUSE)
    assert levels(ledger)["A"][:2] == (7, 0)
    assert_invariant(ledger)

    confirm_sales(ledger, [sell("r1")], CAUSE)
    assert phase(ledger, "r1") is OrderPhase.CONFIRMED
    assert phase(ledger, "r2") is OrderPhase.CONFIRMED
    assert levels(ledger)["A"][:2] == (3, 0)
    assert levels(ledger)["B"][:2] == (9, 0)
    assert_invariant(ledger)
