"""`data` payloads of every event in CONTRACT.md, consumed and published."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

#: The id rule (order, variant, product and reservation ids; CONTRACT.md): an opaque
#: string of 1 to 200 characters, with no white space at either end (`" v1"` and `"v1"`
#: would be two variants no one can tell apart) and no control characters (PostgreSQL
#: text cannot hold NUL; a tab or a newline hides in logs and terminals). Spaces inside
#: are fine. The JSON Schemas carry it as this pattern.
ID_PATTERN = (
    r"^[^\s\ufeff\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\ufeff\x00-\x1f\x7f-\x9f])?$"
)
ID_MAX_LENGTH = 200
_ID = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """`value` if it follows the id rule (length aside), else a readable error."""
    if _ID.fullmatch(value) is None:
        raise PydanticCustomError(
            "identifier",
            "an id must not start or end with white space, nor contain control characters",
        )
    return value


class _IdPattern:
    """Adds the id rule to the JSON Schema as `pattern` (it is checked by `check_id`,
    whose error says what is wrong instead of quoting the pattern)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = ID_PATTERN
        return json_schema


#: Every id of an event, a request or a command line: the one definition of the rule.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH),
    AfterValidator(check_id),
    _IdPattern(),
]
#: A billion units of one variant in one line is far past any real order; the bound
#: keeps arithmetic inside PostgreSQL's bigint with room to spare.
MAX_QUANTITY = 1_000_000_000
Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
MAX_LINES_PER_ORDER = 1000


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OrderLine(_Data):
    variant_id: Identifier
    quantity: Quantity


class OrderCheckout(_Data):
    """Reserve every line, all or nothing.

    A variant named on several lines is summed into one line: the order service
    meant "this many in total", and rejecting would fail a checkout for a
    formatting detail.
    """

    order_id: Identifier
    lines: Annotated[list[OrderLine], Field(min_length=1, max_length=MAX_LINES_PER_ORDER)]
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _expires_at_has_timezone(self) -> OrderCheckout:
        if self.expires_at is None:
            return self
        if self.expires_at.tzinfo is None:
            raise ValueError("expires_at must carry a timezone offset (RFC 3339)")
        try:  # 9999-12-31T23:59:59-14:00 is past the last instant a timestamp can hold
            self.expires_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None
        return self

    def merged_lines(self) -> dict[str, int]:
        """Quantity per variant, repeated variants summed, in first-seen order."""
        merged: dict[str, int] = {}
        for line in self.lines:
            merged[line.variant_id] = merged.get(line.variant_id, 0) + line.quantity
        return merged


class PaymentSucceeded(_Data):
    order_id: Identifier
    payment_id: str | None = None
    amount: Any = None
    currency: str | None = None


class PaymentFailed(_Data):
    order_id: Identifier
    payment_id: str | None = None
    reason: str | None = None


class OrderCancelled(_Data):
    order_id: Identifier
    reason: str | None = None


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    RETURNED = "RETURNED"
    CONFIRM_FAILED = "CONFIRM_FAILED"


class ChangeType(StrEnum):
    RESERVE = "RESERVE"
    RELEASE = "RELEASE"
    EXPIRE = "EXPIRE"
    SALE = "SALE"
    RETURN = "RETURN"
    RESTOCK = "RESTOCK"
    ADJUSTMENT = "ADJUSTMENT"


class Shortage(_Data):
    variant_id: str
    requested: int
    available: int


class StockChanged(_Data):
    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    available: int
    change_type: ChangeType
    delta_on_hand: int
    delta_reserved: int
    reference: str | None = None
    version: int


class StockLow(_Data):
    variant_id: str
    product_id: str
    available: int
    threshold: int
    out_of_stock: bool


class AnomalyRule(StrEnum):
    """Why a `stock.anomaly` was raised (CONTRACT.md, "Events added")."""

    COUNT_VARIANCE = "count_variance"
    LARGE_ADJUSTMENT = "large_adjustment"
    UNUSUAL_SHRINKAGE = "unusual_shrinkage"
    LEDGER_MISMATCH = "ledger_mismatch"


class StockAnomaly(_Data):
    """Something about a variant's stock a person should look at; tied to one cause."""

    variant_id: str
    product_id: str
    rule: AnomalyRule
    #: What was found (a counted quantity, an adjustment, a week's losses, a stored value).
    observed: float
    #: What was expected instead (the expected count, a baseline, the ledger's value).
    expected: float
    #: How unusual, where a rule scores it (a z-score); null otherwise.
    score: float | None = None
    #: What raised it: a count id, a reconciliation run id, an audit reference.
    reference: str | None = None


class StockReplenished(_Data):
    """Back in stock: `available` rose from 0 to above 0. Published once per return to
    stock, not for a variant's first delivery (it was never in stock to come back)."""

    variant_id: str
    product_id: str
    available: int
    #: How long `available` was 0, from the change that took the last unit.
    out_of_stock_seconds: float


class StockReorder(_Data):
    """Time to order: `available` fell from above the reorder point to at or below it.
    Edge-triggered: again only after `available` has risen above the point."""

    variant_id: str
    product_id: str
    #: The variant's supplier, as its policy names it; null when none is named.
    supplier_id: str | None = None
    available: int
    #: The reorder point crossed: the configured one, else the computed one.
    reorder_point: int
    #: Units to order: up to `maxStock`, else enough to cover the lead time plus the
    #: review period of demand plus safety stock; never negative.
    suggested_quantity: int
    #: `available` / the average daily demand of the last 30 days; null without demand.
    days_of_cover: float | None = None
    #: The lead time used: the configured one, else the supplier's measured average.
    lead_time_days: float | None = None


class StockReservation(_Data):
    order_id: str
    status: ReservationStatus
    lines: list[OrderLine]
    reason: str | None = None
    shortages: list[Shortage] | None = None


#: Consumed event type -> its `data` model. The worker dispatches on `type`.
CONSUMED_DATA_MODELS: dict[str, type[_Data]] = {
    "order.checkout": OrderCheckout,
    "payment.succeeded": PaymentSucceeded,
    "payment.failed": PaymentFailed,
    "order.cancelled": OrderCancelled,
}

#: Published event type -> its `data` model (what the worker's neighbours read).
PUBLISHED_DATA_MODELS: dict[str, type[_Data]] = {
    "stock.changed": StockChanged,
    "stock.low": StockLow,
    "stock.reservation": StockReservation,
    "stock.anomaly": StockAnomaly,
    "stock.replenished": StockReplenished,
    "stock.reorder": StockReorder,
}

#: Every event type of the contract -> its `data` model: what `parse_record` reads by
#: default and what the JSON Schemas are generated from.
DATA_MODELS: dict[str, type[_Data]] = {**CONSUMED_DATA_MODELS, **PUBLISHED_DATA_MODELS}
