"""GET /api/inventory/ws against `stock run` as one process on a real port, with the real
broker and database, through the `websockets` client library (httpx speaks no WebSocket).

What arrives (the same as SSE), the filters, the token (subprotocol or first message),
the alerts only when asked, a slow client cut off with 4008 while others keep reading,
the shared STOCK_STREAM_MAX_CLIENTS, the origin check and the close when stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.application.admin import StockAdmin
from service.entrypoints.http.websocket import AUTH_WAIT_SECONDS
from service.entrypoints.process import StockProcess
from service.settings import Settings
from tests.e2e.helpers import wait_until

pytestmark = [pytest.mark.e2e]

WRITER = "writer-secret"
READER = "reader-secret"
TOKENS = f"writer:{WRITER}:write,reader:{READER}:read"
AUTH = {"Authorization": f"Bearer {WRITER}"}
#: Generous: an event arriving later than this is a failure, sooner is not measured.
WAIT = 30.0

Start = Callable[..., Awaitable[StockProcess]]


@pytest.fixture
async def start(engine: Any, kafka_settings: Settings) -> AsyncIterator[Start]:
    """Starts `stock run` (worker + API on a free port) with these settings changed; the
    catalogue: tee-s, tee-m (product tee) and mug, 10 of each."""
    running: list[StockProcess] = []

    async def starting(**changes: Any) -> StockProcess:
        settings = kafka_settings.model_copy(
            update={
                "http_port": 0,
                "api_tokens": SecretStr(TOKENS),
                "stream_heartbeat_seconds": 0.5,
                **changes,
            }
        )
        admin = StockAdmin(engine, settings)
        for variant, product in (("tee-s", "tee"), ("tee-m", "tee"), ("mug", "mug")):
            await admin.restock(variant, 10, product_id=product)
        process = StockProcess(settings)
        running.append(process)
        await process.start()
        assert process.api is not None
        await asyncio.wait_for(process.api.feed.tailing.wait(), WAIT)
        return process

    try:
        yield starting
    finally:
        for process in running:
            await process.stop()


def base_url(process: StockProcess) -> str:
    assert process.server is not None
    return f"127.0.0.1:{process.server.port}"


def ws_url(process: StockProcess, query: str = "") -> str:
    return f"ws://{base_url(process)}/api/inventory/ws" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def http_client(process: StockProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{base_url(process)}", timeout=WAIT) as client:
        yield client


async def restock(http: httpx.AsyncClient, variant: str, quantity: int = 1) -> dict[str, Any]:
    """Restocks through the API; the change it answered (its `version` names the event)."""
    answer = await http.post(
        "/api/inventory/restock",
        json={"updates": [{"variantId": variant, "quantity": quantity}]},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    change: dict[str, Any] = answer.json()["changes"][0]
    return change


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a heartbeat."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if message["type"] != "heartbeat":
            return message


async def subscribed(ws: ClientConnection) -> dict[str, Any]:
    message = await receive(ws)
    assert message["type"] == "subscribed", message
    return message


async def until(
    ws: ClientConnection, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Every message up to and including the first for which `last` holds."""
    seen = []
    while True:
        message = await receive(ws)
        seen.append(message)
        if last(message):
            return seen


