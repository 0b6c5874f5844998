"""`GET /api/inventory/reports/latest/{kind}`: the figures of the latest daily, weekly or
monthly report (service/application/reports.py), as the scheduled job or `stock report`
kept them in `reports`; 404 `no_report` before the first of that kind.

A read: open unless STOCK_API_READS_REQUIRE_TOKEN. The latest is the report of the
latest period (a period written again replaces its figures). The files themselves stay
where the process that wrote them put them (`files.directory` on `files.host`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from service.adapters.database import retry_transient
from service.application.reports import StoredReport, latest_report
from service.entrypoints.http.auth import require_read_token
from service.entrypoints.http.errors import DOCUMENTED_ERRORS, error_response
from service.entrypoints.http.models import ErrorBody, _Answer
from service.entrypoints.http.services import ApiServices, services

Services = Annotated[ApiServices, Depends(services)]

#: 404: no report of this kind has been written yet.
NO_REPORT = "no_report"

#: Reads take a token only if STOCK_API_READS_REQUIRE_TOKEN.
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}

router = APIRouter(responses=DOCUMENTED_ERRORS)


class ReportTable(_Answer):
    title: str
    #: The keys of each row, in the CSV file's order.
    columns: list[str]
    #: At most 1000 rows (the CSV file has every row).
    rows: list[dict[str, Any]]
    rows_total: int


class ReportAnswer(_Answer):
    kind: Literal["daily", "weekly", "monthly"]
    #: `2026-11-30`, `2026-W48` or `2026-11`.
    period: str
    period_start: AwareDatetime
    #: The report's `at`: the period's end, or earlier for a period so far.
    period_end: AwareDatetime
    #: False for a period so far (written before it ended).
    complete: bool
    generated_at: AwareDatetime
    summary: dict[str, Any]
    #: By file name without `.csv`: low_stock; top_movers, available_top_movers,
    #: stockouts, stockouts_per_day, anomalies, reconciliation, count_accuracy; abc,
    #: abc_classes, reorder_points, lead_times.
    tables: dict[str, ReportTable]
    #: `directory` and `host` where they were written, `markdown`, `csv`, `charts`, and
    #: `chartsSkipped` (why there are none: matplotlib missing), or null.
    files: dict[str, Any]


@router.get(
    "/reports/latest/{kind}",
    response_model=ReportAnswer,
    dependencies=[Depends(require_read_token)],
    openapi_extra=OPTIONAL_BEARER,
    responses={
        404: {
            "model": ErrorBody,
            "description": f"`{NO_REPORT}`: no report of this kind has been written yet.",
        }
    },
)
async def latest(
    svc: Services, kind: Literal["daily", "weekly", "monthly"]
) -> ReportAnswer | JSONResponse:
    """The latest report of `kind`: its period, summary and tables (every figure of its
    Markdown and CSV files) and where its files were written."""
    stored = await retry_transient(
        lambda: latest_report(svc.engine, kind),
        what="latest report",
        initial_backoff=svc.settings.retry_initial_backoff_seconds,
        max_backoff=svc.settings.retry_max_backoff_seconds,
        give_up_after=svc.settings.http_database_timeout_seconds,
    )
    if stored is None:
        return error_response(
            404, NO_REPORT, f"no {kind} report has been written yet", {"kind": kind}
        )
    return _answer(stored)


def _answer(stored: StoredReport) -> ReportAnswer:
    figures = stored.figures
    return ReportAnswer.model_validate(
        {
            "kind": stored.kind,
            "period": figures["period"],
            "period_start": stored.period_start,
            "period_end": stored.period_end,
            "complete": figures["complete"],
            "generated_at": stored.generated_at,
            "summary": figures["summary"],
            "tables": {
                name: {
                    "title": table["title"],
                    "columns": table["columns"],
                    "rows": table["rows"],
                    "rows_total": table["rowsTotal"],
                }
                for name, table in figures["tables"].items()
            },
            "files": stored.files,
        }
    )
