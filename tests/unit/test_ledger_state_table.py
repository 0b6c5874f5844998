"""The reservation state table of CONTRACT.md, one test per cell, and the stock rules.

Columns: order unknown, RESERVED, CONFIRMED, RELEASED, EXPIRED, RETURNED, REJECTED and
CONFIRM_FAILED. Rows: checkout, payment.succeeded, payment.failed, order.cancelled and
hold expiry. Every cell asserts the order's phase, the outcomes published on
`stock.reservation` by the event under test, and the stock (on_hand, reserved, version).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from stock_schemas.events import ChangeType, ReservationStatus

from service.domain.errors import (
    CountBelowReserved,
    DomainError,
    InvalidQuantity,
    InvariantViolation,
    UnknownVariant,
)
from service.domain.ledger import StockLedger
from service.domain.model import (
    EventRef,
    LowStockAlert,
    OrderPhase,
    PaymentOutcome,
    ReservationOutcome,
    Shortage,
    Variant,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(minutes=15)
ORDER = "o1"
LINES = {"A": 2, "B": 3}
#: The stock of A and B before anything happens: on_hand 10, nothing reserved, version 0.
START = {"A": (10, 0, 0), "B": (10, 0, 0)}


# ----------------------------------------------------------------- helpers


def variant(
    variant_id: str, on_hand: int, reserved: int = 0, threshold: int | None = None
) -> Variant:
    return Variant(variant_id, f"p-{variant_id}", on_hand, reserved, low_stock_threshold=threshold)


def make_ledger(*variants: Variant, default_threshold: int = 5) -> StockLedger:
    if not variants:
        variants = (variant("A", 10), variant("B", 10))
    return StockLedger(
        variants={v.variant_id: v for v in variants},
        orders={},
        default_low_stock_threshold=default_threshold,
    )


def stock(ledger: StockLedger) -> dict[str, tuple[int, int, int]]:
    """(on_hand, reserved, version) per variant."""
    return {vid: (v.on_hand, v.reserved, v.version) for vid, v in ledger.variants.items()}


def phase(ledger: StockLedger, order_id: str = ORDER) -> OrderPhase:
    return ledger.orders[order_id].phase


def statuses(outcomes: list[ReservationOutcome]) -> list[tuple[ReservationStatus, str | None]]:
    return [(o.status, o.reason) for o in outcomes]


class Mark:
    """Where the effect lists stood, so a test looks only at what one event did."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.outcomes = len(ledger.outcomes)
        self.changes = len(ledger.changes)
        self.alerts = len(ledger.alerts)
        self.stock = stock(ledger)

    def new_outcomes(self) -> list[ReservationOutcome]:
        return self.ledger.outcomes[self.outcomes :]

    def new_changes(self) -> list:
        return self.ledger.changes[self.changes :]

    def new_alerts(self) -> list[LowStockAlert]:
        return self.ledger.alerts[self.alerts :]

    def assert_nothing_happened(self) -> None:
        assert self.new_outcomes() == []
        assert self.new_changes() == []
        assert self.new_alerts() == []
        assert stock(self.ledger) == self.stock


def checkout(ledger: StockLedger, lines: dict[str, int] | None = None, order_id: str = ORDER):
    ledger.checkout(order_id, dict(LINES if lines is None else lines), EXPIRES)


# Ways to bring order o1 into each column of the table (A and B start at 10 each).


def reserved_ledger() -> StockLedger:
    ledger = make_ledger()
    checkout(ledger)
    assert phase(ledger) is OrderPhase.RESERVED
    return ledger


def confirmed_ledger() -> StockLedger:
    ledger = reserved_ledger()
    ledger.payment_succeeded(ORDER)
    assert phase(ledger) is OrderPhase.CONFIRMED
    return ledger


def released_by_failure_ledger() -> StockLedger:
    ledger = reserved_ledger()
    ledger.payment_failed(ORDER)
    assert phase(ledger) is OrderPhase.RELEASED
    return ledger


def released_by_cancel_ledger() -> StockLedger:
    ledger = reserved_ledger()
    ledger.cancel(ORDER)
    assert phase(ledger) is OrderPhase.RELEASED
    return ledger


def expired_ledger() -> StockLedger:
    ledger = reserved_ledger()
    assert ledger.expire(ORDER, EXPIRES) is True
    assert phase(ledger) is OrderPhase.EXPIRED
    return ledger


def returned_ledger() -> StockLedger:
    ledger = confirmed_ledger()
    ledger.cancel(ORDER)
    assert phase(ledger) is OrderPhase.RETURNED
    return ledger


def rejected_ledger() -> StockLedger:
    """Rejected for stock: A asks 20 of 10."""
    ledger = make_ledger()
    checkout(ledger, {"A": 20, "B": 3})
    assert phase(ledger) is OrderPhase.REJECTED
    return ledger


def confirm_failed_ledger() -> StockLedger:
    """Released by a failure, the stock sold elsewhere, then paid: CONFIRM_FAILED."""
    ledger = released_by_failure_ledger()
    checkout(ledger, {"A": 9}, order_id="other")
    ledger.payment_succeeded(ORDER)
    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    return ledger


