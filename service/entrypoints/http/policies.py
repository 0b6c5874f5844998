"""`GET`/`PUT /api/inventory/variants/{variantId}/policy` (CONTRACT.md, "Policies,
reorder and suppliers"), translated onto `service.application.policies`.

A read needs a `read` token only if STOCK_API_READS_REQUIRE_TOKEN; a `PUT` needs
`write`. The answer shows the policy as configured (the fields a `PUT` takes, null
where unset) and, under `effective`, what is in effect: the defaults, the computed
reorder point and the figures it comes from. No rule lives here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send
from stock_schemas.events import MAX_QUANTITY, Identifier

from service.application.policies import Policies, PolicyView
from service.entrypoints.http.auth import Reader, Writer
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, WRITE_ERRORS
from service.entrypoints.http.inventory import OPTIONAL_BEARER, VariantId, require_json_body
from service.entrypoints.http.models import _Answer, _Body
from service.entrypoints.http.services import services

#: The methods of the policy path (its GET and PUT are two routes).
POLICY_METHODS = ("GET", "PUT")


class _PolicyRoute(APIRoute):
    """A 405 on the policy path lists both of its methods in `Allow`: Starlette would
    name only those of the first route that matched the path."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in POLICY_METHODS:
            raise HTTPException(status_code=405, headers={"Allow": ", ".join(POLICY_METHODS)})
        await super().handle(scope, receive, send)


router = APIRouter(route_class=_PolicyRoute)

Units = Annotated[int, Field(ge=0, le=MAX_QUANTITY, strict=True)]
Days = Annotated[float, Field(ge=0, le=365, strict=True, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, strict=True, allow_inf_nan=False)]


def policies(request: Request) -> Policies:
    """One `Policies` per application, built on first use from its services."""
    found: Policies | None = getattr(request.app.state, "policies", None)
    if found is None:
        svc = services(request)
        found = Policies(
            svc.engine, svc.settings, give_up_after=svc.settings.http_database_timeout_seconds
        )
        request.app.state.policies = found
    return found


VariantPolicies = Annotated[Policies, Depends(policies)]


class PolicyBody(_Body):
    """The fields to set; a field sent as null is cleared (back to the default, or the
    computed value); a field not sent stays as it is."""

    #: `stock.low` when `available` falls to this or below (default STOCK_LOW_STOCK_THRESHOLD).
    low_stock_threshold: Units | None = None
    #: `stock.reorder` when `available` falls to this or below; unset: the computed one.
    reorder_point: Units | None = None
    #: A reorder suggests ordering up to this; must be above the reorder point.
    max_stock: Annotated[int, Field(ge=1, le=MAX_QUANTITY, strict=True)] | None = None
    #: Days from order to delivery; unset: the supplier's measured average.
    lead_time_days: Days | None = None
    supplier_id: Identifier | None = None
    #: A stock count's tolerance in percent (default STOCK_COUNT_TOLERANCE_PERCENT).
    tolerance_percent: Percent | None = None


class EffectivePolicy(_Answer):
    low_stock_threshold: int
    tolerance_percent: float
    #: The configured reorder point, else the computed one; null: no `stock.reorder`.
    reorder_point: int | None
    reorder_point_source: Literal["configured", "computed"] | None
    #: `averageDailyDemand * L + 1.65 * demandStdev * sqrt(L)`, rounded up; null
    #: without a lead time.
    computed_reorder_point: int | None
    #: The configured lead time, else the supplier's measured average.
    lead_time_days: float | None
    #: The average of `created_at - orderedAt` of the supplier's restocks, in days.
    measured_lead_time_days: float | None
    #: Units sold per day over the last 30 days; null until first computed.
    average_daily_demand: float | None
    demand_stdev: float | None
    available: int
    #: `available / averageDailyDemand`; null without demand.
    days_of_cover: float | None
    #: What a `stock.reorder` would suggest at this `available`; null without a point.
    suggested_quantity: int | None
    #: Since when `available` has been 0; null while in stock.
    out_of_stock_since: datetime | None


class PolicyAnswer(_Answer):
    variant_id: str
    product_id: str
    #: As configured (null: unset), the fields a PUT takes.
    low_stock_threshold: int | None
    reorder_point: int | None
    max_stock: int | None
    lead_time_days: float | None
    supplier_id: str | None
    tolerance_percent: float | None
    effective: EffectivePolicy


def _answer(view: PolicyView) -> PolicyAnswer:
    return PolicyAnswer(
        variant_id=view.variant_id,
        product_id=view.product_id,
        low_stock_threshold=view.low_stock_threshold,
        reorder_point=view.reorder_point,
        max_stock=view.max_stock,
        lead_time_days=view.lead_time_days,
        supplier_id=view.supplier_id,
        tolerance_percent=view.tolerance_percent,
        effective=EffectivePolicy(
            low_stock_threshold=view.effective_low_stock_threshold,
            tolerance_percent=view.effective_tolerance_percent,
            reorder_point=view.effective_reorder_point,
            reorder_point_source=view.reorder_point_source,
            computed_reorder_point=view.computed_reorder_point,
            lead_time_days=view.effective_lead_time_days,
            measured_lead_time_days=view.measured_lead_time_days,
            average_daily_demand=view.average_daily_demand,
            demand_stdev=view.demand_stdev,
            available=view.available,
            days_of_cover=view.days_of_cover,
            suggested_quantity=view.suggested_quantity,
            out_of_stock_since=view.out_of_stock_since,
        ),
    )


@router.get(
    "/variants/{variantId}/policy",
    response_model=PolicyAnswer,
    responses=DOCUMENTED_ERRORS,
    openapi_extra=OPTIONAL_BEARER,
)
async def get_policy(
    found: VariantPolicies, caller: Reader, variant_id: VariantId
) -> PolicyAnswer:
    """The variant's policy, as configured and in effect."""
    return _answer(await found.get(variant_id))


@router.put(
    "/variants/{variantId}/policy",
    response_model=PolicyAnswer,
    dependencies=[Depends(require_json_body)],
    responses=WRITE_ERRORS,
)
async def put_policy(
    found: VariantPolicies, caller: Writer, variant_id: VariantId, body: PolicyBody
) -> PolicyAnswer:
    """Set the fields sent (null clears one; the others stay). `maxStock` must be above
    the reorder point (422 `invalid_policy`). The variant's figures are recomputed at
    once; a new reorder point alerts on the next change that crosses it."""
    values = {name: getattr(body, name) for name in body.model_fields_set}
    return _answer(await found.put(variant_id, values))
