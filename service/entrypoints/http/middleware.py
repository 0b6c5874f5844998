"""Plain ASGI middleware (no buffering, streams pass through): body size limit, metrics
and the last line of error containment."""

from __future__ import annotations

import json
import time

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.entrypoints.http.errors import unexpected_error_response

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


class ObserveAndContain:
    """Counts every request by route template and status, and turns an exception no
    handler claimed into a JSON answer (503 if the database is away, else 500), logged
    once, instead of letting it reach the server as an ASGI error."""

    def __init__(self, app: ASGIApp, route_templates: dict[object, str]) -> None:
        self.app = app
        self.route_templates = route_templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        status = 500
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if response_started:
                raise
            response = unexpected_error_response(Request(scope), error)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self._observe(scope, status, time.perf_counter() - started_at)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = getattr(scope.get("route"), "endpoint", None)
        route = self.route_templates.get(endpoint, "unmatched")
        # Labels from a closed set: a client must not be able to mint new series.
        method = scope["method"] if scope["method"] in _METHODS else "other"
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        if not route.endswith("/stream"):  # a stream's duration is not a latency
            metrics.HTTP_SECONDS.labels(method, route).observe(seconds)