RELEASED_OR_EXPIRED = pytest.mark.parametrize(
    "make",
    [released_by_failure_ledger, released_by_cancel_ledger, expired_ledger],
    ids=["released-by-payment-failed", "released-by-cancel", "expired"],
)


# ======================================================= column: order unknown


def test_unknown__checkout_reserves_every_line() -> None:
    ledger = make_ledger()
    cause = EventRef("orders", "e1")
    ledger.checkout(ORDER, dict(LINES), EXPIRES, cause)

    assert phase(ledger) is OrderPhase.RESERVED
    assert ledger.orders[ORDER].expires_at == EXPIRES
    [outcome] = ledger.outcomes
    assert outcome == ReservationOutcome(
        order_id=ORDER,
        status=ReservationStatus.RESERVED,
        lines=(("A", 2), ("B", 3)),
        reason=None,
        shortages=(),
        cause=cause,
    )
    assert stock(ledger) == {"A": (10, 2, 1), "B": (10, 3, 1)}
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.delta_reserved) for c in ledger.changes
    ] == [
        ("A", ChangeType.RESERVE, 0, 2),
        ("B", ChangeType.RESERVE, 0, 3),
    ]
    assert all(c.reference == ORDER and c.cause == cause for c in ledger.changes)
    assert ORDER in ledger.touched_orders


def test_unknown__checkout_rejects_when_stock_is_short() -> None:
    ledger = make_ledger()
    checkout(ledger, {"A": 2, "B": 11})

    assert phase(ledger) is OrderPhase.REJECTED
    [outcome] = ledger.outcomes
    assert outcome.status is ReservationStatus.REJECTED
    assert outcome.reason == "insufficient_stock"
    assert outcome.shortages == (Shortage("B", 11, 10),)
    assert ledger.changes == []
    assert stock(ledger) == START


def test_unknown__checkout_rejects_an_unknown_variant_with_nothing_available() -> None:
    ledger = make_ledger()
    checkout(ledger, {"A": 2, "Z": 1})

    assert phase(ledger) is OrderPhase.REJECTED
    [outcome] = ledger.outcomes
    assert (outcome.status, outcome.reason) == (ReservationStatus.REJECTED, "unknown_variant")
    assert outcome.shortages == (Shortage("Z", 1, 0),)
    assert ledger.changes == []
    assert stock(ledger) == START


def test_unknown__payment_succeeded_is_remembered_and_confirms_at_checkout() -> None:
    ledger = make_ledger()
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.PENDING
    assert ledger.orders[ORDER].payment is PaymentOutcome.SUCCEEDED
    assert ledger.outcomes == []
    assert ledger.changes == []
    assert stock(ledger) == START

    checkout(ledger)
    assert phase(ledger) is OrderPhase.CONFIRMED
    assert statuses(ledger.outcomes) == [
        (ReservationStatus.RESERVED, None),
        (ReservationStatus.CONFIRMED, None),
    ]
    assert stock(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}
    assert [c.change_type for c in ledger.changes] == [
        ChangeType.RESERVE,
        ChangeType.RESERVE,
        ChangeType.SALE,
        ChangeType.SALE,
    ]


def test_unknown__payment_succeeded_then_short_checkout_is_rejected_then_confirm_failed() -> None:
    ledger = make_ledger()
    ledger.payment_succeeded(ORDER)
    checkout(ledger, {"A": 11})

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    assert statuses(ledger.outcomes) == [
        (ReservationStatus.REJECTED, "insufficient_stock"),
        (ReservationStatus.CONFIRM_FAILED, "insufficient_stock"),
    ]
    assert ledger.outcomes[0].shortages == (Shortage("A", 11, 10),)
    assert stock(ledger) == START


def test_unknown__payment_failed_is_remembered_and_checkout_then_holds_nothing() -> None:
    ledger = make_ledger()
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.PENDING
    assert ledger.orders[ORDER].payment is PaymentOutcome.FAILED
    assert ledger.outcomes == []
    assert stock(ledger) == START

    checkout(ledger)
    assert phase(ledger) is OrderPhase.RELEASED
    [outcome] = ledger.outcomes
    assert (outcome.status, outcome.reason) == (ReservationStatus.RELEASED, "payment_failed")
    assert outcome.shortages == ()
    assert outcome.lines == (("A", 2), ("B", 3))
    assert ledger.changes == []
    assert stock(ledger) == START


def test_unknown__payment_failed_then_checkout_then_success_takes_the_stock_again() -> None:
    ledger = make_ledger()
    ledger.payment_failed(ORDER)
    checkout(ledger)
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    assert statuses(mark.new_outcomes()) == [(ReservationStatus.CONFIRMED, None)]
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.SALE, -2, 0),
        (ChangeType.SALE, -3, 0),
    ]
    assert stock(ledger) == {"A": (8, 0, 1), "B": (7, 0, 1)}


