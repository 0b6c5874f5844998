"""/dashboard: pages, fragments, chart data and the vendored static files.

Three kinds of route, and who may read them (docs/design.md, "The dashboard"):

* pages (`/dashboard`, `/dashboard/variants/{id}`, `/dashboard/counts`, ...): public
  shells, the same for everyone; they hold no stock data, only the layout and the id
  named in their own URL;
* fragments (`/dashboard/fragments/...`, HTML) and data (`/dashboard/data/...`, JSON,
  PNG): the stock data, behind the same read rule as the API (a `read` token when
  STOCK_API_READS_REQUIRE_TOKEN, else open), fetched by the page's script with the token
  as an `Authorization: Bearer` header;
* `/dashboard/static/{name}`: the page's own script and style, htmx and Chart.js.

No write lives here: the page's forms send JSON to the API's own routes (restock,
adjust, policy, counts) with the bearer header, so every rule and scope is the API's.
Everything user-provided is escaped by Jinja2's autoescape; a Content-Security-Policy
allows scripts from this origin only.
"""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates

from service.adapters.database import retry_transient
from service.application.dashboard_reads import SERIES_LIMIT, DashboardReads
from service.application.reconciliation import latest_run
from service.application.reports import latest_report
from service.entrypoints.http.auth import (
    Reader,
    _bearer,
    require_read_token,
    token_matching,
)
from service.entrypoints.http.counts import CountId, Counts, count_answer
from service.entrypoints.http.errors import Unauthorized, error_response
from service.entrypoints.http.inventory import Cursor, VariantId
from service.entrypoints.http.policies import VariantPolicies
from service.entrypoints.http.policies import _answer as policy_answer
from service.entrypoints.http.reports import NO_REPORT
from service.entrypoints.http.reports import _answer as report_answer
from service.entrypoints.http.services import ApiServices, services

Services = Annotated[ApiServices, Depends(services)]
ReportKind = Literal["daily", "weekly", "monthly"]

_PACKAGE = resources.files(__package__)


def _segment(value: object) -> str:
    """A value as one URL path segment (a `/` or `?` in an id stays inside it)."""
    return quote(str(value), safe="")


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: object) -> object:
    """Floats to at most 3 decimals; anything else as it is (escaped by the template)."""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, Decimal):
        return _number(float(value))
    return "" if value is None else value


def _words(name: str) -> str:
    """`unitsSold` -> `units sold`."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: " " + m.group(1).lower(), name)


def _chart_title(file_name: str) -> str:
    return file_name.removesuffix(".png").replace("_", " ").capitalize()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_PACKAGE / "templates")),
        # Every `{{ }}` is HTML-escaped: variant ids, reasons, actors and references
        # are anyone's text.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        segment=_segment, when=_when, number=_number, words=_words, chart_title=_chart_title
    )
    return env


_TEMPLATES = Jinja2Templates(env=_environment())

#: The files under /dashboard/static: our own and the vendored ones (static/VENDORED.md).
STATIC_TYPES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "htmx.min.js": "text/javascript; charset=utf-8",
    "chart.umd.js": "text/javascript; charset=utf-8",
}

#: Scripts and styles from this origin only (no inline script, no eval): a reason
#: that slipped past escaping still could not run. Images may be blobs: the report
#: charts are fetched with the token and shown from memory.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Fragments and data are stock figures: never kept by a cache.
_DATA_HEADERS = {**_SECURITY_HEADERS, "Cache-Control": "no-store"}

#: Chart windows the variant page offers, in hours (the data route takes any up to a year).
CHART_WINDOWS = {1: "last hour", 24: "last day", 168: "last 7 days", 720: "last 30 days",
                 2160: "last 90 days"}
AUDIT_PAGE = 20

router = APIRouter(include_in_schema=False)


def dashboard_reads(request: Request) -> DashboardReads:
    found: DashboardReads | None = getattr(request.app.state, "dashboard_reads", None)
    if found is None:
        svc = services(request)
        found = DashboardReads(svc.engine, svc.settings)
        request.app.state.dashboard_reads = found
    return found


Reads = Annotated[DashboardReads, Depends(dashboard_reads)]


async def _retrying(svc: ApiServices, what: str, attempt: Any) -> Any:
    """A database outage is waited out as the API's reads do, then 503."""
    return await retry_transient(
        attempt,
        what=what,
        initial_backoff=svc.settings.retry_initial_backoff_seconds,
        max_backoff=svc.settings.retry_max_backoff_seconds,
        give_up_after=svc.settings.http_database_timeout_seconds,
    )


