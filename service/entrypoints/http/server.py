"""uvicorn inside the worker's event loop, started and stopped like the other parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


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
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from the configured one when that was 0)."""
        [server] = self._server.servers
        [sock] = server.sockets[:1]
        port: int = sock.getsockname()[1]
        return port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http-api")
        while not self._server.started:
            if self._task.done():
                # uvicorn exits (SystemExit) when it cannot bind; say why, plainly.
                with contextlib.suppress(BaseException):
                    await self._task
                host, port = self._server.config.host, self._server.config.port
                raise RuntimeError(f"the HTTP API could not listen on {host}:{port}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