def test_unknown__cancel_is_remembered_and_checkout_then_reserves_nothing() -> None:
    ledger = make_ledger()
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.PENDING
    assert ledger.orders[ORDER].cancelled is True
    assert ledger.outcomes == []
    assert stock(ledger) == START

    checkout(ledger)
    assert phase(ledger) is OrderPhase.REJECTED
    [outcome] = ledger.outcomes
    assert (outcome.status, outcome.reason) == (ReservationStatus.REJECTED, "order_cancelled")
    assert outcome.shortages == ()
    assert ledger.changes == []
    assert stock(ledger) == START


def test_unknown__cancel_wins_over_a_remembered_success() -> None:
    ledger = make_ledger()
    ledger.payment_succeeded(ORDER)
    ledger.cancel(ORDER)
    checkout(ledger)

    # The paid customer gets an answer to refund on, as in cancel-checkout-payment.
    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    assert statuses(ledger.outcomes) == [
        (ReservationStatus.REJECTED, "order_cancelled"),
        (ReservationStatus.CONFIRM_FAILED, "order_cancelled"),
    ]
    assert all(outcome.shortages == () for outcome in ledger.outcomes)
    assert ledger.changes == []
    assert stock(ledger) == START


def test_unknown__hold_expiry_does_nothing() -> None:
    ledger = make_ledger()
    assert ledger.expire(ORDER, EXPIRES + timedelta(days=1)) is False
    assert ledger.outcomes == []
    assert ledger.changes == []
    assert stock(ledger) == START


# ============================================================ column: RESERVED


def test_reserved__checkout_again_is_a_no_op() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    checkout(ledger, {"A": 5})  # even with other lines: the first checkout stands

    assert phase(ledger) is OrderPhase.RESERVED
    assert ledger.orders[ORDER].lines == LINES
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (10, 2, 1), "B": (10, 3, 1)}


def test_reserved__payment_succeeded_confirms_the_sale() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.CONFIRMED,
        None,
        (),
    )
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()
    ] == [
        ("A", ChangeType.SALE, -2, -2),
        ("B", ChangeType.SALE, -3, -3),
    ]
    assert stock(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}


def test_reserved__payment_failed_releases() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.RELEASED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.RELEASED,
        "payment_failed",
        (),
    )
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.RELEASE, 0, -2),
        (ChangeType.RELEASE, 0, -3),
    ]
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


def test_reserved__cancel_releases() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.RELEASED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.RELEASED,
        "order_cancelled",
        (),
    )
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.RELEASE, 0, -2),
        (ChangeType.RELEASE, 0, -3),
    ]
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


def test_reserved__hold_expiry_expires() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES) is True  # expires_at <= now, the boundary included

    assert phase(ledger) is OrderPhase.EXPIRED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.EXPIRED,
        "hold_expired",
        (),
    )
    assert outcome.cause is None
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.EXPIRE, 0, -2),
        (ChangeType.EXPIRE, 0, -3),
    ]
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


# =========================================================== column: CONFIRMED


def test_confirmed__checkout_again_is_a_no_op() -> None:
    ledger = confirmed_ledger()
    mark = Mark(ledger)
    checkout(ledger)

    assert phase(ledger) is OrderPhase.CONFIRMED
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}


def test_confirmed__payment_succeeded_again_is_a_no_op() -> None:
    ledger = confirmed_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}


def test_confirmed__payment_failed_is_a_no_op_success_wins() -> None:
    ledger = confirmed_ledger()
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    assert ledger.orders[ORDER].payment is PaymentOutcome.SUCCEEDED
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (8, 0, 2), "B": (7, 0, 2)}


def test_confirmed__cancel_returns_the_stock() -> None:
    ledger = confirmed_ledger()
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.RETURNED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.RETURNED,
        "order_cancelled",
        (),
    )
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.RETURN, 2, 0),
        (ChangeType.RETURN, 3, 0),
    ]
    assert stock(ledger) == {"A": (10, 0, 3), "B": (10, 0, 3)}


def test_confirmed__hold_expiry_does_nothing() -> None:
    ledger = confirmed_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(hours=1)) is False

    assert phase(ledger) is OrderPhase.CONFIRMED
    mark.assert_nothing_happened()


# =================================================== column: RELEASED / EXPIRED


@RELEASED_OR_EXPIRED
def test_released_or_expired__checkout_again_is_a_no_op(make) -> None:
    ledger = make()
    before = phase(ledger)
    mark = Mark(ledger)
    checkout(ledger)

    assert phase(ledger) is before
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


@pytest.mark.parametrize(
    "make", [released_by_failure_ledger, expired_ledger], ids=["released", "expired"]
)
def test_released_or_expired__payment_succeeded_takes_the_stock_again(make) -> None:
    ledger = make()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.CONFIRMED,
        None,
        (),
    )
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in mark.new_changes()] == [
        (ChangeType.SALE, -2, 0),
        (ChangeType.SALE, -3, 0),
    ]
    assert stock(ledger) == {"A": (8, 0, 3), "B": (7, 0, 3)}


