"""The HTTP API's connections have TCP_NODELAY, so a kept-alive connection answers
each request at once (issue 10, item 8).

asyncio sets TCP_NODELAY on an accepted connection only when its socket's proto is
IPPROTO_TCP, and an accepted socket inherits the proto of the listening socket that
`ApiServer.bind` creates. Without it, Nagle's algorithm holds each response's last
segment until the client's delayed ACK: about 40 ms on every request after the first.
The option is read on the server's side of a real connection, not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from service.entrypoints.http.server import ApiServer, JsonErrorsHttpToolsProtocol


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


@contextlib.asynccontextmanager
async def _serving(host: str) -> AsyncIterator[ApiServer]:
    server = ApiServer(_app(), host, 0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> bytes:
    """One keep-alive GET /ping on the open connection; the whole response."""
    writer.write(f"GET /ping HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def _server_side_nodelay(server: ApiServer, client_address: tuple[object, ...]) -> int:
    """TCP_NODELAY of the server's socket for the connection from `client_address`."""
    connections = server._server.server_state.connections
    for connection in connections:
        transport = connection.transport  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if peer[:2] == client_address[:2]:
            sock = transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    raise AssertionError(f"no server connection from {client_address} among {len(connections)}")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
async def test_accepted_connections_have_tcp_nodelay(host: str) -> None:
    async with _serving(host) as server:
        reader, writer = await asyncio.open_connection(host, server.port)
        try:
            # Two requests on the same connection: the second is the one Nagle delayed.
            for _ in range(2):
                response = await _get(reader, writer, host)
                assert response.startswith(b"HTTP/1.1 200"), response
            client_address = writer.get_extra_info("sockname")
            assert _server_side_nodelay(server, client_address) == 1
        finally:
            writer.close()
            await writer.wait_closed()


async def test_the_listening_socket_is_tcp() -> None:
    """What asyncio checks before it sets TCP_NODELAY on each accepted connection."""
    server = ApiServer(_app(), "127.0.0.1", 0)
    server.bind()
    try:
        assert server._socket is not None
        assert server._socket.proto == socket.IPPROTO_TCP
    finally:
        await server.stop()


def test_requests_are_parsed_by_httptools_with_the_apis_own_errors() -> None:
    """httptools (less CPU per request than h11), through our subclass: uvicorn's own
    would answer what it cannot parse with a text/plain 400 (found by
    tests/e2e/test_api_fuzzing.py)."""
    server = ApiServer(_app(), "127.0.0.1", 0)
    config = server._server.config
    config.load()
    assert config.http_protocol_class is JsonErrorsHttpToolsProtocol


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ping?\x01\x7f\xff HTTP/1.1\r\nHost: h\r\n\r\n",  # odd bytes in the query
        b"GET /ping HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",  # a broken header
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["odd-query", "broken-header", "not-http"],
)
async def test_a_request_the_parser_refuses_gets_a_json_error_with_a_code(
    request_bytes: bytes,
) -> None:
    async with _serving("127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request_bytes)
            await writer.drain()
            response = await reader.read()  # the server closes the connection
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), response
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)
    assert error["code"] == "bad_request"
    assert set(error) == {"code", "message", "details"}