def _render(
    request: Request, template: str, context: dict[str, Any], *, data: bool = True
) -> Response:
    return _TEMPLATES.TemplateResponse(
        request,
        template,
        context,
        headers=_DATA_HEADERS if data else _SECURITY_HEADERS,
    )


# --------------------------------------------------------------------------- pages


def _page(request: Request, template: str, **context: Any) -> Response:
    return _render(request, template, {"page": template.removesuffix(".html"), **context},
                   data=False)


@router.get("")
async def overview_page(request: Request) -> Response:
    return _page(request, "overview.html")


@router.get("/variants/{variantId}")
async def variant_page(request: Request, variant_id: VariantId) -> Response:
    return _page(request, "variant.html", variant_id=variant_id, windows=CHART_WINDOWS)


@router.get("/counts")
async def counts_page(request: Request) -> Response:
    return _page(request, "counts.html")


@router.get("/counts/{countId}")
async def count_page(request: Request, count_id: CountId) -> Response:
    return _page(request, "count.html", count_id=count_id)


@router.get("/reports")
async def reports_page(request: Request, kind: ReportKind = "weekly") -> Response:
    return _page(request, "reports.html", kind=kind, kinds=("daily", "weekly", "monthly"))


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        return error_response(404, "not_found", "no such file", None)
    body = (_PACKAGE / "static" / name).read_bytes()
    return Response(
        body,
        media_type=media_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"},
    )


# ----------------------------------------------------------------------- fragments


@router.get("/fragments/overview", dependencies=[Depends(require_read_token)])
async def overview_fragment(request: Request, svc: Services, reads: Reads) -> Response:
    attention = await _retrying(svc, "dashboard attention", reads.attention)
    anomalies = await _retrying(svc, "dashboard anomalies", reads.latest_anomalies)
    reconciliation = await _retrying(
        svc, "dashboard reconciliation", lambda: latest_run(svc.engine)
    )
    return _render(
        request,
        "fragments/overview.html",
        {
            "attention": attention,
            "anomalies": anomalies,
            "reconciliation": reconciliation,
            "default_threshold": svc.settings.low_stock_threshold,
        },
    )


@router.get("/fragments/variants/{variantId}/levels", dependencies=[Depends(require_read_token)])
async def levels_fragment(
    request: Request, svc: Services, found: VariantPolicies, variant_id: VariantId
) -> Response:
    level = await svc.queries.stock_level(variant_id)
    policy = await found.get(variant_id)
    return _render(request, "fragments/levels.html", {"level": level, "policy": policy})


@router.get("/fragments/variants/{variantId}/audit", dependencies=[Depends(require_read_token)])
async def audit_fragment(
    request: Request, svc: Services, variant_id: VariantId, cursor: Cursor = None
) -> Response:
    page = await svc.queries.audit_trail(variant_id, AUDIT_PAGE, cursor)
    return _render(
        request,
        "fragments/audit.html",
        {"variant_id": variant_id, "entries": page.items, "next_cursor": page.next_cursor,
         "first_page": cursor is None},
    )


@router.get("/fragments/variants/{variantId}/policy", dependencies=[Depends(require_read_token)])
async def policy_fragment(
    request: Request, found: VariantPolicies, variant_id: VariantId
) -> Response:
    policy = policy_answer(await found.get(variant_id))
    return _render(request, "fragments/policy.html", {"policy": policy})


@router.get("/fragments/counts", dependencies=[Depends(require_read_token)])
async def open_counts_fragment(request: Request, svc: Services, reads: Reads) -> Response:
    counts = await _retrying(svc, "dashboard open counts", reads.open_counts)
    return _render(request, "fragments/open_counts.html", {"counts": counts})