@pytest.mark.parametrize(
    "make", [released_by_failure_ledger, expired_ledger], ids=["released", "expired"]
)
def test_released_or_expired__payment_succeeded_without_stock_is_confirm_failed(make) -> None:
    ledger = make()
    checkout(ledger, {"A": 9, "B": 8}, order_id="other")  # leaves A 1, B 2 available
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason) == (
        ReservationStatus.CONFIRM_FAILED,
        "insufficient_stock",
    )
    assert outcome.shortages == (Shortage("A", 2, 1), Shortage("B", 3, 2))
    assert mark.new_changes() == []
    assert stock(ledger) == {"A": (10, 9, 3), "B": (10, 8, 3)}


def test_released_or_expired__payment_succeeded_partly_short_takes_nothing() -> None:
    ledger = released_by_failure_ledger()
    checkout(ledger, {"B": 8}, order_id="other")  # A still has 10, B only 2
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    [outcome] = mark.new_outcomes()
    assert outcome.shortages == (Shortage("B", 3, 2),)
    assert mark.new_changes() == []
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 8, 3)}


@pytest.mark.parametrize(
    "make",
    [released_by_cancel_ledger, expired_ledger, released_by_failure_ledger],
    ids=["released-by-cancel", "expired-then-cancelled", "released-then-cancelled"],
)
def test_released_or_expired__payment_succeeded_after_cancel_is_confirm_failed(make) -> None:
    ledger = make()
    ledger.cancel(ORDER)  # a no-op for the first; remembered for the others
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason, outcome.shortages) == (
        ReservationStatus.CONFIRM_FAILED,
        "order_cancelled",
        (),
    )
    assert mark.new_changes() == []
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


@RELEASED_OR_EXPIRED
def test_released_or_expired__payment_failed_is_a_no_op(make) -> None:
    ledger = make()
    before = phase(ledger)
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is before
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


@RELEASED_OR_EXPIRED
def test_released_or_expired__cancel_is_a_no_op(make) -> None:
    ledger = make()
    before = phase(ledger)
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is before
    assert ledger.orders[ORDER].cancelled is True
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (10, 0, 2), "B": (10, 0, 2)}


@RELEASED_OR_EXPIRED
def test_released_or_expired__hold_expiry_does_nothing(make) -> None:
    ledger = make()
    before = phase(ledger)
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(hours=1)) is False

    assert phase(ledger) is before
    mark.assert_nothing_happened()


# ============================================================ column: RETURNED


RETURNED_STOCK = {"A": (10, 0, 3), "B": (10, 0, 3)}


def test_returned__checkout_again_is_a_no_op() -> None:
    ledger = returned_ledger()
    mark = Mark(ledger)
    checkout(ledger)

    assert phase(ledger) is OrderPhase.RETURNED
    mark.assert_nothing_happened()
    assert stock(ledger) == RETURNED_STOCK


def test_returned__payment_succeeded_answers_confirm_failed() -> None:
    """The table's CONFIRM_FAILED is published; the phase keeps RETURNED (stock went back)."""
    ledger = returned_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.RETURNED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason) == (
        ReservationStatus.CONFIRM_FAILED,
        "order_cancelled",
    )
    assert mark.new_changes() == []
    assert stock(ledger) == RETURNED_STOCK


def test_returned__payment_succeeded_never_takes_stock() -> None:
    """Whatever it publishes, a late success on a returned order sells nothing."""
    ledger = returned_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) in (OrderPhase.RETURNED, OrderPhase.CONFIRM_FAILED)
    assert mark.new_changes() == []
    assert stock(ledger) == RETURNED_STOCK


def test_returned__payment_failed_is_a_no_op() -> None:
    ledger = returned_ledger()
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.RETURNED
    mark.assert_nothing_happened()
    assert stock(ledger) == RETURNED_STOCK


def test_returned__cancel_again_is_a_no_op() -> None:
    ledger = returned_ledger()
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.RETURNED
    mark.assert_nothing_happened()
    assert stock(ledger) == RETURNED_STOCK


def test_returned__hold_expiry_does_nothing() -> None:
    ledger = returned_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(hours=1)) is False

    assert phase(ledger) is OrderPhase.RETURNED
    mark.assert_nothing_happened()


# ============================================================ column: REJECTED


def test_rejected__checkout_again_is_a_no_op_even_with_stock_now() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    checkout(ledger)  # lines that would fit now

    assert phase(ledger) is OrderPhase.REJECTED
    mark.assert_nothing_happened()
    assert stock(ledger) == START


def test_rejected__payment_succeeded_is_confirm_failed_with_the_rejection_reason() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    [outcome] = mark.new_outcomes()
    assert (outcome.status, outcome.reason) == (
        ReservationStatus.CONFIRM_FAILED,
        "insufficient_stock",
    )
    assert outcome.lines == (("A", 20), ("B", 3))
    assert mark.new_changes() == []
    assert stock(ledger) == START


