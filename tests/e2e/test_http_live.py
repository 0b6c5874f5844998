"""`stock run` as one process (worker + HTTP API on a real port) with the real broker and
database: the live stream, readiness, and metrics that move when events flow."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from service.adapters.change_feed import StockChangeFeed, SubscriberTooSlow
from service.adapters.kafka import ensure_topics
from service.application.admin import StockAdmin
from service.entrypoints.process import StockProcess
from service.settings import Settings
from tests.e2e.helpers import phases, send_events, wait_until
from tests.support.records import checkout

pytestmark = [pytest.mark.e2e]

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def live_settings(kafka_settings: Settings) -> Settings:
    return kafka_settings.model_copy(
        update={
            "http_port": 0,
            "api_tokens": SecretStr(TOKEN),
            "metrics_refresh_seconds": 0,
            "stream_heartbeat_seconds": 0.5,
        }
    )


@pytest.fixture
async def process(engine: Any, live_settings: Settings) -> AsyncIterator[StockProcess]:
    admin = StockAdmin(engine, live_settings)
    await admin.restock("tee-s", 10, product_id="tee")
    await admin.restock("tee-m", 10, product_id="tee")
    await admin.restock("mug", 10, product_id="mug")
    running = StockProcess(live_settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def http(process: StockProcess) -> AsyncIterator[httpx.AsyncClient]:
    assert process.server is not None
    base = f"http://127.0.0.1:{process.server.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


async def next_event(lines: AsyncIterator[str]) -> tuple[str, dict[str, Any]]:
    """The next `event:` of an SSE stream, with its JSON data; comments are skipped."""
    name, data = "", ""
    async for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif line == "" and name:
            return name, json.loads(data)
    raise AssertionError("the stream ended")


async def test_the_stream_delivers_a_restock_made_through_the_api(process, http) -> None:
    assert process.api is not None
    await asyncio.wait_for(process.api.feed.tailing.wait(), 30)
    async with http.stream("GET", "/api/inventory/stream", params={"productId": "tee"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith(":")  # the stream is open
        # A change of another product is filtered out; the tee restock comes through.
        for variant in ("mug", "tee-m"):
            answer = await http.post(
                "/api/inventory/restock",
                json={"updates": [{"variantId": variant, "quantity": 5}]},
                headers=AUTH,
            )
            assert answer.status_code == 200
        restocked_at = time.monotonic()
        name, data = await asyncio.wait_for(next_event(lines), 30)
        latency = time.monotonic() - restocked_at
    assert name == "stock.changed"
    assert data["variant_id"] == "tee-m"
    assert (data["change_type"], data["on_hand"], data["available"]) == ("RESTOCK", 15, 15)
    assert data["version"] == 2
    print(f"restock -> SSE event: {latency * 1000:.0f} ms")  # shown with -s; not asserted


async def test_ready_once_the_consumer_is_assigned(process, http) -> None:
    async def ready() -> bool:
        return (await http.get("/readyz")).status_code == 200

    await wait_until(ready, what="/readyz 200")
    body = (await http.get("/readyz")).json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "schema", "broker", "consumer"}
    assert body["checks"]["consumer"]["partitions"] > 0
    assert (await http.get("/healthz")).json() == {"status": "ok"}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text; 0 if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if got == wanted:
            return float(match.group(3))
    return 0.0


async def test_metrics_move_when_events_flow(process, http, engine, live_settings) -> None:
    topic = live_settings.topic_order_checkout
    before = (await http.get("/metrics")).text
    await send_events(live_settings, [checkout(f"m-{n}", {"mug": 1}) for n in range(3)])

    async def all_reserved() -> bool:
        return (await phases(engine)) == {f"m-{n}": "RESERVED" for n in range(3)}

    await wait_until(all_reserved, what="3 orders RESERVED")
    after = ""

    async def published() -> bool:
        nonlocal after
        after = (await http.get("/metrics")).text
        return (
            metric(after, "stock_outbox_backlog") == 0
            and metric(
                after, "stock_outbox_published_total", topic=live_settings.topic_stock_reservation
            )
            >= metric(
                before, "stock_outbox_published_total", topic=live_settings.topic_stock_reservation
            )
            + 3
        )

    await wait_until(published, what="the outbox published and counted")
    applied = metric(after, "stock_events_consumed_total", topic=topic, outcome="applied")
    assert (
        applied - metric(before, "stock_events_consumed_total", topic=topic, outcome="applied") == 3
    )
    assert metric(after, "stock_batch_size_count") > metric(before, "stock_batch_size_count")
    assert metric(after, "stock_batch_handling_seconds_count") > metric(
        before, "stock_batch_handling_seconds_count"
    )
    assert metric(after, "stock_reservations", status="RESERVED") == 3
    assert metric(after, "stock_outbox_publish_latency_seconds_count") > metric(
        before, "stock_outbox_publish_latency_seconds_count"
    )
    lag_series = [line for line in after.splitlines() if line.startswith("stock_consumer_lag{")]
    assert lag_series, "consumer lag per assigned partition"
    assert "stock_dead_letters 0.0" in after


async def test_a_slow_subscriber_is_cut_off_without_holding_up_the_others(
    live_settings,
) -> None:
    """The feed never waits for a subscriber: one that does not read overflows its
    small buffer and is dropped, while a reading one gets every change."""
    settings = live_settings.model_copy(update={"stream_client_buffer": 3})
    await ensure_topics(settings)
    feed = StockChangeFeed(settings)
    await feed.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await asyncio.wait_for(feed.tailing.wait(), 30)
        slow = feed.subscribe()
        reader = feed.subscribe()
        received = []
        for wave in (range(1, 4), range(4, 7)):  # each wave fits a buffer; both do not
            for version in wave:
                data = {"variant_id": "v", "product_id": "p", "version": version}
                value = json.dumps({"id": f"e{version}", "data": data}).encode()
                await producer.send_and_wait(settings.topic_stock_changed, value, key=b"v")
            for _ in wave:
                change = await reader.next(30)
                assert change is not None
                received.append(change.data["version"])
        assert received == [1, 2, 3, 4, 5, 6]
        with pytest.raises(SubscriberTooSlow):
            await slow.next(0.1)
    finally:
        await producer.stop()
        await feed.stop()
