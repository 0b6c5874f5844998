"""/api/inventory/reconciliation: run the check (admin), read the latest run (read).

CONTRACT.md, "Reconciliation". The check itself is `application.reconciliation`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from service.application.reconciliation import (
    DiscrepancyKind,
    ReconciliationReport,
    latest_run,
    reconcile,
)
from service.entrypoints.http.auth import Admin, require_read_token
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, error_response
from service.entrypoints.http.inventory import OPTIONAL_BEARER
from service.entrypoints.http.models import ErrorBody
from service.entrypoints.http.services import ApiServices, services

Services = Annotated[ApiServices, Depends(services)]

#: `GET reconciliation/latest` before any run.
NO_RUN_CODE = "no_reconciliation_run"


class _Answer(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Discrepancy(_Answer):
    variant_id: str
    kind: DiscrepancyKind
    #: What the other side of the invariant says: the ledger's on_hand, the held lines...
    expected: int
    #: What the variant row holds.
    actual: int


class ReconciliationRun(_Answer):
    run_id: str
    #: Who asked: `api:<token name>`, `cli:<user>`, `stock-service` (the scheduled job).
    actor: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
    checked_variants: int
    discrepancies: list[Discrepancy]


router = APIRouter(responses=DOCUMENTED_ERRORS)


@router.post("/reconciliation", response_model=ReconciliationRun)
async def run_reconciliation(
    svc: Services, caller: Admin, full: bool = False
) -> ReconciliationRun:
    """Check every variant against the invariants (needs an `admin` token).

    Nothing is repaired: each discrepancy is listed here, kept with the run, and
    published as `stock.anomaly` (`ledger_mismatch`, `reference` the run id).
    `full=true` reads every variant's whole audit log instead of what follows its
    checkpoint: the same checks, at the cost of the whole history."""
    report = await reconcile(
        svc.engine,
        svc.settings,
        caller.actor,
        full=full,
        give_up_after=svc.settings.http_database_timeout_seconds,
    )
    return _run(report)


@router.get(
    "/reconciliation/latest",
    response_model=ReconciliationRun,
    dependencies=[Depends(require_read_token)],
    openapi_extra=OPTIONAL_BEARER,
    responses={
        404: {"model": ErrorBody, "description": f"`{NO_RUN_CODE}`: no run has finished yet."}
    },
)
async def latest_reconciliation(svc: Services) -> ReconciliationRun | JSONResponse:
    """The run that finished last, whoever started it; 404 `no_reconciliation_run`
    before the first."""
    report = await latest_run(svc.engine)
    if report is None:
        return error_response(404, NO_RUN_CODE, "no reconciliation has run yet")
    return _run(report)


def _run(report: ReconciliationReport) -> ReconciliationRun:
    return ReconciliationRun(
        run_id=report.run_id,
        actor=report.actor,
        started_at=report.started_at,
        finished_at=report.finished_at,
        checked_variants=report.checked_variants,
        discrepancies=[
            Discrepancy(
                variant_id=d.variant_id, kind=d.kind, expected=d.expected, actual=d.actual
            )
            for d in report.discrepancies
        ],
    )
