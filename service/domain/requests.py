"""Rules of synchronous requests (HTTP, CLI): all or nothing, idempotent per reservation.

A Kafka event is a fact to record: a checkout that cannot be held becomes a REJECTED
order. A request is a question to answer: if any part of it cannot be done, nothing is
done, and the error names every part that failed. The ledger decides both, so the
stock arithmetic, the audit rows and the published events are the same.

The reservation id of a request is the order id of the contract: a reservation made
over HTTP is confirmed by a `payment.succeeded` for that id, and the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain.errors import (
    CountBelowReserved,
    InsufficientStock,
    InvalidExpiry,
    InvalidOrderedAt,
    ProductMismatch,
    ReservationClosed,
    ReservationMismatch,
    UnknownReservation,
    UnknownVariant,
    VersionConflict,
)
from service.domain.ledger import StockLedger
from service.domain.model import RETAKING_PHASES, EventRef, Order, OrderPhase, StockChange

#: A repeated reserve answers with the reservation as it stands while it holds or sold.
_ANSWERED_AS_IS = frozenset({OrderPhase.RESERVED, OrderPhase.CONFIRMED})
#: Confirming these cannot succeed: the order was refused, cancelled or refunded.
_UNCONFIRMABLE = frozenset({OrderPhase.REJECTED, OrderPhase.RETURNED, OrderPhase.CONFIRM_FAILED})


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    reservation_id: str
    lines: dict[str, int]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ReservationLine:
    """One line of a reserve request as it arrives: several make one reservation."""

    reservation_id: str
    variant_id: str
    quantity: int
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SaleConfirmation:
    reservation_id: str
    #: Lines the caller expects the reservation to hold (None: any quantity). Only
    #: checked: a reservation is always sold whole, as it was reserved.
    expected_lines: dict[str, int | None]
    #: The caller's words for the audit log (e.g. "Order #12345").
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    reservation_id: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class RestockRequest:
    variant_id: str
    quantity: int
    #: Needed only to create a variant that does not exist yet; checked otherwise.
    product_id: str | None = None
    reason: str | None = None
    reference: str | None = None
    #: The product of a variant this restock creates when `product_id` is not given
    #: (the CLI creates a variant as its own product). Never checked.
    default_product_id: str | None = None
    #: Optimistic concurrency: apply only if the variant is at this version (a variant
    #: that does not exist yet is at version 0).
    expected_version: int | None = None
    #: The delivery's supplier, and when it was ordered (not after the restock): its
    #: lead time, averaged per supplier by the `policies` job.
    supplier_id: str | None = None
    ordered_at: datetime | None = None

    @property
    def product_if_created(self) -> str | None:
        return self.product_id or self.default_product_id


@dataclass(frozen=True, slots=True)
class CountRequest:
    variant_id: str
    counted: int
    reason: str
    reference: str | None = None
    #: As `RestockRequest.expected_version`.
    expected_version: int | None = None


def group_reservation_lines(
    lines: Iterable[ReservationLine], now: datetime, default_hold: timedelta, max_hold: timedelta
) -> list[ReservationRequest]:
    """Lines with the same reservation id are one reservation; a variant named twice is
    summed (as in a Kafka checkout). Of several `expires_at`, the earliest holds; none
    means `now + default_hold`. An expiry in the past, or beyond `now + max_hold`, is
    refused: a hold without a real end keeps stock from every other customer."""
    grouped: dict[str, tuple[dict[str, int], datetime | None]] = {}
    for line in lines:
        quantities, expires_at = grouped.get(line.reservation_id, ({}, None))
        quantities[line.variant_id] = quantities.get(line.variant_id, 0) + line.quantity
        if line.expires_at is not None:
            if line.expires_at <= now:
                raise InvalidExpiry(f"expiresAt {line.expires_at.isoformat()} is in the past")
            if line.expires_at > now + max_hold:
                raise InvalidExpiry(
                    f"expiresAt {line.expires_at.isoformat()} is further ahead than a hold "
                    f"may last ({max_hold.total_seconds():.0f} s)"
                )
            expires_at = line.expires_at if expires_at is None else min(expires_at, line.expires_at)
        grouped[line.reservation_id] = (quantities, expires_at)
    return [
        ReservationRequest(reservation_id, quantities, expires_at or now + default_hold)
        for reservation_id, (quantities, expires_at) in grouped.items()
    ]


def reserve(
    ledger: StockLedger, requests: Sequence[ReservationRequest], cause: EventRef
) -> list[Order]:
    """Hold every line of every new reservation, or nothing.

    Repeating a reservation with the same lines answers it as it stands (RESERVED or
    CONFIRMED); with other lines it is a mismatch. One that was released, expired or
    refused is closed: a new hold needs a new reservation id.
    """
    fresh: list[ReservationRequest] = []
    mismatched: dict[str, dict[str, int]] = {}
    closed: dict[str, str] = {}
    for request in requests:
        order = ledger.orders.get(request.reservation_id)
        if order is None or order.phase is OrderPhase.PENDING:
            fresh.append(request)
        elif order.lines != request.lines:
            mismatched[order.order_id] = dict(order.lines)
        elif order.phase not in _ANSWERED_AS_IS:
            closed[order.order_id] = order.phase.value
    if mismatched:
        raise ReservationMismatch(mismatched)
    if closed:
        raise ReservationClosed(closed, "make a new reservation")
    _check_can_hold(ledger, fresh)
    for request in fresh:
        ledger.checkout(request.reservation_id, request.lines, request.expires_at, cause)
    # An order cancelled (or failed) over Kafka before its checkout reserves nothing.
    refused = {
        r.reservation_id: ledger.orders[r.reservation_id].phase.value
        for r in fresh
        if ledger.orders[r.reservation_id].phase not in _ANSWERED_AS_IS
    }
    if refused:
        raise ReservationClosed(refused, "the order was cancelled or its payment failed")
    return [ledger.orders[r.reservation_id] for r in requests]


def _check_can_hold(ledger: StockLedger, requests: Sequence[ReservationRequest]) -> None:
    _check_available(ledger, [request.lines for request in requests])


def _check_available(ledger: StockLedger, line_sets: Sequence[dict[str, int]]) -> None:
    """Every short variant, counted over all the line sets together (so two orders
    that each fit alone but not together are refused, with their total)."""
    wanted: dict[str, int] = {}
    for lines in line_sets:
        for variant_id, quantity in lines.items():
            wanted[variant_id] = wanted.get(variant_id, 0) + quantity
    unknown, shortages = ledger.shortages(wanted)
    if unknown:
        raise UnknownVariant(*unknown)
    if shortages:
        raise InsufficientStock(shortages)


def confirm_sales(
    ledger: StockLedger, confirmations: Sequence[SaleConfirmation], cause: EventRef
) -> list[Order]:
    """Turn each reservation into a sale, as a `payment.succeeded` for it would.

    A sold reservation is answered as it is. One that was released or expired takes
    its stock again if it is all there; if not, nothing of the request is sold and the
    error carries the shortages.
    """
    orders = _existing_orders(ledger, [c.reservation_id for c in confirmations])
    mismatched = {
        c.reservation_id: dict(orders[c.reservation_id].lines)
        for c in confirmations
        if not _holds(orders[c.reservation_id], c.expected_lines)
    }
    if mismatched:
        raise ReservationMismatch(mismatched)
    closed = {
        order.order_id: order.phase.value
        for order in orders.values()
        if order.phase in _UNCONFIRMABLE
        or (order.cancelled and order.phase is not OrderPhase.CONFIRMED)
    }
    if closed:
        raise ReservationClosed(closed, "it cannot be sold")
    # Lapsed holds take their stock again: all of them together, or none.
    _check_available(ledger, [o.lines for o in orders.values() if o.phase in RETAKING_PHASES])
    for confirmation in confirmations:
        ledger.payment_succeeded(confirmation.reservation_id, cause, note=confirmation.note)
    return list(orders.values())


def _holds(order: Order, expected: dict[str, int | None]) -> bool:
    return all(
        variant_id in order.lines and quantity in (None, order.lines[variant_id])
        for variant_id, quantity in expected.items()
    )


def release(
    ledger: StockLedger, releases: Sequence[ReleaseRequest], cause: EventRef
) -> list[Order]:
    """Give back held stock. A reservation that holds nothing already is answered as is;
    a sold one is refused (cancel the order to return its stock)."""
    orders = _existing_orders(ledger, [r.reservation_id for r in releases])
    sold = {o.order_id: o.phase.value for o in orders.values() if o.phase is OrderPhase.CONFIRMED}
    if sold:
        raise ReservationClosed(sold, "sold stock is returned by cancelling the order")
    for request in releases:
        ledger.release(request.reservation_id, request.note, cause)
    return list(orders.values())


def _existing_orders(ledger: StockLedger, reservation_ids: Sequence[str]) -> dict[str, Order]:
    """The orders in request order (each once); unknown ones are an error, all named."""
    orders: dict[str, Order] = {}
    unknown: list[str] = []
    for reservation_id in dict.fromkeys(reservation_ids):
        order = ledger.orders.get(reservation_id)
        if order is None or order.phase is OrderPhase.PENDING:
            unknown.append(reservation_id)
        else:
            orders[reservation_id] = order
    if unknown:
        raise UnknownReservation(tuple(unknown))
    return orders


def restock(
    ledger: StockLedger, restocks: Sequence[RestockRequest], cause: EventRef
) -> list[StockChange]:
    """Receive units. An unknown variant is created only when the request names its
    product; a product named for an existing variant must be the one it belongs to."""
    unknown = [
        r.variant_id
        for r in restocks
        if r.variant_id not in ledger.variants and not r.product_if_created
    ]
    if unknown:
        raise UnknownVariant(*dict.fromkeys(unknown))
    _check_versions(ledger, [(r.variant_id, r.expected_version) for r in restocks])
    for r in restocks:
        if r.ordered_at is not None and r.ordered_at > ledger.now:
            raise InvalidOrderedAt(r.variant_id, r.ordered_at.isoformat())
    for r in restocks:
        variant = ledger.variants.get(r.variant_id)
        if r.product_id and variant is not None and variant.product_id != r.product_id:
            raise ProductMismatch(r.variant_id, variant.product_id, r.product_id)
    return [
        ledger.restock(
            r.variant_id,
            r.quantity,
            product_id=r.product_if_created,
            reason=r.reason,
            reference=r.reference,
            cause=cause,
            supplier_id=r.supplier_id,
            ordered_at=r.ordered_at,
        )
        for r in restocks
    ]


def _check_versions(ledger: StockLedger, expected: Sequence[tuple[str, int | None]]) -> None:
    """Every line that names an `expectedVersion` the variant is not at: all of them,
    with their current versions, before anything is applied (CONTRACT.md, "Optimistic
    concurrency")."""
    current: dict[str, int] = {}
    for variant_id, version in expected:
        variant = ledger.variants.get(variant_id)
        now_at = variant.version if variant is not None else 0
        if version is not None and version != now_at:
            current[variant_id] = now_at
    if current:
        raise VersionConflict(current)


def adjust(
    ledger: StockLedger, counts: Sequence[CountRequest], cause: EventRef
) -> list[StockChange]:
    """Set each variant's `on_hand` to its physical count. A later count of the same
    variant in one request wins; a count below what open orders hold is refused."""
    unknown = [c.variant_id for c in counts if c.variant_id not in ledger.variants]
    if unknown:
        raise UnknownVariant(*dict.fromkeys(unknown))
    _check_versions(ledger, [(c.variant_id, c.expected_version) for c in counts])
    for count in counts:
        reserved = ledger.variants[count.variant_id].reserved
        if 0 <= count.counted < reserved:  # a negative count is InvalidQuantity
            raise CountBelowReserved(count.variant_id, count.counted, reserved)
    return [
        ledger.adjust(c.variant_id, c.counted, reason=c.reason, reference=c.reference, cause=cause)
        for c in counts
    ]
