"""STOCK_LOG_FORMAT: every logger's lines go through the one handler, as JSON objects
with the same keys (or plain text), without ANSI colours; the access log's fields.

No database or broker: the app answers /healthz without them, uvicorn serves it on a
real port, and FastStream's in-memory test broker logs the way a real one does.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.entrypoints.http.app import create_app
from service.entrypoints.http.server import ApiServer
from service.entrypoints.http.services import ApiServices
from service.logs import ADOPTED_LOGGERS, configure_logging
from service.settings import Settings

BASE_KEYS = {"time", "level", "logger", "message"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {
        name: (list(lg.handlers), lg.propagate, list(lg.filters), lg.level)
        for name in (*ADOPTED_LOGGERS, "faststream.access.kafka")
        for lg in [logging.getLogger(name)]
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (lib_handlers, propagate, filters, lib_level) in libraries.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = lib_handlers
        lg.propagate = propagate
        lg.filters[:] = filters
        lg.setLevel(lib_level)


def configured(log_format: str, **values: Any) -> Settings:
    settings = Settings(log_format=log_format, **values)  # type: ignore[arg-type]
    configure_logging(settings)
    return settings


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_logger(lines: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"].startswith(prefix)]


def test_a_service_line_is_one_json_object_with_the_common_keys(
    restore_logging, capsys
) -> None:
    configured("json")
    log = logging.getLogger("service.application.consume")
    log.info("order %s REJECTED: %s", "o-1", "insufficient_stock", extra={"order_id": "o-1"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    first, second = json_lines(capsys.readouterr().err)
    assert set(first) == BASE_KEYS | {"order_id"}
    assert first["level"] == "INFO"
    assert first["logger"] == "service.application.consume"
    assert first["message"] == "order o-1 REJECTED: insufficient_stock"
    assert first["order_id"] == "o-1"
    assert first["time"].endswith("Z") and "T" in first["time"]  # ISO-8601, UTC
    assert set(second) == BASE_KEYS | {"exception"}
    assert second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exception"]


def test_a_text_line_has_time_level_logger_and_message(restore_logging, capsys) -> None:
    configured("text")
    logging.getLogger("stock").warning("careful")
    [line] = capsys.readouterr().err.splitlines()
    time, level, logger, message = line.split(" ", 3)
    assert time.endswith("Z") and level == "WARNING" and logger == "stock:"
    assert message == "careful"


def test_an_invalid_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[arg-type]


async def test_the_access_log_line_carries_method_route_status_and_duration(
    restore_logging, capsys
) -> None:
    settings = configured("json")
    app = create_app(ApiServices.build(settings, engine=None))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stock") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/inventory/nothing/here?x=secret")).status_code == 404
    lines = by_logger(json_lines(capsys.readouterr().err), "stock.access")
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "/healthz", 200),
        ("GET", "unmatched", 404),
    ]
    for line in lines:
        assert set(line) == BASE_KEYS | {"method", "route", "status", "duration_ms"}
        assert line["level"] == "INFO"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["message"].startswith(f"{line['method']} {line['route']} {line['status']} ")
        assert "secret" not in line["message"]  # the route template, never the raw URL


async def test_uvicorn_lines_are_json_like_the_others_and_its_access_log_stays_off(
    restore_logging, capsys
) -> None:
    settings = configured("json")
    app = create_app(ApiServices.build(settings, engine=None))  # type: ignore[arg-type]
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.stop()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\x1b[" not in captured.err
    lines = json_lines(captured.err)
    uvicorn_lines = by_logger(lines, "uvicorn")
    assert uvicorn_lines, captured.err
    assert all(set(line) == BASE_KEYS for line in uvicorn_lines)  # no `color_message`
    assert not by_logger(lines, "uvicorn.access")
    # One access line for the request: the app's, not uvicorn's as well.
    assert len(by_logger(lines, "stock.access")) == 1


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_faststream_lines_go_through_the_handler_without_colours(
    restore_logging, capsys, log_format
) -> None:
    from faststream.kafka import KafkaBroker, TestKafkaBroker

    configured(log_format)
    # As when faststream is first imported after logging is configured (`stock run`):
    # its logger gets its coloured handler back, and stops propagating.
    faststream_logger = logging.getLogger("faststream")
    faststream_logger.addHandler(logging.StreamHandler(sys.stderr))
    faststream_logger.propagate = False
    broker = KafkaBroker("unused:9092")  # FastStream's own logger, as the worker's

    @broker.subscriber("log-test-topic", group_id="log-test")
    async def handle(body: str) -> None:
        pass

    # Starting a broker makes FastStream attach its coloured stdout handler to its
    # logger (the test broker then swaps in a mock: its lines are written here).
    async with TestKafkaBroker(broker):
        pass
    context = {"topic": "log-test-topic", "group_id": "log-test", "message_id": "m-1"}
    broker.config.logger.log("`handle` waiting for messages", logging.INFO, extra=context)
    broker.config.logger.log(
        "handler failed", logging.ERROR, extra=context, exc_info=RuntimeError("boom")
    )
    logging.getLogger("faststream").warning("from faststream's own logger")
    captured = capsys.readouterr()
    assert captured.out == ""  # FastStream writes to stdout when left alone
    assert "\x1b[" not in captured.err
    if log_format == "text":
        assert "faststream.access.kafka: " in captured.err
        assert "faststream: from faststream's own logger" in captured.err
        return
    lines = json_lines(captured.err)
    access = by_logger(lines, "faststream.access")
    assert access, captured.err
    for line in access:
        assert set(line) >= BASE_KEYS | {"topic", "group_id"}
    assert [line["level"] for line in access] == ["INFO", "ERROR"]
    assert "RuntimeError: boom" in access[1]["exception"]
    [own] = by_logger(lines, "faststream")[-1:]
    assert set(own) == BASE_KEYS and own["level"] == "WARNING"
