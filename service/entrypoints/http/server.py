"""uvicorn inside the worker's event loop, started and stopped like the other parts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: What a request the HTTP parser refuses gets: the API's error shape, with a `code`.
_NOT_HTTP = json.dumps(
    {
        "code": "bad_request",
        "message": "the request is not valid HTTP/1.1 (its request line or headers could "
        "not be parsed)",
        "details": None,
    }
).encode()


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser: 5-16% less CPU per request than h11,
    docs/design.md, "Garbage collection and the HTTP parser"), except that a
    request it cannot parse is answered in the API's error shape, as JSON with a
    `code`, where uvicorn writes a text/plain "Invalid HTTP request received."."""

    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(_NOT_HTTP)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                _NOT_HTTP,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's own SIGINT/SIGTERM handler stops the API with everything else.
        yield


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            # No logging set-up of uvicorn's own: its lines go through service.logs's
            # handler (no colours, STOCK_LOG_FORMAT). Its access log stays off: the
            # app writes `stock.access` lines itself, with route templates.
            log_config=None,
            access_log=False,
            lifespan="off",
            # httptools, with the API's own JSON 400 for what it cannot parse.
            http=JsonErrorsHttpToolsProtocol,
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(config)
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Take the port now, before anything else starts: a busy port fails the process
        at once, before its consumer joins the group for nothing."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: accepted sockets inherit the listening socket's
        # proto, and asyncio sets TCP_NODELAY on a connection only when it is IPPROTO_TCP.
        # Without it Nagle's algorithm meets the client's delayed ACK and every request
        # after the first on a kept-alive connection waits about 40 ms.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as error:
            sock.close()
            raise SystemExit(
                f"the HTTP API cannot listen on {self._host}:{self._port}: {error.strerror}"
            ) from None
        self._socket = sock

    @property
    def port(self) -> int:
        """The bound port (differs from the configured one when that was 0)."""
        assert self._socket is not None, "bind() first"
        port: int = self._socket.getsockname()[1]
        return port

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        serving = self._server.serve(sockets=[self._socket])  # type: ignore[list-item]
        self._task = asyncio.create_task(serving, name="http-api")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the HTTP API stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
