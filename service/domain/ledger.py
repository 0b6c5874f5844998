"""The reservation state table of CONTRACT.md and the stock arithmetic under it.

A `StockLedger` is loaded with the variants and orders a batch touches (locked by
the caller), applies commands in arrival order, and records what it decided as
effects: stock changes (audit rows and `stock.changed`), low-stock alerts and
reservation outcomes. It does no I/O, so every rule is unit-tested on its own.

Rules behind the table: cancellation wins over everything; a success wins over a
failure; the final stock of an order does not depend on arrival order.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from stock_schemas.events import MAX_QUANTITY, ChangeType, ReservationStatus

from service.domain.errors import (
    CountBelowReserved,
    InvalidQuantity,
    InvariantViolation,
    UnknownVariant,
)
from service.domain.model import (
    HOLDING_PHASES,
    RETAKING_PHASES,
    Anomaly,
    EventRef,
    LowStockAlert,
    Order,
    OrderPhase,
    PaymentOutcome,
    ReorderAlert,
    ReplenishedAlert,
    ReservationOutcome,
    Shortage,
    StockChange,
    Variant,
)

REASON_INSUFFICIENT_STOCK = "insufficient_stock"
REASON_UNKNOWN_VARIANT = "unknown_variant"
REASON_ORDER_CANCELLED = "order_cancelled"
REASON_PAYMENT_FAILED = "payment_failed"
REASON_HOLD_EXPIRED = "hold_expired"
REASON_RELEASED = "released"



class StockLedger:
    def __init__(
        self,
        variants: dict[str, Variant],
        orders: dict[str, Order],
        *,
        default_low_stock_threshold: int,
        now: datetime | None = None,
    ) -> None:
        self.variants = variants
        self.orders = orders
        self.default_low_stock_threshold = default_low_stock_threshold
        #: The time the ledger decides at (the unit of work's): when a variant ran out.
        self.now = now if now is not None else datetime.now(UTC)
        self.changes: list[StockChange] = []
        self.alerts: list[LowStockAlert] = []
        #: Back in stock (`stock.replenished`) and reorder points crossed (`stock.reorder`).
        self.replenished: list[ReplenishedAlert] = []
        self.reorders: list[ReorderAlert] = []
        self.outcomes: list[ReservationOutcome] = []
        #: `stock.anomaly` events the decisions raised (a count variance out of tolerance).
        self.anomalies: list[Anomaly] = []
        self.touched_orders: set[str] = set()
        self.created_variants: set[str] = set()

    # ------------------------------------------------------------------ orders

    def order(self, order_id: str) -> Order:
        """The order, created PENDING if this is the first we hear of it."""
        found = self.orders.get(order_id)
        if found is None:
            found = self.orders[order_id] = Order(order_id)
        self.touched_orders.add(order_id)
        return found

    def checkout(
        self,
        order_id: str,
        lines: dict[str, int],
        expires_at: datetime,
        cause: EventRef | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """Hold the order's lines until `expires_at`, all or none.

        `now`: when the checkout is processed. A checkout whose hold has already ended
        by then (a backlog, a worker that was down) holds nothing: it is EXPIRED at
        once, so a stale order never keeps stock from live shoppers until the next
        sweep (CONTRACT.md, "Staleness"). None: the caller vouches that `expires_at`
        is ahead (an HTTP reservation checks it when it arrives).
        """
        order = self.order(order_id)
        if order.phase is not OrderPhase.PENDING:
            return  # a repeated checkout (new event id, same order) changes nothing
        order.lines = dict(lines)
        order.expires_at = expires_at
        if order.cancelled:
            self._settle(order, OrderPhase.REJECTED, REASON_ORDER_CANCELLED, cause=cause)
        elif order.payment is PaymentOutcome.FAILED:
            # Nothing is held, but a later success may still take the stock.
            self._settle(order, OrderPhase.RELEASED, REASON_PAYMENT_FAILED, cause=cause)
        elif now is not None and expires_at <= now and all(v in self.variants for v in lines):
            # Nothing is held; a payment (already here, or later) may take the stock.
            # (A variant no one knows is still `unknown_variant`: the more useful answer.)
            self._settle(order, OrderPhase.EXPIRED, REASON_HOLD_EXPIRED, cause=cause)
        else:
            self._reserve(order, cause)
        # A payment that came first is answered now: CONFIRMED, or CONFIRM_FAILED (the
        # payment service's cue to refund), also when a cancellation won.
        if order.payment is PaymentOutcome.SUCCEEDED:
            self._confirm(order, cause)

    def _reserve(self, order: Order, cause: EventRef | None) -> None:
        """Hold every line, or none and say which are short."""
        reason, shortages = self._shortages(order.lines)
        if shortages:
            self._settle(order, OrderPhase.REJECTED, reason, shortages, cause)
            return
        for variant_id, quantity in order.lines.items():
            self._change(variant_id, ChangeType.RESERVE, 0, quantity, order.order_id, None, cause)
        self._settle(order, OrderPhase.RESERVED, cause=cause)

    def payment_succeeded(
        self, order_id: str, cause: EventRef | None = None, note: str | None = None
    ) -> None:
        """`note`: words for the audit rows of the sale (an HTTP confirm's reason)."""
        order = self.order(order_id)
        order.payment = PaymentOutcome.SUCCEEDED
        if order.phase is not OrderPhase.PENDING:
            self._confirm(order, cause, note)

    def payment_failed(self, order_id: str, cause: EventRef | None = None) -> None:
        order = self.order(order_id)
        if order.payment is PaymentOutcome.SUCCEEDED:
            return  # a success wins over a failure, whichever came first
        order.payment = PaymentOutcome.FAILED
        if order.phase in HOLDING_PHASES:
            self._release(
                order, ChangeType.RELEASE, OrderPhase.RELEASED, REASON_PAYMENT_FAILED, cause
            )

    def cancel(self, order_id: str, cause: EventRef | None = None) -> None:
        order = self.order(order_id)
        if order.cancelled:
            return
        order.cancelled = True
        if order.phase in HOLDING_PHASES:
            self._release(
                order, ChangeType.RELEASE, OrderPhase.RELEASED, REASON_ORDER_CANCELLED, cause
            )
        elif order.phase is OrderPhase.CONFIRMED:
            for variant_id, quantity in order.lines.items():
                self._change(variant_id, ChangeType.RETURN, quantity, 0, order_id, None, cause)
            self._settle(order, OrderPhase.RETURNED, REASON_ORDER_CANCELLED, cause=cause)

    def expire(self, order_id: str, now: datetime) -> bool:
        """Release a hold whose time is up. True if it expired."""
        order = self.orders.get(order_id)
        if order is None or order.phase not in HOLDING_PHASES:
            return False
        if order.expires_at is None or order.expires_at > now:
            return False
        self.touched_orders.add(order_id)
        self._release(order, ChangeType.EXPIRE, OrderPhase.EXPIRED, REASON_HOLD_EXPIRED, None)
        return True

    def release(
        self, order_id: str, note: str | None = None, cause: EventRef | None = None
    ) -> bool:
        """Give back a hold on request (not a payment failure). True if one was held.

        `note` is the caller's words for the audit log; the order's reason stays the
        machine-readable `released`. A later payment success may still take the stock
        again, exactly as after a failed payment.
        """
        order = self.orders.get(order_id)
        if order is None or order.phase not in HOLDING_PHASES:
            return False
        self.touched_orders.add(order_id)
        self._release(order, ChangeType.RELEASE, OrderPhase.RELEASED, REASON_RELEASED, cause, note)
        return True

    def _confirm(self, order: Order, cause: EventRef | None, note: str | None = None) -> None:
        """Apply a payment success to an order whose checkout has arrived."""
        if order.phase is OrderPhase.RESERVED:
            for variant_id, quantity in order.lines.items():
                self._change(
                    variant_id, ChangeType.SALE, -quantity, -quantity, order.order_id, note, cause
                )
            self._settle(order, OrderPhase.CONFIRMED, cause=cause)
        elif order.phase in RETAKING_PHASES and not order.cancelled:
            reason, shortages = self._shortages(order.lines)
            if shortages:
                self._settle(order, OrderPhase.CONFIRM_FAILED, reason, shortages, cause)
                return
            for variant_id, quantity in order.lines.items():
                self._change(variant_id, ChangeType.SALE, -quantity, 0, order.order_id, note, cause)
            self._settle(order, OrderPhase.CONFIRMED, cause=cause)
        elif order.phase in RETAKING_PHASES:  # and cancelled: cancellation wins
            self._settle(order, OrderPhase.CONFIRM_FAILED, REASON_ORDER_CANCELLED, cause=cause)
        elif order.phase is OrderPhase.RETURNED:
            # Another payment for an order whose stock went back: answer it (the payment
            # service refunds on CONFIRM_FAILED) but keep RETURNED, the stock's truth.
            self._publish(
                order, ReservationStatus.CONFIRM_FAILED, REASON_ORDER_CANCELLED, (), cause
            )
        elif order.phase is OrderPhase.REJECTED:
            still_short: tuple[Shortage, ...] = ()
            if order.reason in (REASON_INSUFFICIENT_STOCK, REASON_UNKNOWN_VARIANT):
                # As they stand now; empty if a restock has covered them since.
                _, still_short = self._shortages(order.lines)
            self._settle(order, OrderPhase.CONFIRM_FAILED, order.reason, still_short, cause)
        # CONFIRMED and CONFIRM_FAILED: nothing more to do.

    def _release(
        self,
        order: Order,
        change_type: ChangeType,
        phase: OrderPhase,
        reason: str,
        cause: EventRef | None,
        note: str | None = None,
    ) -> None:
        for variant_id, quantity in order.lines.items():
            self._change(variant_id, change_type, 0, -quantity, order.order_id, note, cause)
        self._settle(order, phase, reason, cause=cause)

    def _settle(
        self,
        order: Order,
        phase: OrderPhase,
        reason: str | None = None,
        shortages: tuple[Shortage, ...] = (),
        cause: EventRef | None = None,
    ) -> None:
        order.phase = phase
        order.reason = reason
        self._publish(order, ReservationStatus(phase.value), reason, shortages, cause)

    def _publish(
        self,
        order: Order,
        status: ReservationStatus,
        reason: str | None,
        shortages: tuple[Shortage, ...],
        cause: EventRef | None,
    ) -> None:
        self.outcomes.append(
            ReservationOutcome(
                order_id=order.order_id,
                status=status,
                lines=tuple(order.lines.items()),
                reason=reason,
                shortages=shortages,
                cause=cause,
            )
        )

    def shortages(
        self, wanted: Mapping[str, int]
    ) -> tuple[tuple[str, ...], tuple[Shortage, ...]]:
        """The one shortage arithmetic, for events and requests alike: of `wanted`
        (variant -> units), the unknown variants, and the known ones with fewer units
        available than wanted."""
        unknown = tuple(v for v in wanted if v not in self.variants)
        short = tuple(
            Shortage(variant_id, quantity, max(self.variants[variant_id].available, 0))
            for variant_id, quantity in wanted.items()
            if variant_id in self.variants and self.variants[variant_id].available < quantity
        )
        return unknown, short

    def _shortages(self, lines: dict[str, int]) -> tuple[str | None, tuple[Shortage, ...]]:
        """Every line that cannot be held now (not just the first), and the reason.

        An unknown variant is reported as a shortage with nothing available, and
        makes the reason `unknown_variant`: no restock will ever fill it.
        """
        unknown, short = self.shortages(lines)
        if not unknown and not short:
            return None, ()
        known_short = {s.variant_id: s for s in short}
        listed = tuple(
            known_short.get(variant_id) or Shortage(variant_id, quantity, 0)
            for variant_id, quantity in lines.items()
            if variant_id in known_short or variant_id in unknown
        )
        return (REASON_UNKNOWN_VARIANT if unknown else REASON_INSUFFICIENT_STOCK), listed

    # ------------------------------------------------------- admin operations

    def restock(
        self,
        variant_id: str,
        quantity: int,
        *,
        product_id: str | None = None,
        reason: str | None = None,
        reference: str | None = None,
        cause: EventRef | None = None,
        supplier_id: str | None = None,
        ordered_at: datetime | None = None,
    ) -> StockChange:
        """Receive units; a variant seen for the first time is created at zero first.
        `supplier_id` and `ordered_at`: the delivery's, kept on its audit row."""
        if not 0 < quantity <= MAX_QUANTITY:
            raise InvalidQuantity(
                f"restock quantity must be between 1 and {MAX_QUANTITY}, got {quantity}"
            )
        if variant_id not in self.variants:
            self.variants[variant_id] = Variant(variant_id, product_id or variant_id, 0, 0)
            self.created_variants.add(variant_id)
        return self._change(
            variant_id,
            ChangeType.RESTOCK,
            quantity,
            0,
            reference,
            reason,
            cause,
            supplier_id=supplier_id,
            ordered_at=ordered_at,
        )

    def adjust(
        self,
        variant_id: str,
        counted: int,
        *,
        reason: str,
        reference: str | None = None,
        cause: EventRef | None = None,
    ) -> StockChange:
        """Set `on_hand` to a physical count. Recorded even when the count matches."""
        variant = self.variants.get(variant_id)
        if variant is None:
            raise UnknownVariant(variant_id)
        if not 0 <= counted <= MAX_QUANTITY:
            raise InvalidQuantity(
                f"counted quantity must be between 0 and {MAX_QUANTITY}, got {counted}"
            )
        if counted < variant.reserved:
            raise CountBelowReserved(variant_id, counted, variant.reserved)
        delta = counted - variant.on_hand
        return self._change(variant_id, ChangeType.ADJUSTMENT, delta, 0, reference, reason, cause)

    def book_outside_change(
        self,
        variant_id: str,
        booked_on_hand: int,
        *,
        reason: str,
        reference: str | None = None,
        cause: EventRef | None = None,
    ) -> StockChange | None:
        """A person accepts a change made to the variant row outside the service.

        The row says `on_hand`, the audit log adds up to `booked_on_hand` (a
        `ledger_mismatch`). This writes the difference as an ADJUSTMENT, so the log adds
        up to the row again; the row keeps its value. An adjust cannot do it: it measures
        from the row, so the gap would stay. None when there is no gap."""
        variant = self.variants.get(variant_id)
        if variant is None:
            raise UnknownVariant(variant_id)
        delta = variant.on_hand - booked_on_hand
        if delta == 0:
            return None
        variant.on_hand = booked_on_hand  # the log's view, before the outside change
        return self._change(variant_id, ChangeType.ADJUSTMENT, delta, 0, reference, reason, cause)

    # --------------------------------------------------------- stock arithmetic

    def _change(
        self,
        variant_id: str,
        change_type: ChangeType,
        delta_on_hand: int,
        delta_reserved: int,
        reference: str | None,
        reason: str | None,
        cause: EventRef | None,
        *,
        supplier_id: str | None = None,
        ordered_at: datetime | None = None,
    ) -> StockChange:
        variant = self.variants[variant_id]
        available_before = variant.available
        on_hand = variant.on_hand + delta_on_hand
        reserved = variant.reserved + delta_reserved
        if not 0 <= reserved <= on_hand:
            raise InvariantViolation(
                f"{change_type} on {variant_id!r} would leave on_hand={on_hand} reserved={reserved}"
            )
        variant.on_hand = on_hand
        variant.reserved = reserved
        variant.version += 1
        change = StockChange(
            variant_id=variant_id,
            product_id=variant.product_id,
            change_type=change_type,
            delta_on_hand=delta_on_hand,
            delta_reserved=delta_reserved,
            on_hand=on_hand,
            reserved=reserved,
            version=variant.version,
            reference=reference,
            reason=reason,
            cause=cause,
            supplier_id=supplier_id,
            ordered_at=ordered_at,
        )
        self.changes.append(change)
        self._replenishment_edges(variant, available_before)
        threshold = self.threshold_of(variant)
        if available_before > threshold >= variant.available:
            self.alerts.append(
                LowStockAlert(variant_id, variant.product_id, variant.available, threshold)
            )
        return change

    def _replenishment_edges(self, variant: Variant, available_before: int) -> None:
        """Back in stock and reorder point, edge-triggered like `stock.low`.

        Out of stock starts when `available` reaches 0 from above; back in stock is the
        rise from 0 of a variant that had run out, so a variant's first delivery (never
        in stock, `out_of_stock_since` None) publishes nothing."""
        available = variant.available
        if available_before > 0 >= available:
            variant.out_of_stock_since = self.now
        elif available_before <= 0 < available:
            since, variant.out_of_stock_since = variant.out_of_stock_since, None
            if since is not None:
                self.replenished.append(
                    ReplenishedAlert(
                        variant.variant_id,
                        variant.product_id,
                        available,
                        max((self.now - since).total_seconds(), 0.0),
                    )
                )
        point = variant.reorder_point
        if point is not None and available_before > point >= available:
            self.reorders.append(
                ReorderAlert(variant.variant_id, variant.product_id, available, point)
            )

    def threshold_of(self, variant: Variant) -> int:
        if variant.low_stock_threshold is not None:
            return variant.low_stock_threshold
        return self.default_low_stock_threshold
