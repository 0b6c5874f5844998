"""/api/inventory: the seed's REST endpoints, translated onto StockCommands and StockQueries.

No rule lives here: a route turns its body into domain requests, calls one command
or query, and turns the answer into the seed's camelCase shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from stock_schemas.events import MAX_QUANTITY

from service.application.queries import StockLevel
from service.domain.model import Order, StockChange
from service.domain.requests import (
    CountRequest,
    ReleaseRequest,
    ReservationLine,
    RestockRequest,
    SaleConfirmation,
    group_reservation_lines,
)
from service.entrypoints.http import models
from service.entrypoints.http.auth import Writer, require_read_token, require_write_token
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, WRITE_ERRORS
from service.entrypoints.http.services import ApiServices, services_of

VariantId = Annotated[
    str, Path(alias="variantId", min_length=1, max_length=200, pattern=r"^[^\x00]+$")
]
ProductId = Annotated[
    str, Path(alias="productId", min_length=1, max_length=200, pattern=r"^[^\x00]+$")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Entries per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=300, description="`nextCursor` of the previous page."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        pattern=r"^[^\x00]+$",
        description="Retry-safe: a request repeated with the same key is applied once "
        "and answered with the changes it made.",
    ),
]
Services = Annotated[ApiServices, Depends(services_of)]

#: Reads take a token only if STOCK_API_READS_REQUIRE_TOKEN: optional, in OpenAPI terms.
#: FastAPI lists the bearer scheme; this adds the empty requirement that makes it optional.
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}


async def require_json_body(request: Request) -> None:
    """A write's body must be sent as JSON: one sent as `text/plain`, or without a
    Content-Type, is 415 `unsupported_media_type`, not a 422 about a body that was
    never parsed. (The body is already read and cached: no second read.)"""
    if not await request.body():
        return  # nothing sent: the validation names what is missing
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    sent = f"not {media_type[:100]}" if media_type else "none was sent"
    raise HTTPException(
        415, f"the body must be sent as `Content-Type: application/json` ({sent})"
    )


reads = APIRouter(dependencies=[Depends(require_read_token)], responses=DOCUMENTED_ERRORS)
writes = APIRouter(
    dependencies=[Depends(require_write_token), Depends(require_json_body)],
    responses=WRITE_ERRORS,
)


@reads.get("/check/{variantId}", response_model=models.Availability, openapi_extra=OPTIONAL_BEARER)
async def check_availability(
    svc: Services,
    variant_id: VariantId,
    quantity: Annotated[int, Query(ge=1, le=MAX_QUANTITY)] = 1,
) -> models.Availability:
    """Can `quantity` units be reserved now? (A hint: the reservation decides.)"""
    level = await svc.queries.stock_level(variant_id)
    return models.Availability(
        available=level.available >= quantity,
        variant_id=level.variant_id,
        requested_quantity=quantity,
        available_quantity=level.available,
        version=level.version,
    )


@writes.post("/reserve", response_model=models.Reservations)
async def reserve(
    svc: Services, caller: Writer, body: models.ReserveBody
) -> models.Reservations:
    """Hold stock for checkouts; lines sharing a `reservationId` form one reservation.

    All or nothing over the whole request. Idempotent per `reservationId`: repeating
    it with the same lines answers the reservation as it stands."""
    settings = svc.settings
    requests = group_reservation_lines(
        (
            ReservationLine(line.reservation_id, line.variant_id, line.quantity, line.expires_at)
            for line in body.reservations
        ),
        now=datetime.now(UTC),
        default_hold=timedelta(seconds=settings.reservation_ttl_seconds),
        max_hold=timedelta(seconds=settings.reservation_max_ttl_seconds),
    )
    orders = await svc.commands.reserve(requests, actor=caller.actor)
    return _reservations(orders)


@writes.post("/confirm-sale", response_model=models.Reservations)
async def confirm_sale(
    svc: Services, caller: Writer, body: models.ConfirmSaleBody
) -> models.Reservations:
    """Sell reserved stock (payment succeeded). A reservation is sold whole; lines named
    in the request are checked against it. All or nothing."""
    expected: dict[str, dict[str, int | None]] = {}
    notes: dict[str, str | None] = {}
    for update in body.updates:
        lines = expected.setdefault(update.reservation_id, {})
        if update.variant_id is not None:
            lines[update.variant_id] = update.quantity
        notes[update.reservation_id] = notes.get(update.reservation_id) or update.reason
    orders = await svc.commands.confirm_sales(
        [SaleConfirmation(r, lines, notes[r]) for r, lines in expected.items()],
        actor=caller.actor,
    )
    return _reservations(orders, notes)


@writes.post("/release", response_model=models.Reservations)
async def release(
    svc: Services, caller: Writer, body: models.ReleaseBody
) -> models.Reservations:
    """Give reserved stock back (cart abandoned, payment given up). All or nothing."""
    notes: dict[str, str | None] = {}
    for update in body.updates:
        notes[update.reservation_id] = notes.get(update.reservation_id) or update.reason
    orders = await svc.commands.release(
        [ReleaseRequest(reservation_id, note) for reservation_id, note in notes.items()],
        actor=caller.actor,
    )
    return _reservations(orders, notes)


@writes.post("/restock", response_model=models.Changes)
async def restock(
    svc: Services,
    caller: Writer,
    body: models.RestockBody,
    idempotency_key: IdempotencyKey = None,
) -> models.Changes:
    """Add received units. A new variant needs `productId`. All or nothing."""
    changes = await svc.commands.restock(
        [
            RestockRequest(
                u.variant_id,
                u.quantity,
                u.product_id,
                u.reason,
                u.reference,
                expected_version=u.expected_version,
                supplier_id=u.supplier_id,
                ordered_at=u.ordered_at,
            )
            for u in body.updates
        ],
        idempotency_key=idempotency_key,
        actor=caller.actor,
    )
    return _changes(changes)


@writes.put("/adjust", response_model=models.Changes)
async def adjust(
    svc: Services,
    caller: Writer,
    body: models.AdjustBody,
    idempotency_key: IdempotencyKey = None,
) -> models.Changes:
    """Set `onHand` to a physical count, with the reason. All or nothing."""
    changes = await svc.commands.adjust(
        [
            CountRequest(
                u.variant_id, u.quantity, u.reason, u.reference, expected_version=u.expected_version
            )
            for u in body.updates
        ],
        idempotency_key=idempotency_key,
        actor=caller.actor,
    )
    return _changes(changes)


@reads.get("/alerts/low-stock", response_model=models.LowStock, openapi_extra=OPTIONAL_BEARER)
async def low_stock(
    svc: Services,
    threshold: Annotated[
        int | None,
        Query(ge=0, le=MAX_QUANTITY, description="Default: each variant's own threshold."),
    ] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> models.LowStock:
    """Variants with `available <= threshold`, least available first."""
    page = await svc.queries.low_stock(threshold, limit, cursor)
    return models.LowStock(
        threshold=threshold,
        variants=[_variant(level) for level in page.items],
        next_cursor=page.next_cursor,
    )


@reads.get(
    "/product/{productId}", response_model=models.ProductReport, openapi_extra=OPTIONAL_BEARER
)
async def product_report(
    svc: Services, product_id: ProductId
) -> models.ProductReport:
    """Total stock, low-stock count and every variant of a product."""
    product = await svc.queries.product(product_id)
    return models.ProductReport(
        product_id=product.product_id,
        total_on_hand=product.on_hand,
        total_reserved=product.reserved,
        total_available=product.available,
        low_stock_count=product.low_stock_count,
        variant_count=len(product.variants),
        variants=[_variant(level) for level in product.variants],
    )


@reads.get("/logs/{variantId}", response_model=models.AuditLog, openapi_extra=OPTIONAL_BEARER)
async def audit_log(
    svc: Services,
    variant_id: VariantId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> models.AuditLog:
    """The audit trail of a variant, newest first; `nextCursor` pages further back."""
    level = await svc.queries.stock_level(variant_id)
    page = await svc.queries.audit_trail(variant_id, limit, cursor)
    return models.AuditLog(
        variant_id=variant_id,
        version=level.version,
        entries=[
            models.AuditEntry(
                version=row["version"],
                change_type=row["change_type"],
                delta_on_hand=row["delta_on_hand"],
                delta_reserved=row["delta_reserved"],
                on_hand_after=row["on_hand_after"],
                reserved_after=row["reserved_after"],
                reason=row["reason"],
                reference=row["reference"],
                source=row["source_event_source"],
                event_id=row["source_event_id"],
                actor=row["actor"],
                created_at=row["created_at"],
                supplier_id=row.get("supplier_id"),
                ordered_at=row.get("ordered_at"),
            )
            for row in page.items
        ],
        next_cursor=page.next_cursor,
    )


def _reservations(
    orders: Iterable[Order], notes: dict[str, str | None] | None = None
) -> models.Reservations:
    """`notes`: the reason each reservation was sent with, echoed as its `note`."""
    notes = notes or {}
    return models.Reservations(
        reservations=[
            models.Reservation(
                reservation_id=order.order_id,
                status=order.phase.value,
                expires_at=order.expires_at,
                lines=[models.Line(variant_id=v, quantity=q) for v, q in order.lines.items()],
                reason=order.reason,
                note=notes.get(order.order_id),
            )
            for order in orders
        ]
    )


def _changes(changes: Iterable[StockChange]) -> models.Changes:
    return models.Changes(
        changes=[
            models.StockChangeOut(
                variant_id=c.variant_id,
                product_id=c.product_id,
                change_type=c.change_type.value,
                delta_on_hand=c.delta_on_hand,
                delta_reserved=c.delta_reserved,
                on_hand=c.on_hand,
                reserved=c.reserved,
                available=c.available,
                version=c.version,
                reason=c.reason,
                reference=c.reference,
            )
            for c in changes
        ]
    )


def _variant(level: StockLevel) -> models.VariantStock:
    return models.VariantStock(
        variant_id=level.variant_id,
        product_id=level.product_id,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        low_stock_threshold=level.low_stock_threshold,
        is_low=level.is_low,
        version=level.version,
        updated_at=level.updated_at,
    )
