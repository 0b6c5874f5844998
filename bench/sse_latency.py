"""How long a restock made through the HTTP API takes to arrive on the SSE stream.

Against a running `make run` (or any `stock run`):
    .venv/bin/python bench/sse_latency.py [N] [BASE_URL] [VARIANT]
Token: $STOCK_TOKEN, else .stock-dev/token. Prints p50/p95/max over N restocks, each
timed from the moment the API answered 200 to the moment its event arrived.
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


async def main(count: int, base: str, variant: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http, http.stream(
        "GET", "/api/inventory/stream", params={"variantId": variant}
    ) as stream:
        lines = stream.aiter_lines()
        await anext(lines)  # ": stream open"
        for _ in range(count):
            answer = await http.post(
                "/api/inventory/restock",
                json={"updates": [{"variantId": variant, "quantity": 1}]},
                headers=auth,
            )
            answer.raise_for_status()
            version = answer.json()["changes"][0]["version"]
            answered = time.perf_counter()
            async for line in lines:
                if line.startswith("data:") and json.loads(line[5:])["version"] == version:
                    break
            latencies.append((time.perf_counter() - answered) * 1000)
    latencies.sort()
    p95 = latencies[max(int(len(latencies) * 0.95) - 1, 0)]
    print(
        f"{count} restocks -> SSE: p50 {statistics.median(latencies):.1f} ms, "
        f"p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            int(args[0]) if args else 50,
            args[1] if len(args) > 1 else "http://127.0.0.1:8000",
            args[2] if len(args) > 2 else "tshirt-classic-black-s",
            os.environ.get("STOCK_TOKEN") or Path(".stock-dev/token").read_text().strip(),
        )
    )