def test_rejected_unknown_variant__payment_succeeded_is_confirm_failed_unknown_variant() -> None:
    ledger = make_ledger()
    checkout(ledger, {"Z": 1})
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    assert statuses(mark.new_outcomes()) == [(ReservationStatus.CONFIRM_FAILED, "unknown_variant")]
    assert mark.new_changes() == []
    assert stock(ledger) == START


def test_rejected_cancelled__payment_succeeded_is_confirm_failed_order_cancelled() -> None:
    ledger = make_ledger()
    ledger.cancel(ORDER)
    checkout(ledger)
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    assert statuses(mark.new_outcomes()) == [(ReservationStatus.CONFIRM_FAILED, "order_cancelled")]
    assert mark.new_outcomes()[0].shortages == ()
    assert stock(ledger) == START


def test_rejected__confirm_failed_for_stock_carries_the_shortages() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    [outcome] = mark.new_outcomes()
    assert outcome.reason == "insufficient_stock"
    assert [s.variant_id for s in outcome.shortages] == ["A"]


def test_rejected__payment_failed_is_a_no_op() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.REJECTED
    mark.assert_nothing_happened()
    assert stock(ledger) == START


def test_rejected__cancel_is_a_no_op() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.REJECTED
    mark.assert_nothing_happened()
    assert stock(ledger) == START


def test_rejected__hold_expiry_does_nothing() -> None:
    ledger = rejected_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(hours=1)) is False

    assert phase(ledger) is OrderPhase.REJECTED
    mark.assert_nothing_happened()


# ====================================================== column: CONFIRM_FAILED


CONFIRM_FAILED_STOCK = {"A": (10, 9, 3), "B": (10, 0, 2)}


def test_confirm_failed__checkout_again_is_a_no_op() -> None:
    ledger = confirm_failed_ledger()
    assert stock(ledger) == CONFIRM_FAILED_STOCK
    mark = Mark(ledger)
    checkout(ledger)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    mark.assert_nothing_happened()


def test_confirm_failed__payment_succeeded_again_is_a_no_op_even_with_stock_back() -> None:
    ledger = confirm_failed_ledger()
    ledger.cancel("other")  # the 9 units of A come back
    mark = Mark(ledger)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    mark.assert_nothing_happened()
    assert stock(ledger) == {"A": (10, 0, 4), "B": (10, 0, 2)}


def test_confirm_failed__payment_failed_is_a_no_op() -> None:
    ledger = confirm_failed_ledger()
    mark = Mark(ledger)
    ledger.payment_failed(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    assert ledger.orders[ORDER].payment is PaymentOutcome.SUCCEEDED
    mark.assert_nothing_happened()
    assert stock(ledger) == CONFIRM_FAILED_STOCK


def test_confirm_failed__cancel_is_a_no_op() -> None:
    ledger = confirm_failed_ledger()
    mark = Mark(ledger)
    ledger.cancel(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    mark.assert_nothing_happened()
    assert stock(ledger) == CONFIRM_FAILED_STOCK


def test_confirm_failed__hold_expiry_does_nothing() -> None:
    ledger = confirm_failed_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(hours=1)) is False

    assert phase(ledger) is OrderPhase.CONFIRM_FAILED
    mark.assert_nothing_happened()


# ================================================ all-or-nothing reservation


def test_all_or_nothing_reports_every_short_line_and_holds_nothing() -> None:
    ledger = make_ledger(variant("A", 10), variant("B", 10, reserved=4), variant("C", 3))
    checkout(ledger, {"A": 2, "B": 7, "C": 5})

    assert phase(ledger) is OrderPhase.REJECTED
    [outcome] = ledger.outcomes
    assert outcome.status is ReservationStatus.REJECTED
    assert outcome.reason == "insufficient_stock"
    # B is short against `available` (10 - 4), not on_hand; both failing lines are named.
    assert outcome.shortages == (Shortage("B", 7, 6), Shortage("C", 5, 3))
    assert ledger.changes == []
    assert stock(ledger) == {"A": (10, 0, 0), "B": (10, 4, 0), "C": (3, 0, 0)}


def test_all_or_nothing_unknown_variant_and_short_line_reason_unknown_variant() -> None:
    ledger = make_ledger()
    checkout(ledger, {"A": 2, "Z": 1, "B": 11})

    [outcome] = ledger.outcomes
    assert (outcome.status, outcome.reason) == (ReservationStatus.REJECTED, "unknown_variant")
    assert outcome.shortages == (Shortage("Z", 1, 0), Shortage("B", 11, 10))
    assert ledger.changes == []
    assert stock(ledger) == START


def test_reservation_of_exactly_the_available_quantity_succeeds() -> None:
    ledger = make_ledger(variant("A", 10, reserved=3))
    checkout(ledger, {"A": 7})

    assert phase(ledger) is OrderPhase.RESERVED
    assert stock(ledger) == {"A": (10, 10, 1)}
    assert ledger.changes[-1].available == 0


# ================================================================== expiry


def test_expiry_before_the_deadline_does_nothing() -> None:
    ledger = reserved_ledger()
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES - timedelta(microseconds=1)) is False

    assert phase(ledger) is OrderPhase.RESERVED
    mark.assert_nothing_happened()


