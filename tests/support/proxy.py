"""A TCP proxy in front of PostgreSQL (or a broker) that a test can cut and restore:
a real outage.

The worker connects through it; `cut()` refuses new connections and drops the open
ones, as a crashed or unreachable server would; `restore()` lets traffic through again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sqlalchemy.engine import make_url


class CuttableProxy:
    def __init__(
        self, target_url: str = "", *, tcp_target: tuple[str, int] | None = None, port: int = 0
    ) -> None:
        """Either a PostgreSQL URL (TCP or socket) or a plain `tcp_target` (host, port);
        `port` is where the proxy listens (0: any free port)."""
        self.port = port
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._unix_path: str | None = None
        self._tcp_target: tuple[str, int] | None = tcp_target
        if tcp_target is not None:
            return
        url = make_url(target_url)
        socket_dir = url.query.get("host")
        if isinstance(socket_dir, tuple):
            socket_dir = socket_dir[0]
        if socket_dir and str(socket_dir).startswith("/"):
            self._unix_path = str(Path(socket_dir) / f".s.PGSQL.{url.port or 5432}")
        else:
            self._tcp_target = (url.host or "127.0.0.1", url.port or 5432)
        self._target_url = url

    @property
    def url(self) -> str:
        """The target database's URL, through the proxy (URL-built proxies only)."""
        url = self._target_url.set(host="127.0.0.1", port=self.port)
        url = url.difference_update_query(["host"])
        return url.render_as_string(hide_password=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
            else:
                assert self._tcp_target is not None
                up_reader, up_writer = await asyncio.open_connection(*self._tcp_target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(sink)
            with contextlib.suppress(Exception):
                sink.transport.abort()
