"""`stock run` as a real process with STOCK_LOG_FORMAT=json: every line it writes is a
JSON object with the common keys, whoever wrote it (the service, uvicorn, FastStream,
aiokafka), without colours; the access log, a REJECTED order and a dead letter show."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import TOPIC_DEFAULTS, Settings
from tests.e2e.helpers import send, send_events
from tests.support.records import checkout

pytestmark = [pytest.mark.e2e]

STOCK = Path(sys.executable).parent / "stock"
BASE_KEYS = {"time", "level", "logger", "message"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _environment(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    named = {
        "database_url": settings.database_url,
        "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
        "kafka_group_id": settings.kafka_group_id,
        **{field: getattr(settings, field) for field in TOPIC_DEFAULTS},
    }
    env.update({f"STOCK_{name.upper()}": str(value) for name, value in named.items()})
    env.update(
        STOCK_HTTP_PORT=str(port),
        STOCK_LOG_FORMAT="json",
        STOCK_API_TOKENS="json-logs-token",
        STOCK_SWEEP_INTERVAL_SECONDS="0.5",
    )
    return env


async def _until(condition: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_every_line_of_a_running_process_is_json(kafka_settings: Settings) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        str(STOCK),
        "run",
        env=_environment(kafka_settings, port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr_chunks: list[bytes] = []

    async def drain() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(65536):
            stderr_chunks.append(chunk)

    def text() -> str:
        return b"".join(stderr_chunks).decode()

    draining = asyncio.create_task(drain())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"stock run ended:\n{text()}")
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await _until(ready, 90, "the worker to be ready")
            assert (await http.head("/healthz")).status_code == 200
            await send_events(kafka_settings, [checkout("o-nowhere", {"no-such-variant": 1})])
            await send(
                kafka_settings.kafka_bootstrap_servers,
                [(kafka_settings.topic_order_checkout, b"k", b"{not json", None)],
            )

            async def logged() -> bool:
                return "REJECTED" in text() and "dead-lettered" in text()

            await _until(logged, 60, "the REJECTED and dead-letter lines")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
            await draining
    assert process.stdout is not None
    assert await process.stdout.read() == b""  # FastStream writes there when left alone
    assert "\x1b[" not in text(), [raw for raw in text().splitlines() if "\x1b[" in raw]
    lines: list[dict[str, Any]] = []
    for raw in text().splitlines():
        line = json.loads(raw)  # every line, or this fails naming it
        assert set(line) >= BASE_KEYS, raw
        lines.append(line)
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "stock.access", "service.application.consume"} <= loggers, loggers
    access = [line for line in lines if line["logger"] == "stock.access"]
    assert {"method": "HEAD", "route": "/healthz", "status": 200} in [
        {k: line[k] for k in ("method", "route", "status")} for line in access
    ]
    consumed = [line for line in lines if line["logger"] == "service.application.consume"]
    [rejected] = [line for line in consumed if "REJECTED" in line["message"]]
    assert (rejected["level"], rejected["order_id"], rejected["reason"]) == (
        "INFO",
        "o-nowhere",
        "unknown_variant",
    )
    [dead] = [line for line in consumed if line["message"].startswith("dead-lettered")]
    assert dead["level"] == "INFO" and "not JSON" in dead["reason"]
