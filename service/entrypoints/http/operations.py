"""Operator endpoints: /healthz, /readyz, /metrics, /asyncapi. Open, like a metrics port.

/readyz names what it checked and nothing more: no URLs, hosts or credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.adapters.migrate import schema_problem
from service.adapters.stats import database_answers, read_figures
from service.adapters.tables import ORDER_PHASES
from service.entrypoints.asyncapi import asyncapi_specification
from service.entrypoints.http.errors import error_response
from service.entrypoints.http.services import ApiServices, services

log = logging.getLogger(__name__)
router = APIRouter()
Services = Annotated[ApiServices, Depends(services)]

_CHECK_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers. (`HEAD` too.)"""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Some check failed."}})
async def readyz(svc: Services) -> JSONResponse:
    """Database reachable and migrated, broker reachable, consumer assigned partitions.
    (`HEAD` too.)"""
    checks = dict(
        zip(
            ("database", "schema", "broker"),
            await asyncio.gather(
                _check(database_answers(svc.engine)),
                _schema_check(svc),
                _broker_check(svc),
            ),
            strict=True,
        )
    )
    if svc.worker is not None:
        assigned = svc.worker.consumer_assignment()
        checks["consumer"] = (
            {"ok": True, "partitions": len(assigned)}
            if assigned
            else {"ok": False, "error": "no partitions assigned (joining the group?)"}
        )
    failed = [name for name, check in checks.items() if not check["ok"]]
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(
        503, "not_ready", f"not ready: {', '.join(failed)}", {"checks": checks}
    )


# HEAD answers like GET (the same checks, status and headers); the server sends no body.
# Out of the OpenAPI document, where a second operation would repeat the GET's id.
for _path, _endpoint in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)


async def _check(probe: Any) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe, _CHECK_SECONDS)
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True}


async def _schema_check(svc: ApiServices) -> dict[str, Any]:
    try:
        problem = await asyncio.wait_for(schema_problem(svc.engine), _CHECK_SECONDS)
    except Exception as error:
        return {"ok": False, "error": type(error).__name__}
    return {"ok": False, "error": problem} if problem else {"ok": True}


async def _broker_check(svc: ApiServices) -> dict[str, Any]:
    if await svc.feed.broker_reachable(_CHECK_SECONDS):
        return {"ok": True}
    return {"ok": False, "error": "no metadata from the broker"}


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(svc: Services) -> Response:
    """Prometheus text format."""
    await _refresh_scraped_figures(svc)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _refresh_scraped_figures(svc: ApiServices) -> None:
    if svc.worker is not None:
        metrics.CONSUMER_LAG.clear()
        for tp, lag in (await svc.worker.consumer_lag()).items():
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
    now = time.monotonic()
    if now - svc.figures_read_at < svc.settings.metrics_refresh_seconds:
        return
    svc.figures_read_at = now
    try:
        figures = await asyncio.wait_for(read_figures(svc.engine), _CHECK_SECONDS + 1)
    except Exception as error:
        # The figures stay as last read; stock_db_figures_read_timestamp_seconds shows it.
        log.warning("metrics: database figures not read (%s)", type(error).__name__)
        return
    metrics.DB_FIGURES_READ_AT.set_to_current_time()
    metrics.OUTBOX_BACKLOG.set(figures.outbox_backlog)
    metrics.DEAD_LETTERS.set(figures.dead_letters)
    for phase in ORDER_PHASES:
        metrics.RESERVATIONS.labels(phase).set(figures.orders_by_phase.get(phase, 0))


@router.get("/asyncapi.json")
async def asyncapi_json(svc: Services) -> Any:
    """The Kafka side (topics, CloudEvent payloads) as an AsyncAPI 3 document."""
    return asyncapi_specification(svc.settings).to_jsonable()


@router.get("/asyncapi", response_class=HTMLResponse)
async def asyncapi_page(svc: Services) -> HTMLResponse:
    """The AsyncAPI document rendered (the renderer loads from a CDN)."""
    from faststream.specification import get_asyncapi_html

    page = get_asyncapi_html(asyncapi_specification(svc.settings), try_it_out_path=None)
    return HTMLResponse(page)