@router.get("/fragments/counts/{countId}", dependencies=[Depends(require_read_token)])
async def count_fragment(request: Request, counts: Counts, count_id: CountId) -> Response:
    count = count_answer(await counts.get(count_id))
    return _render(request, "fragments/count.html", {"count": count})


@router.get("/fragments/reports/{kind}", dependencies=[Depends(require_read_token)])
async def report_fragment(request: Request, svc: Services, kind: ReportKind) -> Response:
    stored = await _retrying(svc, "latest report", lambda: latest_report(svc.engine, kind))
    report = None if stored is None else report_answer(stored)
    charts = [] if report is None else _charts_here(report.files)
    return _render(
        request,
        "fragments/report.html",
        {"kind": kind, "report": report, "charts": charts, "no_report": NO_REPORT},
    )


# ---------------------------------------------------------------------------- data


@router.get("/data/whoami")
async def whoami(
    svc: Services, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> JSONResponse:
    """Who the page's token is (so the page can say which forms it may send), and
    whether reads need a token. A token sent must be valid (401 otherwise)."""
    settings = svc.settings
    name = scope = None
    if credentials is not None:
        token = token_matching(credentials.credentials, settings.api_token_entries)
        if token is None:
            raise Unauthorized("the bearer token is not valid")
        name, scope = token.name, token.scope
    elif settings.api_reads_require_token:
        raise Unauthorized("reads need a token (STOCK_API_READS_REQUIRE_TOKEN): paste one")
    return JSONResponse(
        {"tokenName": name, "scope": scope,
         "readsRequireToken": settings.api_reads_require_token},
        headers=_DATA_HEADERS,
    )


@router.get("/data/variants/{variantId}/levels", dependencies=[Depends(require_read_token)])
async def level_series(
    svc: Services,
    reads: Reads,
    caller: Reader,
    variant_id: VariantId,
    hours: Annotated[int, Query(ge=1, le=24 * 366)] = 24,
) -> JSONResponse:
    """On hand and available over the last `hours` as a step function, for the variant
    page's chart: the level at the window's start, each change in the window (at most
    SERIES_LIMIT: the latest), and the current level at its end."""
    end = datetime.now(UTC)
    start = end - timedelta(hours=hours)
    series = await _retrying(
        svc, "level series", lambda: reads.level_series(variant_id, start, end)
    )
    return JSONResponse(
        {
            "variantId": series.variant_id,
            "from": series.start.isoformat(),
            "to": series.end.isoformat(),
            "changes": series.changes,
            "levelSince": None if series.level_since is None else series.level_since.isoformat(),
            "truncated": series.truncated,
            "limit": SERIES_LIMIT,
            "points": [
                {
                    "t": point.at.isoformat(),
                    "version": point.version,
                    "onHand": point.on_hand,
                    "available": point.available,
                }
                for point in series.points
            ],
        },
        headers=_DATA_HEADERS,
    )


@router.get(
    "/data/reports/{kind}/charts/{name}", dependencies=[Depends(require_read_token)]
)
async def report_chart(svc: Services, kind: ReportKind, name: str) -> Response:
    """A PNG chart of the latest report of `kind`, read from where the report was
    written, when that is this host: only a file the report lists."""
    stored = await _retrying(svc, "latest report", lambda: latest_report(svc.engine, kind))
    charts = [] if stored is None else _charts_here(stored.files)
    if stored is None or name not in charts:
        return error_response(404, "not_found", f"no chart {name[:100]!r} here", None)
    body = (Path(stored.files["directory"]) / name).read_bytes()
    return Response(body, media_type="image/png", headers=_DATA_HEADERS)


def _charts_here(files: dict[str, Any]) -> list[str]:
    """The report's chart files that this process can read (written on this host)."""
    directory = files.get("directory")
    if not directory or files.get("host") != socket.gethostname():
        return []
    return [
        name
        for name in files.get("charts") or []
        if isinstance(name, str)
        and name.endswith(".png")
        and "/" not in name
        and (Path(directory) / name).is_file()
    ]