def test_expiry_after_the_deadline_expires_and_only_once() -> None:
    ledger = reserved_ledger()
    assert ledger.expire(ORDER, EXPIRES + timedelta(minutes=1)) is True
    mark = Mark(ledger)
    assert ledger.expire(ORDER, EXPIRES + timedelta(minutes=2)) is False

    assert phase(ledger) is OrderPhase.EXPIRED
    mark.assert_nothing_happened()
    assert [c.change_type for c in ledger.changes] == [
        ChangeType.RESERVE,
        ChangeType.RESERVE,
        ChangeType.EXPIRE,
        ChangeType.EXPIRE,
    ]


def test_expiry_only_touches_the_expired_order() -> None:
    ledger = make_ledger()
    ledger.checkout("early", {"A": 1}, T0 + timedelta(minutes=5))
    ledger.checkout("late", {"A": 2}, T0 + timedelta(minutes=30))
    now = T0 + timedelta(minutes=10)

    assert ledger.expire("early", now) is True
    assert ledger.expire("late", now) is False
    assert phase(ledger, "early") is OrderPhase.EXPIRED
    assert phase(ledger, "late") is OrderPhase.RESERVED
    assert ledger.variants["A"].reserved == 2
    assert ledger.changes[-1].change_type is ChangeType.EXPIRE
    assert ledger.changes[-1].reference == "early"


def test_payment_failed_after_expiry_then_success_still_retakes() -> None:
    ledger = expired_ledger()
    ledger.payment_failed(ORDER)
    ledger.payment_succeeded(ORDER)

    assert phase(ledger) is OrderPhase.CONFIRMED
    assert stock(ledger) == {"A": (8, 0, 3), "B": (7, 0, 3)}


# ========================================================= low-stock alerts


def test_low_stock_alert_is_edge_triggered() -> None:
    ledger = make_ledger(variant("A", 10))  # default threshold 5

    checkout(ledger, {"A": 4}, order_id="o1")  # 10 -> 6: above
    assert ledger.alerts == []

    checkout(ledger, {"A": 1}, order_id="o2")  # 6 -> 5: crosses to "at"
    assert ledger.alerts == [LowStockAlert("A", "p-A", 5, 5)]
    assert ledger.alerts[0].out_of_stock is False

    checkout(ledger, {"A": 2}, order_id="o3")  # 5 -> 3: stays below, no alert
    ledger.payment_failed("o3")  # 3 -> 5: still at the threshold, no alert
    assert len(ledger.alerts) == 1

    ledger.cancel("o2")  # 5 -> 6: back above
    assert len(ledger.alerts) == 1

    checkout(ledger, {"A": 6}, order_id="o4")  # 6 -> 0: crosses again, out of stock
    assert len(ledger.alerts) == 2
    assert ledger.alerts[-1] == LowStockAlert("A", "p-A", 0, 5)
    assert ledger.alerts[-1].out_of_stock is True


def test_low_stock_alert_not_fired_when_available_does_not_move() -> None:
    ledger = make_ledger(variant("A", 10))
    checkout(ledger, {"A": 3})  # 10 -> 7
    ledger.restock("A", 1)  # 7 -> 8
    ledger.payment_succeeded(ORDER)  # SALE of held units: available stays 8
    ledger.adjust("A", ledger.variants["A"].on_hand, reason="count")  # delta 0
    assert ledger.alerts == []


def test_low_stock_threshold_per_variant_overrides_default() -> None:
    ledger = make_ledger(variant("A", 10, threshold=2), variant("B", 10))

    checkout(ledger, {"A": 5, "B": 5}, order_id="o1")  # A 5 (> 2), B 5 (<= 5)
    assert ledger.alerts == [LowStockAlert("B", "p-B", 5, 5)]

    checkout(ledger, {"A": 3}, order_id="o2")  # A 5 -> 2: at its own threshold
    assert ledger.alerts[-1] == LowStockAlert("A", "p-A", 2, 2)
    assert len(ledger.alerts) == 2
    assert ledger.threshold_of(ledger.variants["A"]) == 2
    assert ledger.threshold_of(ledger.variants["B"]) == 5


def test_low_stock_threshold_zero_fires_only_when_out_of_stock() -> None:
    ledger = make_ledger(variant("A", 3, threshold=0))
    checkout(ledger, {"A": 2}, order_id="o1")
    assert ledger.alerts == []
    checkout(ledger, {"A": 1}, order_id="o2")
    assert ledger.alerts == [LowStockAlert("A", "p-A", 0, 0)]


def test_low_stock_alert_from_adjustment_and_again_after_restock() -> None:
    ledger = make_ledger(variant("A", 10))
    ledger.adjust("A", 4, reason="shrinkage")
    assert ledger.alerts == [LowStockAlert("A", "p-A", 4, 5)]
    ledger.restock("A", 10)  # 14: above
    ledger.adjust("A", 1, reason="count")
    assert ledger.alerts[-1] == LowStockAlert("A", "p-A", 1, 5)
    assert len(ledger.alerts) == 2


