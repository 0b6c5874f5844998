"""A traced checkout through the real worker, broker and database: the answer read back
from Kafka carries the checkout's trace, and the worker's spans (batch, phases, the
publish) went to OpenTelemetry's in-memory exporter with the right parents and links."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.adapters.kafka import ensure_topics
from service.application.admin import StockAdmin
from tests.e2e.helpers import WAIT, running_worker, send_events, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import checkout

pytestmark = [pytest.mark.e2e]

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
PARENT_ID = 0xEEE19B7EC3C1B174


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


def _ids(traceparent: str | bytes) -> tuple[int, int]:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    _, trace_id, span_id, _ = text.split("-")
    return int(trace_id, 16), int(span_id, 16)


async def test_a_checkout_trace_reaches_its_answer_on_kafka(kafka_settings, engine, spans) -> None:
    s = kafka_settings
    await StockAdmin(engine, s).restock("tee", 5, product_id="prod-tee")
    await ensure_topics(s)
    event = checkout("o-traced", {"tee": 2})
    event["traceparent"] = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
    reading = TopicReader(s.kafka_bootstrap_servers, [s.topic_stock_reservation])
    async with reading as reader, running_worker(s):
        await send_events(s, [event])
        await reader.wait_for(
            lambda: bool(reader.messages[s.topic_stock_reservation]),
            timeout=WAIT,
            what="the reservation",
        )
        # Publish spans end after the delivery they wait for: the fast path's (the
        # answer) and the relay's (the stock change).
        wanted = {f"publish {s.topic_stock_reservation}", f"publish {s.topic_stock_changed}"}
        await wait_until(
            lambda: wanted <= {span.name for span in spans.get_finished_spans()},
            what="the publish spans",
        )
    [answer] = reader.messages[s.topic_stock_reservation]
    document = json.loads(answer.value)
    assert document["data"]["status"] == "RESERVED"
    finished = spans.get_finished_spans()
    [process] = [span for span in finished if span.name == f"process {s.topic_order_checkout}"]
    assert process.parent is not None
    assert (process.context.trace_id, process.parent.span_id) == (TRACE_ID, PARENT_ID)
    # The answer continues the checkout's trace, from the worker's `process` span.
    assert _ids(document["traceparent"]) == (TRACE_ID, process.context.span_id)
    assert dict(answer.headers)["traceparent"] == document["traceparent"].encode()

    [batch] = [span for span in finished if span.name == "process batch"]
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (TRACE_ID, PARENT_ID)
    ]
    names = {span.name for span in finished if span.parent is not None
             and span.parent.span_id == batch.context.span_id}
    assert set(tracing.PHASES) <= names
    # Each send links back to the context its message carries: the answer's to the
    # worker's `process` span, the stock change's to the checkout's trace.
    [answered] = [span for span in finished if span.name == f"publish {s.topic_stock_reservation}"]
    assert [(link.context.trace_id, link.context.span_id) for link in answered.links] == [
        (TRACE_ID, process.context.span_id)
    ]
    changed = [span for span in finished if span.name == f"publish {s.topic_stock_changed}"]
    assert any(link.context.trace_id == TRACE_ID for span in changed for link in span.links)
