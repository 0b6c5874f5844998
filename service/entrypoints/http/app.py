"""The FastAPI application: /api/inventory, the live stream, operator endpoints, docs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from service import metrics
from service.entrypoints.asyncapi import package_version
from service.entrypoints.http import inventory, operations, stream
from service.entrypoints.http.errors import install_error_handlers, unexpected_error_response
from service.entrypoints.http.services import ApiServices

DESCRIPTION = """
Stock levels, reservations and the audit trail of the stock reservation worker.

* Writes need `Authorization: Bearer <token>` (a token from `STOCK_API_TOKENS`).
* Errors are `{"code", "message", "details"}`; insufficient stock is 409 with the shortages.
* The Kafka side is described at [/asyncapi](/asyncapi) ([JSON](/asyncapi.json)).
"""


def create_app(services: ApiServices) -> FastAPI:
    app = FastAPI(title="stock-worker", version=package_version(), description=DESCRIPTION)
    app.state.services = services
    install_error_handlers(app)
    #: Route templates by endpoint, for metric labels (one series per route, not per URL).
    templates: dict[object, str] = {}
    for router, prefix, tag in (
        (inventory.reads, "/api/inventory", "inventory"),
        (inventory.writes, "/api/inventory", "inventory"),
        (stream.router, "/api/inventory", "inventory"),
        (operations.router, "", "operations"),
    ):
        app.include_router(router, prefix=prefix, tags=[tag])
        for route in router.routes:
            templates[getattr(route, "endpoint", None)] = prefix + getattr(route, "path", "")

    @app.middleware("http")
    async def count_and_contain(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as error:
            response = unexpected_error_response(request, error)
        route = templates.get(getattr(request.scope.get("route"), "endpoint", None), "unmatched")
        metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        metrics.HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    return app
