"""`GET /api/inventory/analytics`: each variant's figures over a window (CONTRACT.md,
"Analytics"; every formula in docs/analytics.md), from service/application/analytics.py.

A read: open unless STOCK_API_READS_REQUIRE_TOKEN. The window is [from, to): `to`
defaults to now and `from` to 30 days before `to`; a window that is empty or reversed,
longer than 366 days, ends in the future or starts before 1970 is 422
`invalid_window`. Without `variantId`/`productId` every variant is in scope; either way
the answer is one page of at most `limit` (default 100, at most 1000) variants in
variant_id order, and `nextAfter`, passed as `after`, gives the next page.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BeforeValidator, Field, StringConstraints

from service.application.analytics import (
    DEFAULT_LIMIT,
    MAX_IDS,
    MAX_LIMIT,
    AnalyticsQuery,
    InvalidWindow,
    VariantFigures,
    analytics,
)
from service.entrypoints.http.auth import require_read_token
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, error_response
from service.entrypoints.http.models import ErrorBody, _Answer
from service.entrypoints.http.services import ApiServices, services

Services = Annotated[ApiServices, Depends(services)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _date_time_text(value: object) -> object:
    """An ISO date and time, as the schema says: not a number of seconds (which pydantic
    would take as a Unix time)."""
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("expected an ISO 8601 date and time with an offset")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]

#: 422: a window the figures cannot be computed over (application.analytics.InvalidWindow).
INVALID_WINDOW = "invalid_window"
assert InvalidWindow.code == INVALID_WINDOW

#: Reads take a token only if STOCK_API_READS_REQUIRE_TOKEN.
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}

router = APIRouter(responses=DOCUMENTED_ERRORS)


class VariantAnalytics(_Answer):
    variant_id: str
    product_id: str
    #: SALE units in the window (positive).
    units_sold: int
    #: RETURN units in the window.
    units_returned: int
    #: RESTOCK units in the window.
    units_restocked: int
    #: ADJUSTMENT units in the window, signed (a write-off is negative).
    net_adjusted: int
    #: Time-weighted over the window.
    average_on_hand: float
    average_available: float
    #: unitsSold / averageOnHand; null when that average is 0.
    turnover: float | None
    #: unitsSold / (unitsSold + onHandAtTo); null when both are 0.
    sell_through: float | None
    #: Times `available` reached 0 from above in the window.
    stockouts: int
    out_of_stock_seconds: float
    #: The share of the window with `available > 0`.
    in_stock_rate: float
    #: availableAtTo / (unitsSoldLast30Days / 30); null without sales in those 30 days.
    days_of_cover: float | None
    #: By units sold over the 90 days before `to`, across every variant.
    abc_class: Literal["A", "B", "C"]
    #: Share of the count lines applied in the window that were within tolerance;
    #: null without any.
    accuracy: float | None
    on_hand_at_from: int
    on_hand_at_to: int
    available_at_to: int
    #: Audit rows in the window.
    changes: int
    units_sold_last_30_days: int
    units_sold_last_90_days: int
    count_lines: int
    count_lines_within_tolerance: int


class AnalyticsAnswer(_Answer):
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    window_seconds: float
    variants: list[VariantAnalytics]
    #: Pass as `after` for the next page; null on the last one.
    next_after: str | None


@router.get(
    "/analytics",
    response_model=AnalyticsAnswer,
    dependencies=[Depends(require_read_token)],
    openapi_extra=OPTIONAL_BEARER,
    responses={
        422: {
            "model": ErrorBody,
            "description": f"`{INVALID_WINDOW}`: `from` not before `to`, a window longer than "
            "366 days, a `to` in the future or a `from` before 1970. `validation_failed`: a "
            "parameter breaks "
            "the schema.",
        }
    },
)
async def get_analytics(
    svc: Services,
    from_: Annotated[
        Time | None,
        Query(alias="from", description="Start of the window (included). Default: `to` - 30 days."),
    ] = None,
    to: Annotated[
        Time | None,
        Query(description="End of the window (excluded), not in the future. Default: now."),
    ] = None,
    variant_id: Annotated[
        list[Id] | None,
        Query(alias="variantId", max_length=MAX_IDS, description="Repeatable."),
    ] = None,
    product_id: Annotated[
        list[Id] | None,
        Query(alias="productId", max_length=MAX_IDS, description="Repeatable."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Variants per page.")
    ] = DEFAULT_LIMIT,
    after: Annotated[
        str | None,
        Query(max_length=200, pattern=r"^[^\x00]*$",
              description="`nextAfter` of the previous page."),
    ] = None,
) -> AnalyticsAnswer | JSONResponse:
    """Each variant's figures over [from, to), from the audit log: units moved,
    time-weighted levels, stockouts and time out of stock, turnover, sell-through,
    days of cover, ABC class and count accuracy (formulas: docs/analytics.md)."""
    query = AnalyticsQuery(
        start=from_,
        end=to,
        variant_ids=tuple(variant_id or ()),
        product_ids=tuple(product_id or ()),
        limit=limit,
        after=after or "",
    )
    try:
        report = await analytics(svc.engine, query)
    except InvalidWindow as error:
        return error_response(422, INVALID_WINDOW, str(error), error.details)
    return AnalyticsAnswer.model_validate(
        {
            "from": report.start,
            "to": report.end,
            "window_seconds": report.window_seconds,
            "variants": [_variant(v) for v in report.variants],
            "next_after": report.next_after,
        }
    )


def _variant(figures: VariantFigures) -> VariantAnalytics:
    return VariantAnalytics.model_validate(
        {name: getattr(figures, name) for name in figures.__slots__}
    )
