"""Plain ASGI middleware (no buffering, streams pass through): metrics and the access
log, CORS, the body size limit, and the last line of error containment.

From the outside in (`app.create_app` adds them in reverse):

1. `Observe` sees every answer, whoever gives it: a preflight answered by CORS, a 413,
   a contained 500 or 503. It counts it and writes the access log line.
2. `Cors` (only with STOCK_HTTP_CORS_ORIGINS) answers preflights before auth or
   routing, and adds its headers to every other answer, errors included, so that a
   browser lets the page read them.
3. `BodySizeLimit` before any body is read.
4. `Contain` turns an exception no handler claimed into a JSON answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection

from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.entrypoints.http.errors import error_response, unexpected_error_response

#: One line per request: method, route template, status, duration (STOCK_HTTP_ACCESS_LOG).
access_log = logging.getLogger("stock.access")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body reading lets it through unchanged."""

    def __init__(self) -> None:
        super().__init__(413)


class BodySizeLimit:
    """Bodies above STOCK_HTTP_MAX_BODY_BYTES are refused (413) before they are parsed.

    The API shares its event loop with the worker's consumer and relay: parsing a 70 MB
    JSON body would stall them for seconds. A declared `Content-Length` over the limit
    is answered at once; a chunked body is counted as it arrives and cut at the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "code": "payload_too_large",
                "message": f"the request body is larger than {self.max_bytes} bytes",
                "details": None,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Observe:
    """Counts every request by route template and status, times it, and writes its
    access log line once the answer is sent: a plain call, no await, no I/O but the
    log handler's.

    The method and route come from closed sets (a route template, `unmatched`,
    `preflight`): neither a metric label nor a log line carries a client's URL."""

    def __init__(
        self, app: ASGIApp, route_templates: dict[object, str], access_log: bool = True
    ) -> None:
        self.app = app
        self.route_templates = route_templates
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._observe(scope, status, time.perf_counter() - started_at)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._route(scope)
        # Labels from a closed set: a client must not be able to mint new series.
        method = scope["method"] if scope["method"] in _METHODS else "other"
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        if not route.endswith("/stream"):  # a stream's duration is not a latency
            metrics.HTTP_SECONDS.labels(method, route).observe(seconds)
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            duration_ms = round(seconds * 1000, 1)
            access_log.info(
                "%s %s %d %.1f ms",
                method,
                route,
                status,
                duration_ms,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )

    def _route(self, scope: Scope) -> str:
        endpoint = getattr(scope.get("route"), "endpoint", None)
        if endpoint is not None:
            return self.route_templates.get(endpoint, "unmatched")
        if scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        ):
            return "preflight"  # answered by Cors before routing
        return "unmatched"


class Contain:
    """Turns an exception no handler claimed into a JSON answer (503 if the database
    is away, else 500), logged once, instead of letting it reach the server as an
    ASGI error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if response_started:
                raise
            response = unexpected_error_response(Request(scope), error)
            await response(scope, receive, send)


#: What a browser page may use: the API's methods, and the headers it reads.
CORS_METHODS = ("GET", "HEAD", "POST", "PUT")
CORS_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key")
#: Response headers a page may read beside the safelisted ones (503 and 413 carry it).
CORS_EXPOSED = ("Retry-After",)


class Cors(CORSMiddleware):
    """Starlette's CORS for STOCK_HTTP_CORS_ORIGINS, without credentials (the API's
    bearer token is a header, not a cookie), and a refused preflight answered in the
    API's error shape."""

    def __init__(self, app: ASGIApp, origins: Collection[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        text = bytes(response.body).decode()
        refused = [part.strip() for part in text.removeprefix("Disallowed CORS ").split(",")]
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        return error_response(
            400,
            "cors_refused",
            f"this cross-origin request is not allowed (its {', '.join(refused)})",
            {"refused": refused},
            headers=headers,
        )
