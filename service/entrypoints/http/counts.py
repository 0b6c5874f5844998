"""/api/inventory/counts: stock counts (CONTRACT.md, "Stock counts (stocktake)").

Open, record lines, apply, cancel and read a count, translated onto `StockCounts`.
Writes need a `write` token; `approve: true` on an apply needs `admin` (403
`forbidden` otherwise, whatever the count holds). No rule lives here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from stock_schemas.events import Identifier

from service.application.counts import StockCounts
from service.domain.counts import StockCount, shown_lines
from service.entrypoints.http.auth import Reader, Writer, caller_may
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, WRITE_ERRORS, Forbidden
from service.entrypoints.http.inventory import OPTIONAL_BEARER, require_json_body
from service.entrypoints.http.models import (
    MAX_ITEMS_PER_REQUEST,
    Count,
    Text,
    _Answer,
    _Body,
    _items,
)
from service.entrypoints.http.services import services

CountId = Annotated[
    str,
    Path(
        alias="countId",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00]+$",
        description="The `countId` the count was opened with.",
    ),
]
Flag = Annotated[bool, Field(strict=True)]

router = APIRouter()


def stock_counts(request: Request) -> StockCounts:
    """One `StockCounts` per application, built on first use from its services."""
    found: StockCounts | None = getattr(request.app.state, "stock_counts", None)
    if found is None:
        svc = services(request)
        found = StockCounts(
            svc.engine, svc.settings, give_up_after=svc.settings.http_database_timeout_seconds
        )
        request.app.state.stock_counts = found
    return found


Counts = Annotated[StockCounts, Depends(stock_counts)]
JsonBody = Depends(require_json_body)


# ------------------------------------------------------------------ bodies


def _one_of_variants_or_product(schema: dict[str, Any]) -> None:
    """The schema says "one of the two, neither null", so generated clients and
    fuzzers know it (the validators enforce it)."""
    schema["oneOf"] = [{"required": ["variantIds"]}, {"required": ["productId"]}]
    for name in ("variantIds", "productId"):
        schema["properties"][name].pop("default", None)


class OpenCountBody(_Body):
    """Either `variantIds` or `productId` (every variant of the product)."""

    model_config = ConfigDict(json_schema_extra=_one_of_variants_or_product)

    variant_ids: (
        Annotated[list[Identifier], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]
        | SkipJsonSchema[None]
    ) = None
    product_id: Identifier | SkipJsonSchema[None] = None
    blind: Flag = False
    reason: Text | None = None

    @field_validator("variant_ids", "product_id", mode="before")
    @classmethod
    def _left_out_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave it out rather than send null")
        return value

    @model_validator(mode="after")
    def _variants_or_product(self) -> OpenCountBody:
        if (self.variant_ids is None) == (self.product_id is None):
            raise ValueError("give either variantIds or productId")
        return self


class CountedLine(_Body):
    variant_id: Identifier
    #: The quantity found on the shelf.
    counted: Count


class RecordLinesBody(_Body):
    lines: _items(CountedLine)  # type: ignore[valid-type]


class ApplyBody(_Body):
    #: Apply lines out of tolerance too (needs an `admin` token).
    approve: Flag = False


# ----------------------------------------------------------------- answers


class CountLineOut(_Answer):
    variant_id: str
    #: Null until the line is counted.
    counted: int | None
    #: The variant's `onHand` when the line was counted (the snapshot plus every move
    #: since); null until counted, and on a blind count until it is applied.
    expected: int | None
    #: `counted - expected`; null where `expected` is.
    variance: int | None
    within_tolerance: bool | None
    #: The tolerance the line is judged by (the variant's own, else the default).
    tolerance_percent: float | None
    counted_at: datetime | None
    counted_by: str | None
    #: The variant's version after this line's ADJUSTMENT (once applied).
    applied_version: int | None


class StockCountOut(_Answer):
    count_id: str
    status: str
    blind: bool
    reason: str | None
    #: The product the count was opened for, if it was opened for one.
    product_id: str | None
    opened_by: str
    opened_at: datetime
    closed_by: str | None
    closed_at: datetime | None
    #: The admin who approved lines out of tolerance.
    approved_by: str | None
    lines: list[CountLineOut]


def count_answer(count: StockCount) -> StockCountOut:
    """The count as HTTP (and `stock count --json`) shows it."""
    return StockCountOut(
        count_id=count.count_id,
        status=count.status.value,
        blind=count.blind,
        reason=count.reason,
        product_id=count.product_id,
        opened_by=count.opened_by,
        opened_at=count.opened_at,
        closed_by=count.closed_by,
        closed_at=count.closed_at,
        approved_by=count.approved_by,
        lines=[
            CountLineOut(
                variant_id=line.variant_id,
                counted=line.counted,
                expected=line.expected,
                variance=line.variance,
                within_tolerance=line.within_tolerance,
                tolerance_percent=line.tolerance_percent,
                counted_at=line.counted_at,
                counted_by=line.counted_by,
                applied_version=line.applied_version,
            )
            for line in shown_lines(count)
        ],
    )


# ------------------------------------------------------------------ routes


@router.post(
    "/counts",
    response_model=StockCountOut,
    status_code=201,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def open_count(counts: Counts, caller: Writer, body: OpenCountBody) -> StockCountOut:
    """Open a count: snapshot each variant's `onHand`. A variant may be in one open
    count at a time (409 `count_overlap`)."""
    count = await counts.open(
        actor=caller.actor,
        variant_ids=body.variant_ids or (),
        product_id=body.product_id,
        blind=body.blind,
        reason=body.reason,
    )
    return count_answer(count)


@router.put(
    "/counts/{countId}/lines",
    response_model=StockCountOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def record_lines(
    counts: Counts, caller: Writer, count_id: CountId, body: RecordLinesBody
) -> StockCountOut:
    """Record counted quantities; a line may be recounted while the count is OPEN
    (a later line for the same variant in one request wins). All or nothing."""
    count = await counts.record(
        count_id, [(line.variant_id, line.counted) for line in body.lines], actor=caller.actor
    )
    return count_answer(count)


@router.get(
    "/counts/{countId}",
    response_model=StockCountOut,
    responses=DOCUMENTED_ERRORS,
    openapi_extra=OPTIONAL_BEARER,
)
async def get_count(counts: Counts, caller: Reader, count_id: CountId) -> StockCountOut:
    """The count and its lines."""
    return count_answer(await counts.get(count_id))


@router.post(
    "/counts/{countId}/apply",
    response_model=StockCountOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def apply_count(
    counts: Counts, caller: Writer, count_id: CountId, body: ApplyBody | None = None
) -> StockCountOut:
    """Move each counted line's `onHand` by its variance (uncounted lines are skipped),
    all or nothing. Lines out of tolerance need `approve: true` from an admin token.
    Applying an applied count answers it."""
    approve = body is not None and body.approve
    if approve and not caller_may(caller, "admin"):
        raise Forbidden(
            f"token {caller.token_name!r} has scope {caller.scope!r}; approve needs 'admin'"
        )
    return count_answer(await counts.apply(count_id, actor=caller.actor, approve=approve))


@router.post(
    "/counts/{countId}/cancel",
    response_model=StockCountOut,
    dependencies=[JsonBody],
    responses=WRITE_ERRORS,
)
async def cancel_count(counts: Counts, caller: Writer, count_id: CountId) -> StockCountOut:
    """Close the count without applying anything. An applied count cannot be cancelled."""
    return count_answer(await counts.cancel(count_id, actor=caller.actor))