def is_change(variant: str, version: int) -> Callable[[dict[str, Any]], bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message.get("data") or {}
        return (
            message["type"] == "stock.changed"
            and data.get("variant_id") == variant
            and data.get("version") == version
        )

    return matches


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Reads until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    received = closed.value.rcvd
    assert received is not None, "the connection ended without a close frame"
    return received.code, received.reason


async def next_sse_event(lines: AsyncIterator[str]) -> tuple[str, str, dict[str, Any]]:
    """The next SSE event: its name, id and JSON data; comments are skipped."""
    name, event_id, data = "", "", ""
    async for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("id:"):
            event_id = line.removeprefix("id:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif line == "" and name:
            return name, event_id, json.loads(data)
    raise AssertionError("the stream ended")


# ================================================================ what arrives


async def test_a_restock_through_the_api_arrives_as_it_does_on_sse(start: Start) -> None:
    process = await start()
    async with (
        http_client(process) as http,
        http.stream("GET", "/api/inventory/stream", params={"productId": "tee"}) as sse,
        connect(ws_url(process, "productId=tee")) as ws,
    ):
        lines = sse.aiter_lines()
        assert (await anext(lines)).startswith(":")  # the SSE stream is open
        opened = await subscribed(ws)
        assert opened["data"] == {
            "events": ["stock.changed"],
            "variantIds": [],
            "productIds": ["tee"],
        }
        await restock(http, "mug", 5)  # another product: filtered out of both
        await restock(http, "tee-m", 5)
        restocked_at = time.monotonic()
        message = await receive(ws)
        latency = time.monotonic() - restocked_at
        name, event_id, sse_data = await asyncio.wait_for(next_sse_event(lines), WAIT)
    assert message["type"] == name == "stock.changed"
    assert message["id"] == event_id
    assert message["data"] == sse_data
    data = message["data"]
    assert (data["variant_id"], data["product_id"]) == ("tee-m", "tee")
    assert (data["change_type"], data["on_hand"], data["available"], data["version"]) == (
        "RESTOCK",
        15,
        15,
        2,
    )
    print(f"restock -> WebSocket message: {latency * 1000:.0f} ms")  # shown with -s


async def test_an_idle_connection_gets_heartbeats(start: Start) -> None:
    process = await start(stream_heartbeat_seconds=0.2)
    async with connect(ws_url(process)) as ws:
        await subscribed(ws)
        beat = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert beat == {"type": "heartbeat"}


async def test_variant_and_product_filters_send_only_what_matches(start: Start) -> None:
    process = await start()
    async with (
        http_client(process) as http,
        connect(ws_url(process)) as everything,
        connect(ws_url(process, "variantId=tee-s&variantId=mug")) as variants,
        connect(ws_url(process, "productId=tee")) as product,
    ):
        for ws in (everything, variants, product):
            await subscribed(ws)
        versions = {v: (await restock(http, v))["version"] for v in ("tee-m", "tee-s", "mug")}
        # The feed offers each change to every subscriber at once: once the unfiltered
        # client has all three, the filtered ones were offered all three too.
        seen: set[str] = set()
        while seen != set(versions):
            seen.add((await receive(everything))["data"]["variant_id"])
        marker = (await restock(http, "tee-s"))["version"]
        got_variants = await until(variants, is_change("tee-s", marker))
        got_product = await until(product, is_change("tee-s", marker))
    assert sorted(m["data"]["variant_id"] for m in got_variants[:-1]) == ["mug", "tee-s"]
    assert sorted(m["data"]["variant_id"] for m in got_product[:-1]) == ["tee-m", "tee-s"]
    assert {m["type"] for m in got_variants + got_product} == {"stock.changed"}


async def test_more_than_100_ids_are_refused_at_the_handshake(start: Start) -> None:
    process = await start()
    query = "&".join(f"variantId=v{n}" for n in range(101))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(process, query)):
            pass
    assert refused.value.response.status_code == 403


# ================================================================ tokens


async def test_a_token_as_subprotocol_is_accepted_and_only_stock_v1_echoed(start: Start) -> None:
    process = await start(api_reads_require_token=True)
    async with (
        http_client(process) as http,
        connect(ws_url(process), subprotocols=["stock.v1", f"bearer.{READER}"]) as ws,
    ):
        assert ws.subprotocol == "stock.v1"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "stock.v1"
        await subscribed(ws)
        version = (await restock(http, "mug"))["version"]
        await until(ws, is_change("mug", version))


async def test_a_token_as_first_message_is_accepted(start: Start) -> None:
    process = await start(api_reads_require_token=True)
    async with http_client(process) as http, connect(ws_url(process)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": READER}))
        await subscribed(ws)
        version = (await restock(http, "mug"))["version"]
        await until(ws, is_change("mug", version))


async def test_without_the_reads_setting_no_token_is_needed(start: Start) -> None:
    process = await start()
    async with connect(ws_url(process)) as ws:
        assert ws.subprotocol is None  # none offered, none chosen
        await subscribed(ws)


@pytest.mark.parametrize("how", ["subprotocol", "first message"])
async def test_a_bad_token_closes_with_4401(start: Start, how: str) -> None:
    process = await start(api_reads_require_token=True)
    if how == "subprotocol":
        ws = await connect(ws_url(process), subprotocols=["stock.v1", "bearer.guess"])
    else:
        ws = await connect(ws_url(process))
        await ws.send(json.dumps({"type": "auth", "token": "guess"}))
    async with ws:
        code, reason = await closed_with(ws)
    assert code == 4401
    assert reason == "unauthorized: the token is not valid"


async def test_no_token_in_time_closes_with_4401(start: Start) -> None:
    process = await start(api_reads_require_token=True)
    async with connect(ws_url(process)) as ws:
        waited_from = time.monotonic()
        code, reason = await closed_with(ws)
    assert code == 4401
    assert reason.startswith("unauthorized: no token")
    assert time.monotonic() - waited_from >= AUTH_WAIT_SECONDS - 0.5


async def test_a_first_message_that_is_not_auth_closes_with_4400(start: Start) -> None:
    process = await start(api_reads_require_token=True)
    async with connect(ws_url(process)) as ws:
        await ws.send("hello")
        code, reason = await closed_with(ws)
    assert code == 4400
    assert reason.startswith("bad_request: the first message must be")


async def test_a_page_from_another_origin_is_refused_unless_allowed(start: Start) -> None:
    process = await start(http_cors_origins="https://shop.example")
    own = f"http://{base_url(process)}"
    async with connect(ws_url(process), origin="https://elsewhere.example") as ws:
        code, reason = await closed_with(ws)
    assert (code, reason.split(":")[0]) == (4403, "forbidden")
    for origin in ("https://shop.example", own):
        async with connect(ws_url(process), origin=origin) as ws:
            await subscribed(ws)


# ================================================================ alerts


async def test_alerts_are_sent_only_to_clients_that_ask(start: Start, kafka_settings) -> None:
    process = await start()
    anomaly_id = str(uuid.uuid4())
    anomaly = {
        "variant_id": "mug",
        "product_id": "mug",
        "rule": "large_adjustment",
        "observed": -60.0,
        "expected": 0.0,
        "score": 12.5,
        "reference": "test",
    }
    async with (
        http_client(process) as http,
        connect(ws_url(process, "events=changes,low,anomaly")) as asked,
        connect(ws_url(process)) as changes_only,
        connect(ws_url(process, "events=low")) as low_only,
    ):
        opened = await subscribed(asked)
        assert opened["data"]["events"] == ["stock.changed", "stock.low", "stock.anomaly"]
        await subscribed(changes_only)
        await subscribed(low_only)
        answer = await http.put(
            "/api/inventory/adjust",
            json={"updates": [{"variantId": "mug", "quantity": 2, "reason": "recount"}]},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        adjusted = answer.json()["changes"][0]["version"]
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            event = {"specversion": "1.0", "id": anomaly_id, "type": "stock.anomaly"}
            await producer.send_and_wait(
                kafka_settings.topic_stock_anomaly,
                json.dumps({**event, "source": "test", "data": anomaly}).encode(),
                key=b"mug",
            )
        finally:
            await producer.stop()
        got: dict[str, dict[str, Any]] = {}
        while not {"stock.changed", "stock.low", "stock.anomaly"} <= set(got):
            message = await receive(asked)
            if message["type"] != "stock.anomaly" or message["id"] == anomaly_id:
                got.setdefault(message["type"], message)
        # Offered to everyone together: the others had theirs by now. A marker after:
        marker = (await restock(http, "mug"))["version"]
        plain = await until(changes_only, is_change("mug", marker))
        low = await receive(low_only)
    assert got["stock.changed"]["data"]["version"] == adjusted
    assert got["stock.low"]["data"] == {
        "variant_id": "mug",
        "product_id": "mug",
        "available": 2,
        "threshold": 5,
        "out_of_stock": False,
    }
    assert got["stock.anomaly"]["data"] == anomaly
    assert {m["type"] for m in plain} == {"stock.changed"}
    assert low["type"] == "stock.low"
    assert low["data"] == got["stock.low"]["data"]


async def test_an_unknown_event_kind_closes_with_4400_naming_the_known(start: Start) -> None:
    process = await start()
    async with connect(ws_url(process, "events=changes,gossip")) as ws:
        code, reason = await closed_with(ws)
    assert code == 4400
    assert reason.startswith("bad_request: unknown event kind 'gossip'; known: changes, low")


async def test_replenished_and_reorder_are_offered_once_their_topics_exist(start: Start) -> None:
    """They come with the settings that name their topics (another change of issue 13):
    before that they are unknown kinds, after it they are subscribed to."""
    process = await start()
    settings = process.settings
    for kind, setting in (
        ("replenished", "topic_stock_replenished"),
        ("reorder", "topic_stock_reorder"),
    ):
        async with connect(ws_url(process, f"events={kind}")) as ws:
            if hasattr(settings, setting):
                opened = await subscribed(ws)
                assert opened["data"]["events"] == [f"stock.{kind}"]
            else:
                code, _ = await closed_with(ws)
                assert code == 4400


# ================================================================ limits


def _tiny_receive_buffer_socket(port: int) -> socket.socket:
    """A client socket whose kernel receive buffer is small, so that a client that stops
    reading fills the server's socket quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_slow_client_is_closed_with_4008_while_others_keep_receiving(
    start: Start, kafka_settings
) -> None:
    process = await start(stream_client_buffer=3)
    assert process.api is not None and process.server is not None
    feed = process.api.feed
    padding = "x" * 100_000  # large events fill the slow client's socket within a few
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.kafka_bootstrap_servers, max_request_size=1_048_576
    )
    await producer.start()
    slow = await connect(
        ws_url(process),
        sock=_tiny_receive_buffer_socket(process.server.port),
        max_queue=1,  # the client library stops reading its socket past one message
        compression=None,  # what it is sent fills the socket as it is
    )
    try:
        async with connect(ws_url(process), max_size=None) as reader:
            await subscribed(slow)
            await subscribed(reader)
            assert feed.subscriber_count == 2
            received = []
            for version in range(1, 301):
                data = {"variant_id": "v", "product_id": "p", "version": version, "pad": padding}
                value = json.dumps({"id": f"e{version}", "data": data}).encode()
                await producer.send_and_wait(kafka_settings.topic_stock_changed, value, key=b"v")
                message = await receive(reader)
                received.append(message["data"]["version"])
                if feed.subscriber_count == 1:
                    break
            assert feed.subscriber_count == 1, "the slow client was never cut off"
            # The reader got every one, in order, and keeps getting them.
            assert received == list(range(1, len(received) + 1))
            after = len(received) + 1
            value = json.dumps(
                {
                    "id": f"e{after}",
                    "data": {"variant_id": "v", "product_id": "p", "version": after},
                }
            ).encode()
            await producer.send_and_wait(kafka_settings.topic_stock_changed, value, key=b"v")
            assert (await receive(reader))["data"]["version"] == after
            # The slow client reads again: what its socket held, then the close.
            code, reason = await closed_with(slow)
        assert code == 4008
        assert reason.startswith("overflow:")
    finally:
        await slow.close()
        await producer.stop()


async def test_the_stream_limit_is_shared_with_sse(start: Start) -> None:
    process = await start(stream_max_clients=2)
    assert process.api is not None
    feed = process.api.feed
    async with http_client(process) as http:
        first = await connect(ws_url(process))
        await subscribed(first)
        async with http.stream("GET", "/api/inventory/stream") as sse:
            assert sse.status_code == 200
            await wait_until(lambda: feed.subscriber_count == 2, what="two streams open")
            async with connect(ws_url(process)) as third:
                code, reason = await closed_with(third)
            assert code == 1013
            assert reason.startswith("too_many_streams:")
            refused = await http.get("/api/inventory/stream")
            assert refused.status_code == 503
            assert refused.json()["code"] == "too_many_streams"
            await first.close()
            await wait_until(lambda: feed.subscriber_count == 1, what="the first one gone")
            async with connect(ws_url(process)) as again:
                await subscribed(again)


async def test_a_stopping_process_closes_with_1001(start: Start) -> None:
    process = await start()
    ws = await connect(ws_url(process))
    async with ws:
        await subscribed(ws)
        await process.stop()
        code, reason = await closed_with(ws)
    assert code == 1001
    assert reason.startswith("going away")
