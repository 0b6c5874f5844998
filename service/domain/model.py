"""State the ledger works on, and the effects it produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from stock_schemas.events import AnomalyRule, ChangeType, ReservationStatus


class OrderPhase(StrEnum):
    """Where an order stands. PENDING: events arrived before its checkout."""

    PENDING = "PENDING"
    RESERVED = ReservationStatus.RESERVED.value
    REJECTED = ReservationStatus.REJECTED.value
    CONFIRMED = ReservationStatus.CONFIRMED.value
    RELEASED = ReservationStatus.RELEASED.value
    EXPIRED = ReservationStatus.EXPIRED.value
    RETURNED = ReservationStatus.RETURNED.value
    CONFIRM_FAILED = ReservationStatus.CONFIRM_FAILED.value


#: Phases in which an order's stock is held (counted in `reserved`).
HOLDING_PHASES = frozenset({OrderPhase.RESERVED})
#: Phases whose hold was given back, after which a payment success (a late
#: `payment.succeeded`, or a confirm request) takes the stock again if it is there.
RETAKING_PHASES = frozenset({OrderPhase.RELEASED, OrderPhase.EXPIRED})


class PaymentOutcome(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


#: The actor of the service's own work (the expiry sweep, scheduled jobs).
SERVICE_ACTOR = "stock-service"


def actor_of(cause_source: str | None) -> str:
    """Who did a change nobody named: the `source` of the event that caused it (a
    Kafka producer), or the service itself (CONTRACT.md, "Who did it")."""
    return cause_source or SERVICE_ACTOR


@dataclass(frozen=True, slots=True)
class EventRef:
    """`(source, id)` of the event that caused a change: the audit log's cause."""

    source: str
    id: str


@dataclass(slots=True)
class Variant:
    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    version: int = 0
    low_stock_threshold: int | None = None
    #: The effective reorder point: the configured one, else the computed one; None:
    #: no `stock.reorder` for this variant.
    reorder_point: int | None = None
    #: When `available` last reached 0 from above; None while in stock, or never stocked.
    out_of_stock_since: datetime | None = None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(slots=True)
class Order:
    order_id: str
    phase: OrderPhase = OrderPhase.PENDING
    #: variant_id -> quantity; empty until the checkout arrives.
    lines: dict[str, int] = field(default_factory=dict)
    expires_at: datetime | None = None
    #: Remembered payment result; a success is never overwritten by a failure.
    payment: PaymentOutcome | None = None
    cancelled: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Shortage:
    variant_id: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class StockChange:
    """One change of one variant: one audit row, one version, one `stock.changed`."""

    variant_id: str
    product_id: str
    change_type: ChangeType
    delta_on_hand: int
    delta_reserved: int
    on_hand: int
    reserved: int
    version: int
    reference: str | None
    reason: str | None
    cause: EventRef | None
    #: A restock's supplier and when it was ordered (its lead time ends with this change).
    supplier_id: str | None = None
    ordered_at: datetime | None = None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class ReplenishedAlert:
    """A `stock.replenished`: `available` rose from 0, after `out_of_stock_seconds` at 0."""

    variant_id: str
    product_id: str
    available: int
    out_of_stock_seconds: float


@dataclass(frozen=True, slots=True)
class ReorderAlert:
    """`available` fell from above the variant's reorder point to at or below it: a
    `stock.reorder`, once the unit of work adds the policy's suggestion
    (`service.domain.replenishment.reorder`)."""

    variant_id: str
    product_id: str
    available: int
    reorder_point: int


@dataclass(frozen=True, slots=True)
class LowStockAlert:
    variant_id: str
    product_id: str
    available: int
    threshold: int

    @property
    def out_of_stock(self) -> bool:
        return self.available <= 0


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A `stock.anomaly` to publish: something about a variant a person should look at."""

    variant_id: str
    product_id: str
    rule: AnomalyRule
    observed: float
    expected: float
    score: float | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationOutcome:
    """A status an order moved to, published on `stock.reservation`."""

    order_id: str
    status: ReservationStatus
    lines: tuple[tuple[str, int], ...]
    reason: str | None = None
    shortages: tuple[Shortage, ...] = ()
    cause: EventRef | None = None