def test_low_stock_default_threshold_is_the_ledgers() -> None:
    ledger = make_ledger(variant("A", 10), default_threshold=8)
    checkout(ledger, {"A": 2})
    assert ledger.alerts == [LowStockAlert("A", "p-A", 8, 8)]


# ========================================================= restock / adjust


def test_restock_adds_units_and_records_a_change() -> None:
    ledger = make_ledger(variant("A", 10, reserved=2))
    cause = EventRef("http", "r1")
    change = ledger.restock("A", 5, reason="delivery", reference="PO-1", cause=cause)

    assert stock(ledger) == {"A": (15, 2, 1)}
    assert ledger.changes == [change]
    assert (change.change_type, change.delta_on_hand, change.delta_reserved) == (
        ChangeType.RESTOCK,
        5,
        0,
    )
    assert (change.on_hand, change.reserved, change.available, change.version) == (15, 2, 13, 1)
    assert (change.reason, change.reference, change.cause) == ("delivery", "PO-1", cause)
    assert change.product_id == "p-A"
    assert ledger.created_variants == set()


@pytest.mark.parametrize("quantity", [0, -1, -100])
def test_restock_refuses_a_non_positive_quantity(quantity: int) -> None:
    ledger = make_ledger(variant("A", 10))
    with pytest.raises(InvalidQuantity) as info:
        ledger.restock("A", quantity)
    assert info.value.code == "invalid_quantity"
    assert isinstance(info.value, DomainError)
    assert stock(ledger) == {"A": (10, 0, 0)}
    assert ledger.changes == []


def test_restock_of_an_unknown_variant_creates_it_at_zero_then_adds() -> None:
    ledger = make_ledger(variant("A", 10))
    change = ledger.restock("N", 7, product_id="prod-N")

    created = ledger.variants["N"]
    assert (created.product_id, created.on_hand, created.reserved, created.version) == (
        "prod-N",
        7,
        0,
        1,
    )
    assert created.low_stock_threshold is None
    assert ledger.created_variants == {"N"}
    assert (change.change_type, change.delta_on_hand, change.version) == (
        ChangeType.RESTOCK,
        7,
        1,
    )
    assert ledger.alerts == []  # 0 -> 7 rises, never crosses downwards


def test_restock_of_an_unknown_variant_without_product_uses_the_variant_id() -> None:
    ledger = make_ledger()
    ledger.restock("N", 1)
    assert ledger.variants["N"].product_id == "N"


def test_restock_refused_for_an_unknown_variant_creates_nothing() -> None:
    ledger = make_ledger()
    with pytest.raises(InvalidQuantity):
        ledger.restock("N", 0)
    assert "N" not in ledger.variants
    assert ledger.created_variants == set()


def test_adjust_sets_on_hand_to_the_count() -> None:
    ledger = make_ledger(variant("A", 10, reserved=3))
    change = ledger.adjust("A", 6, reason="count", reference="inv-7")

    assert stock(ledger) == {"A": (6, 3, 1)}
    assert (change.change_type, change.delta_on_hand, change.delta_reserved) == (
        ChangeType.ADJUSTMENT,
        -4,
        0,
    )
    assert (change.reason, change.reference) == ("count", "inv-7")

    ledger.adjust("A", 12, reason="found")
    assert stock(ledger) == {"A": (12, 3, 2)}
    assert ledger.changes[-1].delta_on_hand == 6


def test_adjust_records_an_audit_change_even_when_the_count_matches() -> None:
    ledger = make_ledger(variant("A", 10))
    change = ledger.adjust("A", 10, reason="cycle count")

    assert ledger.changes == [change]
    assert (change.change_type, change.delta_on_hand, change.delta_reserved) == (
        ChangeType.ADJUSTMENT,
        0,
        0,
    )
    assert change.reason == "cycle count"
    assert stock(ledger) == {"A": (10, 0, 1)}


def test_adjust_of_an_unknown_variant_is_refused() -> None:
    ledger = make_ledger()
    with pytest.raises(UnknownVariant) as info:
        ledger.adjust("Z", 3, reason="count")
    assert info.value.variant_id == "Z"
    assert info.value.code == "unknown_variant"
    assert "Z" not in ledger.variants
    assert ledger.changes == []


def test_adjust_to_a_negative_count_is_refused() -> None:
    ledger = make_ledger(variant("A", 10))
    with pytest.raises(InvalidQuantity):
        ledger.adjust("A", -1, reason="count")
    assert stock(ledger) == {"A": (10, 0, 0)}
    assert ledger.changes == []


def test_adjust_below_reserved_is_refused() -> None:
    ledger = make_ledger(variant("A", 10))
    checkout(ledger, {"A": 4})
    mark = Mark(ledger)
    with pytest.raises(CountBelowReserved) as info:
        ledger.adjust("A", 3, reason="count")

    assert (info.value.variant_id, info.value.counted, info.value.reserved) == ("A", 3, 4)
    assert info.value.code == "count_below_reserved"
    mark.assert_nothing_happened()


