"""service/tracing.py without a database: when the OTEL_* variables turn traces on, what
they refuse, the W3C traceparent rules, and that off means no spans and no stamps."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from service import tracing


@pytest.fixture(autouse=True)
def _tracing_off_after() -> Iterator[None]:
    yield
    tracing.uninstall()


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": ""}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "stock"}, False),  # naming the service asks for nothing
    ],
)
def test_which_variables_turn_traces_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_by_default_and_nothing_set_up() -> None:
    assert tracing.configure_from_environment({}) is False
    assert tracing.ENABLED is False
    # Every helper hands back the one shared do-nothing object: no span is made.
    assert tracing.span("claim") is tracing.batch(10) is tracing.transaction()
    assert tracing.publishing("t", iter(())) is tracing.span("write")
    assert tracing.traceparent_for("o-1") is None


def test_the_otlp_exporter_is_set_up_from_the_variables() -> None:
    assert tracing.configure_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing.ENABLED  # no span is made here: nothing is sent to that endpoint


def test_spans_once_on() -> None:
    assert tracing.configure_from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.current_traceparent() is None  # outside any span
    assert tracing.span("claim") is tracing.span("lock")  # no orphan spans outside a trace
    with tracing.batch(1):
        traceparent = tracing.current_traceparent()
        assert traceparent is not None
        assert tracing.traceparent_for("o-unknown") == traceparent


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin is not one of otlp, console, none"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf only",
        ),
    ],
)
def test_what_it_cannot_do_is_refused(environ: dict[str, str], says: str) -> None:
    with pytest.raises(tracing.TracingConfigurationError, match=says):
        tracing.configure_from_environment(environ)
    assert not tracing.ENABLED


def test_stock_run_refuses_an_unknown_exporter_in_one_line(monkeypatch, capsys) -> None:
    from service.entrypoints.cli import main

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    monkeypatch.setenv("STOCK_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["run"]) == 2
    assert "stock: OTEL_TRACES_EXPORTER=jaeger: jaeger is not one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("traceparent", "valid"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
        # A later version may append fields; version 00 may not.
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-next", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", False),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
        ("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", False),  # upper case
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01", False),
        ("not a traceparent", False),
        ("", False),
    ],
)
def test_traceparent_format(traceparent: str, valid: bool) -> None:
    context = tracing.parse_traceparent(traceparent)
    assert (context is not None) is valid
    if context is not None and traceparent.startswith("00-"):
        assert tracing.format_traceparent(context) == traceparent


class _Record:
    def __init__(self, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self.value, self.headers = value, headers


@pytest.mark.parametrize("binary", [False, True])
def test_the_attribute_first_then_the_kafka_header(binary: bool) -> None:
    attribute = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = {
        "specversion": "1.0", "id": "e-1", "source": "test", "type": "order.cancelled",
        "data": {"order_id": "o-1", "reason": "customer", "traceparent": "not this one"},
    }
    if binary:  # ce_* headers; the attribute is the ce_traceparent header
        headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data"]
        value = json.dumps(event["data"]).encode()
        traced = _Record(value, [*headers, ("ce_traceparent", attribute.encode())])
    else:
        headers, value = [], json.dumps(event).encode()
        traced = _Record(json.dumps({**event, "traceparent": attribute}).encode(), [])
    traced.headers.append(("traceparent", header))
    assert tracing.incoming_traceparent(traced) == attribute
    header_only = _Record(value, [*headers, ("traceparent", header)])
    assert tracing.incoming_traceparent(header_only) == header.decode()
    not_ascii = _Record(value, [*headers, ("traceparent", b"\xff")])
    assert tracing.incoming_traceparent(not_ascii) is None
    assert tracing.incoming_traceparent(_Record(value, headers)) is None
    assert tracing.incoming_traceparent(_Record(b"not json", [])) is None
    assert tracing.incoming_traceparent(_Record(None, [])) is None
