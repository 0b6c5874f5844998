"""How long a restock made through the HTTP API takes to arrive on the WebSocket.

Against a running `make run` (or `stock dev`, or any `stock run`):
    .venv/bin/python bench/ws_latency.py [N] [BASE_URL] [VARIANT]
Token: $STOCK_TOKEN, else .stock-dev/token (sent as the `bearer.<token>` subprotocol, so
it works with STOCK_API_READS_REQUIRE_TOKEN too). Prints p50/p95/p99/max over N
restocks made one after the other, each timed to the moment its message arrived: from
the API's 200 (as bench/sse_latency.py does), and from the request's start.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[max(int(len(ordered) * share + 0.5) - 1, 0)]


def _summary(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (
        f"{name}: p50 {statistics.median(ordered):.1f} ms, p95 {_percentile(ordered, 0.95):.1f} "
        f"ms, p99 {_percentile(ordered, 0.99):.1f} ms, max {ordered[-1]:.1f} ms"
    )


async def main(count: int, base: str, variant: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    url = base.replace("http", "ws", 1) + f"/api/inventory/ws?variantId={variant}"
    from_answer: list[float] = []
    from_request: list[float] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        connect(url, subprotocols=["stock.v1", f"bearer.{token}"]) as ws,
    ):
        opened = json.loads(await ws.recv())
        assert opened["type"] == "subscribed", opened
        for _ in range(count):
            sent = time.perf_counter()
            answer = await http.post(
                "/api/inventory/restock",
                json={"updates": [{"variantId": variant, "quantity": 1}]},
                headers=auth,
            )
            answered = time.perf_counter()
            answer.raise_for_status()
            version = answer.json()["changes"][0]["version"]
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "stock.changed" and message["data"]["version"] == version:
                    break
            arrived = time.perf_counter()
            from_answer.append((arrived - answered) * 1000)
            from_request.append((arrived - sent) * 1000)
    print(f"{count} restocks -> WebSocket")
    print("  " + _summary("from the API's answer", from_answer))
    print("  " + _summary("from the request     ", from_request))


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            int(args[0]) if args else 200,
            args[1] if len(args) > 1 else "http://127.0.0.1:8000",
            args[2] if len(args) > 2 else "tshirt-classic-black-s",
            os.environ.get("STOCK_TOKEN") or Path(".stock-dev/token").read_text().strip(),
        )
    )