def test_adjust_down_to_exactly_reserved_is_allowed() -> None:
    ledger = make_ledger(variant("A", 10))
    checkout(ledger, {"A": 4})
    ledger.adjust("A", 4, reason="count")
    assert stock(ledger) == {"A": (4, 4, 2)}
    assert ledger.changes[-1].available == 0


# ============================================= versions and invariants in flows


def run_every_transition(ledger: StockLedger) -> None:
    """A flow through every branch of the table; none of it may break an invariant."""
    late = EXPIRES + timedelta(hours=1)
    ledger.restock("A", 20)
    ledger.restock("B", 20)
    ledger.checkout("r", {"A": 1, "B": 1}, EXPIRES)  # RESERVED
    ledger.checkout("c", {"A": 2}, EXPIRES)
    ledger.payment_succeeded("c")  # CONFIRMED
    ledger.checkout("pf", {"B": 2}, EXPIRES)
    ledger.payment_failed("pf")  # RELEASED
    ledger.payment_succeeded("pf")  # retaken: CONFIRMED
    ledger.checkout("x", {"A": 3, "B": 1}, EXPIRES)
    ledger.cancel("x")  # RELEASED
    ledger.payment_succeeded("x")  # CONFIRM_FAILED order_cancelled
    ledger.checkout("ret", {"A": 1}, EXPIRES)
    ledger.payment_succeeded("ret")
    ledger.cancel("ret")  # RETURNED
    ledger.payment_succeeded("ret")
    ledger.checkout("rej", {"A": 1000}, EXPIRES)  # REJECTED
    ledger.payment_succeeded("rej")  # CONFIRM_FAILED
    ledger.checkout("unk", {"Z": 1}, EXPIRES)  # REJECTED unknown_variant
    ledger.checkout("exp", {"A": 2, "B": 2}, T0)
    ledger.expire("exp", late)  # EXPIRED
    ledger.payment_succeeded("exp")  # retaken
    ledger.payment_failed("early-f")
    ledger.checkout("early-f", {"A": 1}, EXPIRES)  # RELEASED, holds nothing
    ledger.payment_succeeded("early-s")
    ledger.checkout("early-s", {"B": 1}, EXPIRES)  # CONFIRMED straight away
    ledger.cancel("early-x")
    ledger.checkout("early-x", {"A": 1}, EXPIRES)  # REJECTED order_cancelled
    ledger.adjust("A", ledger.variants["A"].on_hand, reason="count")
    ledger.adjust("B", ledger.variants["B"].reserved, reason="count")
    for order_id in list(ledger.orders):
        ledger.expire(order_id, late)
        ledger.cancel(order_id)
        ledger.payment_failed(order_id)


def test_versions_grow_by_one_per_change_of_each_variant() -> None:
    ledger = make_ledger()
    run_every_transition(ledger)

    for variant_id, v in ledger.variants.items():
        versions = [c.version for c in ledger.changes if c.variant_id == variant_id]
        assert versions == list(range(1, len(versions) + 1))
        assert v.version == len(versions)


def test_no_invariant_violation_in_a_flow_through_every_transition() -> None:
    ledger = make_ledger()
    initial = {vid: v.on_hand for vid, v in ledger.variants.items()}
    try:
        run_every_transition(ledger)
    except InvariantViolation as exc:  # pragma: no cover - reported as a failure
        pytest.fail(f"InvariantViolation in a normal flow: {exc}")

    for variant_id, v in ledger.variants.items():
        assert 0 <= v.reserved <= v.on_hand
        held = sum(
            o.lines.get(variant_id, 0)
            for o in ledger.orders.values()
            if o.phase is OrderPhase.RESERVED
        )
        assert v.reserved == held
        deltas = sum(c.delta_on_hand for c in ledger.changes if c.variant_id == variant_id)
        assert v.on_hand == initial.get(variant_id, 0) + deltas
    # The flow ends with every order cancelled, so nothing is held any more.
    assert all(v.reserved == 0 for v in ledger.variants.values())
    assert {o.phase for o in ledger.orders.values()} >= {
        OrderPhase.RETURNED,
        OrderPhase.REJECTED,
        OrderPhase.CONFIRM_FAILED,
        OrderPhase.RELEASED,
    }


def test_invariant_violation_is_an_assertion_not_a_domain_error() -> None:
    assert issubclass(InvariantViolation, AssertionError)
    assert not issubclass(InvariantViolation, DomainError)


def test_causes_flow_into_changes_and_outcomes() -> None:
    ledger = make_ledger()
    c1, c2 = EventRef("orders", "1"), EventRef("payments", "2")
    ledger.checkout(ORDER, dict(LINES), EXPIRES, c1)
    ledger.payment_succeeded(ORDER, c2)

    assert [o.cause for o in ledger.outcomes] == [c1, c2]
    assert [c.cause for c in ledger.changes] == [c1, c1, c2, c2]
    assert {c.reference for c in ledger.changes} == {ORDER}
