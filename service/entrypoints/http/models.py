"""Request and response bodies of /api/inventory: the seed's shapes, camelCase JSON.

Requests refuse unknown fields (a misspelt `reservationID` is a 422, not a silently
ignored line) and carry the same bounds as the Kafka events (`schemas.events`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel
from stock_schemas.events import MAX_QUANTITY, Identifier, Quantity

MAX_ITEMS_PER_REQUEST = 1000
Text = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]
Count = Annotated[int, Field(ge=0, le=MAX_QUANTITY, strict=True)]


#: A variant's version as read (it grows by one with every change).
Version = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def _items(model: Any) -> Any:
    return Annotated[list[model], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]


# ------------------------------------------------------------------ requests


class ReservationLine(_Body):
    variant_id: Identifier
    quantity: Quantity
    #: The order id: lines with the same reservationId form one reservation.
    reservation_id: Identifier
    #: Default: now plus STOCK_RESERVATION_TTL_SECONDS.
    expires_at: AwareDatetime | None = None


class ReserveBody(_Body):
    reservations: _items(ReservationLine)  # type: ignore[valid-type]


class SaleUpdate(_Body):
    reservation_id: Identifier
    #: Optional: when given, the reservation must hold this variant (and quantity).
    variant_id: Identifier | None = None
    quantity: Quantity | None = None
    #: Recorded on the sale's audit rows.
    reason: Text | None = None

    @model_validator(mode="after")
    def _quantity_needs_its_variant(self) -> SaleUpdate:
        if self.quantity is not None and self.variant_id is None:
            raise ValueError("quantity is checked per line: give its variantId too")
        return self


class ConfirmSaleBody(_Body):
    updates: _items(SaleUpdate)  # type: ignore[valid-type]


class ReleaseUpdate(_Body):
    reservation_id: Identifier
    #: Recorded on the release's audit rows.
    reason: Text | None = None


class ReleaseBody(_Body):
    updates: _items(ReleaseUpdate)  # type: ignore[valid-type]


def _rfc3339_text(value: Any) -> Any:
    """A time is sent as RFC 3339 text: a bare number is not taken for a Unix time."""
    if not isinstance(value, str | datetime):
        raise ValueError("a time is RFC 3339 text with a timezone offset")
    return value


class RestockLine(_Body):
    variant_id: Identifier
    quantity: Quantity
    reason: Text | None = None
    #: Needed only for a variant that does not exist yet: it is created under it.
    product_id: Identifier | None = None
    reference: Text | None = None
    #: Apply only if the variant is at this version (as read from check, product or
    #: logs; 0 for a variant this restock creates); else 409 `version_conflict`.
    expected_version: Version | None = None
    #: The supplier that delivered, and when the delivery was ordered (not in the
    #: future; 422 `invalid_ordered_at`): its lead time, kept on the audit row.
    supplier_id: Identifier | None = None
    ordered_at: Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)] | None = None


class RestockBody(_Body):
    updates: _items(RestockLine)  # type: ignore[valid-type]


class CountLine(_Body):
    variant_id: Identifier
    #: The counted quantity: `onHand` becomes this.
    quantity: Count
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]+$")]
    reference: Text | None = None
    #: Apply only if the variant is at this version; else 409 `version_conflict`.
    expected_version: Version | None = None


class AdjustBody(_Body):
    updates: _items(CountLine)  # type: ignore[valid-type]


# ----------------------------------------------------------------- responses


class Availability(_Answer):
    available: bool
    variant_id: str
    requested_quantity: int
    available_quantity: int
    #: The variant's current version (send it back as `expectedVersion`).
    version: int


class Line(_Answer):
    variant_id: str
    quantity: int


class Reservation(_Answer):
    reservation_id: str
    status: str
    expires_at: datetime | None
    lines: list[Line]
    #: Why it is in this status, machine-readable (`released`, `insufficient_stock`, ...).
    reason: str | None = None
    #: The `reason` this request sent for it (confirm-sale, release), as recorded on its
    #: audit rows; null when none was sent.
    note: str | None = None


class Reservations(_Answer):
    reservations: list[Reservation]


class StockChangeOut(_Answer):
    variant_id: str
    product_id: str
    change_type: str
    delta_on_hand: int
    delta_reserved: int
    on_hand: int
    reserved: int
    available: int
    version: int
    reason: str | None
    reference: str | None


class Changes(_Answer):
    changes: list[StockChangeOut]


class VariantStock(_Answer):
    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    available: int
    low_stock_threshold: int
    is_low: bool
    version: int
    updated_at: datetime | None


class LowStock(_Answer):
    #: The threshold asked for; null means each variant's own threshold.
    threshold: int | None
    variants: list[VariantStock]
    next_cursor: str | None


class ProductReport(_Answer):
    product_id: str
    total_on_hand: int
    total_reserved: int
    total_available: int
    low_stock_count: int
    variant_count: int
    variants: list[VariantStock]


class AuditEntry(_Answer):
    version: int
    change_type: str
    delta_on_hand: int
    delta_reserved: int
    on_hand_after: int
    reserved_after: int
    reason: str | None
    reference: str | None
    source: str | None
    event_id: str | None
    #: Who did it: `api:<token name>`, `cli:<user>`, a Kafka event's source, or
    #: `stock-service` (the service's own jobs).
    actor: str
    created_at: datetime
    #: A restock's supplier and order time, when it named them.
    supplier_id: str | None = None
    ordered_at: datetime | None = None


class AuditLog(_Answer):
    variant_id: str
    #: The variant's current version (send it back as `expectedVersion`).
    version: int
    entries: list[AuditEntry]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None
