"""CONTRACT.md, "Staleness": a checkout handled after its hold would already have ended
never holds stock. It is EXPIRED at once; a payment, before or after it, takes the
stock if it is there, as any late payment does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stock_schemas.events import ChangeType, ReservationStatus

from service.domain.ledger import StockLedger
from service.domain.model import OrderPhase, Shortage, Variant

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
ENDED = T0 - timedelta(seconds=1)


def ledger(on_hand: int = 10) -> StockLedger:
    return StockLedger(
        {"A": Variant("A", "p", on_hand, 0)}, {}, default_low_stock_threshold=0
    )


def test_a_checkout_whose_hold_has_ended_holds_nothing_and_is_expired() -> None:
    book = ledger()
    book.checkout("o1", {"A": 2}, ENDED, now=T0)

    assert book.orders["o1"].phase is OrderPhase.EXPIRED
    assert [(o.status, o.reason) for o in book.outcomes] == [
        (ReservationStatus.EXPIRED, "hold_expired")
    ]
    assert book.changes == []
    assert (book.variants["A"].on_hand, book.variants["A"].reserved) == (10, 0)


def test_the_boundary_is_stale_as_the_sweeper_sees_it() -> None:
    book = ledger()
    book.checkout("o1", {"A": 2}, T0, now=T0)  # expires_at <= now, as in `expire`

    assert book.orders["o1"].phase is OrderPhase.EXPIRED


def test_a_hold_still_ahead_reserves() -> None:
    book = ledger()
    book.checkout("o1", {"A": 2}, T0 + timedelta(milliseconds=1), now=T0)

    assert book.orders["o1"].phase is OrderPhase.RESERVED
    assert book.variants["A"].reserved == 2


def test_a_later_payment_takes_the_stock_if_it_is_there() -> None:
    book = ledger()
    book.checkout("o1", {"A": 2}, ENDED, now=T0)
    book.payment_succeeded("o1")

    assert book.orders["o1"].phase is OrderPhase.CONFIRMED
    assert [(c.change_type, c.delta_on_hand, c.delta_reserved) for c in book.changes] == [
        (ChangeType.SALE, -2, 0)
    ]
    assert (book.variants["A"].on_hand, book.variants["A"].reserved) == (8, 0)


def test_a_payment_that_came_first_takes_the_stock_or_fails_for_it() -> None:
    plenty, scarce = ledger(10), ledger(1)
    for book in (plenty, scarce):
        book.payment_succeeded("o1")
        book.checkout("o1", {"A": 2}, ENDED, now=T0)

    assert [o.status for o in plenty.outcomes] == [
        ReservationStatus.EXPIRED,
        ReservationStatus.CONFIRMED,
    ]
    assert plenty.variants["A"].on_hand == 8
    assert [(o.status, o.reason, o.shortages) for o in scarce.outcomes] == [
        (ReservationStatus.EXPIRED, "hold_expired", ()),
        (ReservationStatus.CONFIRM_FAILED, "insufficient_stock", (Shortage("A", 2, 1),)),
    ]
    assert scarce.changes == []


def test_cancellation_and_failure_still_win_over_staleness() -> None:
    cancelled, failed = ledger(), ledger()
    cancelled.cancel("o1")
    failed.payment_failed("o1")
    cancelled.checkout("o1", {"A": 2}, ENDED, now=T0)
    failed.checkout("o1", {"A": 2}, ENDED, now=T0)

    assert cancelled.orders["o1"].phase is OrderPhase.REJECTED
    assert failed.orders["o1"].phase is OrderPhase.RELEASED


def test_a_stale_checkout_of_an_unknown_variant_is_rejected_for_it() -> None:
    # Nothing is held either way; `unknown_variant` tells the order service more.
    book = ledger()
    book.checkout("o1", {"A": 1, "nope": 1}, ENDED, now=T0)

    assert [(o.status, o.reason) for o in book.outcomes] == [
        (ReservationStatus.REJECTED, "unknown_variant")
    ]
