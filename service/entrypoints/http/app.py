"""The FastAPI application: /api/inventory, the live stream, operator endpoints, docs."""

from __future__ import annotations

from fastapi import FastAPI

from service import tracing
from service.entrypoints.asyncapi import package_version
from service.entrypoints.http import counts, inventory, operations, reconciliation, stream
from service.entrypoints.http import websocket as websocket_stream
from service.entrypoints.http.analytics import router as analytics_router
from service.entrypoints.http.dashboard import router as dashboard_router
from service.entrypoints.http.errors import install_error_handlers
from service.entrypoints.http.jobs import router as jobs_router
from service.entrypoints.http.middleware import BodySizeLimit, Contain, Cors, Observe
from service.entrypoints.http.policies import router as policies_router
from service.entrypoints.http.reports import router as reports_router
from service.entrypoints.http.services import ApiServices

DESCRIPTION = """
Stock levels, reservations and the audit trail of the stock reservation worker.

* Writes need `Authorization: Bearer <token>` (a token from `STOCK_API_TOKENS`).
* Errors are `{"code", "message", "details"}`; insufficient stock is 409 with the shortages.
* The Kafka side is described at [/asyncapi](/asyncapi) ([JSON](/asyncapi.json)).
* Live changes: `GET /api/inventory/stream` (Server-Sent Events) and the WebSocket
  `/api/inventory/ws` (also the alerts, with `events=`; not listed below: OpenAPI does
  not describe WebSockets).
"""


def create_app(services: ApiServices) -> FastAPI:
    app = FastAPI(
        title="stock-worker",
        version=package_version(),
        description=DESCRIPTION,
    )
    app.state.services = services
    install_error_handlers(app)
    #: Route templates by endpoint, for metric labels (one series per route, not per URL).
    templates: dict[object, str] = {}
    for router, prefix, tag in (
        (inventory.reads, "/api/inventory", "inventory"),
        (inventory.writes, "/api/inventory", "inventory"),
        (stream.router, "/api/inventory", "inventory"),
        (websocket_stream.router, "/api/inventory", "inventory"),
        (counts.router, "/api/inventory", "counts"),
        (policies_router, "/api/inventory", "policies"),
        (reconciliation.router, "/api/inventory", "reconciliation"),
        (analytics_router, "/api/inventory", "analytics"),
        (reports_router, "/api/inventory", "reports"),
        (jobs_router, "/api/inventory", "operations"),
        (operations.router, "", "operations"),
        (dashboard_router, "/dashboard", "dashboard"),
    ):
        app.include_router(router, prefix=prefix, tags=[tag])
        for route in router.routes:
            templates[getattr(route, "endpoint", None)] = prefix + getattr(route, "path", "")

    # Added innermost first; middleware.py's docstring says why they are in this order.
    settings = services.settings
    app.add_middleware(Contain)
    # Before routing or parsing.
    app.add_middleware(BodySizeLimit, max_bytes=settings.http_max_body_bytes)
    if settings.http_cors_origin_list:
        app.add_middleware(Cors, origins=settings.http_cors_origin_list)
    app.add_middleware(
        Observe, route_templates=templates, access_log=settings.http_access_log
    )
    if tracing.ENABLED:  # outermost: a span per request, continuing its traceparent
        app.add_middleware(tracing.TraceRequests, route_templates=templates)
    return app
