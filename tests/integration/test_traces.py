"""Traces (service/tracing.py) through the real batch consumer, unit of work and
database, and the real HTTP app: the spans go to OpenTelemetry's in-memory exporter
(the SDK's own test exporter; nothing of Kafka or PostgreSQL is replaced).

What is checked: an incoming trace context, in each of the three places it may come
in, continues into the worker's spans and onto the events it publishes; the batch
span links every incoming context; the phases are its children; tracing off stamps
nothing and makes no spans.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from service import tracing
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from tests.support.records import FakeRecord, checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

STRUCTURED_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
STRUCTURED_PARENT = 0xB7AD6B7169203331
BINARY_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
BINARY_PARENT = 0x00F067AA0BA902B7
HEADER_TRACE = 0x11111111111111111111111111111111
HEADER_PARENT = 0x2222222222222222


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()


def binary_checkout(s: Scenario, order_id: str, variant_id: str, trace: str) -> FakeRecord:
    """The same event in binary mode: attributes as ce_* headers, ce_traceparent too."""
    event = checkout(order_id, {variant_id: 1})
    headers = [(f"ce_{name}", str(event[name]).encode()) for name in ("id", "source", "type")]
    headers += [
        ("ce_specversion", b"1.0"),
        ("ce_traceparent", trace.encode()),
        ("content-type", b"application/json"),
    ]
    return FakeRecord(
        topic=s.settings.topic_order_checkout,
        value=json.dumps(event["data"]).encode(),
        key=order_id.encode(),
        headers=tuple(headers),
    )


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def parsed(value: str | bytes) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    _, trace_id, span_id, _ = text.split("-")
    return int(trace_id, 16), int(span_id, 16)


async def test_a_batch_continues_each_incoming_trace(engine, settings, spans) -> None:
    s = Scenario(engine, settings)
    await s.restock(("tee", 10))
    structured = checkout("o-structured", {"tee": 1})
    structured["traceparent"] = traceparent(STRUCTURED_TRACE, STRUCTURED_PARENT)
    header_only = s.record(checkout("o-header", {"tee": 1}))
    header_only.headers = (("traceparent", traceparent(HEADER_TRACE, HEADER_PARENT).encode()),)
    report = await s.deliver(
        structured,
        binary_checkout(s, "o-binary", "tee", traceparent(BINARY_TRACE, BINARY_PARENT)),
        header_only,
        checkout("o-untraced", {"tee": 1}),
        paid("o-structured"),
    )
    assert report.applied == 5

    finished = spans.get_finished_spans()
    [batch] = by_name(finished, "process batch")
    assert batch.kind is SpanKind.CONSUMER
    assert batch.parent is None
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 5
    incoming = {
        (STRUCTURED_TRACE, STRUCTURED_PARENT),
        (BINARY_TRACE, BINARY_PARENT),
        (HEADER_TRACE, HEADER_PARENT),
    }
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == incoming

    # The phases, children of the batch span, in order.
    phases = [span for span in finished if span.name in tracing.PHASES]
    assert [span.name for span in sorted(phases, key=lambda sp: sp.start_time or 0)] == list(
        tracing.PHASES
    )
    for phase in phases:
        assert phase.parent is not None
        assert phase.parent.span_id == batch.context.span_id
        assert phase.context.trace_id == batch.context.trace_id

    # One `process` span per traced event, in the event's own trace, linked to the batch.
    processing = by_name(finished, f"process {settings.topic_order_checkout}")
    assert {(p.context.trace_id, p.parent.span_id) for p in processing if p.parent} == incoming
    for process in processing:
        assert process.kind is SpanKind.CONSUMER
        assert [link.context.span_id for link in process.links] == [batch.context.span_id]
    process_of = {p.context.trace_id: p.context.span_id for p in processing}

    # Each answer carries the context of the event that caused it, in the CloudEvent
    # and as a header; the untraced order's answer carries the batch's trace.
    rows = await s.outbox(settings.topic_stock_reservation)
    answers = {row.data["order_id"]: row for row in rows}
    assert set(answers) == {"o-structured", "o-binary", "o-header", "o-untraced"}
    for order_id, trace_id in (
        ("o-structured", STRUCTURED_TRACE),
        ("o-binary", BINARY_TRACE),
        ("o-header", HEADER_TRACE),
    ):
        row = answers[order_id]
        assert parsed(row.event["traceparent"]) == (trace_id, process_of[trace_id])
        assert row.header("traceparent") == row.event["traceparent"].encode()
    untraced = answers["o-untraced"]
    assert parsed(untraced.event["traceparent"])[0] == batch.context.trace_id
    # The stock changes of a traced order follow it too (the payment's sale as well).
    for row in await s.outbox(settings.topic_stock_changed):
        if row.data["reference"] == "o-structured":
            assert parsed(row.event["traceparent"])[0] == STRUCTURED_TRACE


async def test_an_invalid_traceparent_is_ignored_not_dead_lettered(engine, settings, spans) -> None:
    s = Scenario(engine, settings)
    await s.restock(("tee", 10))
    broken = checkout("o-1", {"tee": 1})
    broken["traceparent"] = "00-not-a-trace-context-01"
    all_zero = checkout("o-2", {"tee": 1})
    all_zero["traceparent"] = traceparent(0, 1)
    report = await s.deliver(broken, all_zero)
    assert (report.applied, report.dead_lettered) == (2, 0)
    [batch] = by_name(spans.get_finished_spans(), "process batch")
    assert list(batch.links) == []
    for row in await s.outbox(settings.topic_stock_reservation):
        assert parsed(row.event["traceparent"])[0] == batch.context.trace_id


async def test_tracing_off_stamps_nothing(engine, settings) -> None:
    """Off, an incoming traceparent is not even read: nothing passes through, nothing is
    invented (docs/design.md, Traces)."""
    assert not tracing.ENABLED
    s = Scenario(engine, settings)
    await s.restock(("tee", 10))
    traced = checkout("o-1", {"tee": 1})
    traced["traceparent"] = traceparent(STRUCTURED_TRACE, STRUCTURED_PARENT)
    assert (await s.deliver(traced)).applied == 1
    for row in await s.outbox():
        assert "traceparent" not in row.event
        assert row.header("traceparent") is None


async def test_a_job_outside_any_trace_makes_no_phase_spans(engine, settings, spans) -> None:
    """Maintenance work (a restock here) is not a traced operation: no orphan spans."""
    s = Scenario(engine, settings)
    await s.restock(("tee", 10))
    assert spans.get_finished_spans() == ()
    [row] = await s.outbox(settings.topic_stock_changed)
    assert "traceparent" not in row.event


async def test_an_http_request_continues_its_traceparent(engine, settings, spans) -> None:
    await Scenario(engine, settings).restock(("tee", 10))
    token = "trace-token"
    api_settings = settings.model_copy(update={"api_tokens": SecretStr(token)})
    app = create_app(ApiServices.build(api_settings, engine))
    incoming = traceparent(STRUCTURED_TRACE, STRUCTURED_PARENT)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        response = await http.post(
            "/api/inventory/restock",
            json={"updates": [{"variantId": "tee", "quantity": 5, "reason": "delivery"}]},
            headers={"Authorization": f"Bearer {token}", "traceparent": incoming},
        )
    assert response.status_code == 200, response.text
    finished = spans.get_finished_spans()
    [request] = [span for span in finished if span.kind is SpanKind.SERVER]
    assert request.name == "POST /api/inventory/restock"
    assert request.parent is not None
    assert (request.context.trace_id, request.parent.span_id) == (
        STRUCTURED_TRACE,
        STRUCTURED_PARENT,
    )
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    # Its transaction's phases are its children; what it publishes carries its trace.
    children = {span.name for span in finished if span.parent is not None
                and span.parent.span_id == request.context.span_id}
    assert {"write", "commit"} <= children
    seeded, restocked = await Scenario(engine, settings).outbox(settings.topic_stock_changed)
    assert "traceparent" not in seeded.event
    assert parsed(restocked.event["traceparent"])[0] == STRUCTURED_TRACE



async def test_requests_sharing_a_transaction_keep_their_own_traces(
    engine, settings, spans
) -> None:
    """The group commit runs concurrent reserves in one transaction, in the task of one
    of them: each answer still carries the trace of its own request."""
    await Scenario(engine, settings).restock(("tee", 100))
    token = "trace-token"
    api_settings = settings.model_copy(update={"api_tokens": SecretStr(token)})
    app = create_app(ApiServices.build(api_settings, engine))
    trace_of = {f"r-{i}": 0x1000 + i for i in range(8)}

    async def reserve(http: httpx.AsyncClient, reservation_id: str) -> httpx.Response:
        return await http.post(
            "/api/inventory/reserve",
            json={"reservations": [
                {"variantId": "tee", "quantity": 1, "reservationId": reservation_id}
            ]},
            headers={
                "Authorization": f"Bearer {token}",
                "traceparent": traceparent(trace_of[reservation_id], 0xABC),
            },
        )

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        answers = await asyncio.gather(*(reserve(http, r) for r in trace_of))
    assert [a.status_code for a in answers] == [200] * len(trace_of), answers[0].text
    rows = await Scenario(engine, settings).outbox(settings.topic_stock_reservation)
    assert {row.data["order_id"] for row in rows} == set(trace_of)
    for row in rows:
        assert parsed(row.event["traceparent"])[0] == trace_of[row.data["order_id"]]
