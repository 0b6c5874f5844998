"""The worker as built, measured: real `stock run` processes against the stack.

Throughput: the whole stream is published first, then the workers start and drain it;
the rate is counted from the first applied event to the last (group join excluded).
Latency: with the workers warm, more orders are published at half that rate, and each
event is timed from its send to its `stock.reservation` answer on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.stack import (
    Stack,
    bench_settings,
    drop_database,
    fresh_database,
    load_catalogue,
    publish,
)
from bench.workload import BenchEvent, Scenario, build_events
from service.adapters.database import asyncpg_dsn
from service.adapters.kafka import ensure_topics
from service.settings import Settings

SAMPLE_SECONDS = 0.25
DRAIN_TIMEOUT = 900.0

#: Which consumed event a `stock.reservation` status answers.
_ANSWERS = {
    "RESERVED": "order.checkout",
    "REJECTED": "order.checkout",
    "CONFIRMED": "payment.succeeded",
    "CONFIRM_FAILED": "payment.succeeded",
    "RETURNED": "order.cancelled",
}


@dataclass
class WorkerRun:
    events: int
    seconds: float
    timeline: list[tuple[float, int]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    commits_per_event: float = 0.0
    outbox_max_backlog: int = 0
    outbox_drain_seconds: float = 0.0
    latency_rate: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def measure_worker(
    stack: Stack,
    scenario: Scenario,
    run: str,
    *,
    latency_share: float = 0.25,
    latency_rate: float | None = None,
    relay_apart: bool = False,
    while_warm: Callable[[Settings, WorkerRun], Awaitable[None]] | None = None,
) -> WorkerRun:
    """`while_warm`: more measurements against the same warm workers (the probe's
    latency curve), after the throughput, latency and stock checks."""
    url = await fresh_database(stack, scenario.name)
    await load_catalogue(url, scenario)
    settings = bench_settings(url, stack, run)
    await ensure_topics(settings)
    events = build_events(scenario, settings, run=f"{run}a")
    await publish(stack.bootstrap, events)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    commits_before = await _commits(conn)
    processes = [_start_worker(settings, n, relay_apart) for n in range(scenario.workers)]
    if relay_apart:
        processes.append(_start(settings, ["relay"], "relay"))
    try:
        result = await _drain(conn, processes, len(events))
        result.commits_per_event = (await _commits(conn) - commits_before) / len(events)
        latency_events = build_events(
            scenario.scaled(latency_share), settings, run=f"{run}b", seed=99
        )
        result.latency_rate = latency_rate or result.rate / 2
        result.latencies_ms = await _latencies(stack, settings, latency_events, result.latency_rate)
        result.cpu_seconds, result.peak_rss_mb = _usage(processes)
        result.checks = await _stock_checks(conn, scenario)
        if while_warm is not None:
            await while_warm(settings, result)
    finally:
        await conn.close()
        _stop(processes)
        await drop_database(stack, url)
    return result


def _start_worker(settings: Settings, index: int, relay_apart: bool) -> subprocess.Popen[bytes]:
    command = ["run", "--no-api", *(["--no-relay"] if relay_apart else [])]
    return _start(settings, command, str(index))


def _start(settings: Settings, command: list[str], name: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    for field_name, value in settings.model_dump().items():
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"STOCK_{field_name.upper()}"] = str(raw)
    env["STOCK_KAFKA_CLIENT_ID"] = f"{settings.kafka_client_id}-{name}"
    env["STOCK_LOG_LEVEL"] = "WARNING"
    return subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _commits(conn: asyncpg.Connection) -> int:
    """Committed transactions of this database so far. Backends report them up to a
    second late, so wait that long first."""
    await asyncio.sleep(1.5)
    commits: int = await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return commits


async def _drain(
    conn: asyncpg.Connection, processes: list[subprocess.Popen[bytes]], total: int
) -> WorkerRun:
    started = time.monotonic()
    first_at: float | None = None
    idle_until = started
    max_backlog = 0
    timeline: list[tuple[float, int]] = []
    applied_at: float | None = None
    while True:
        processed, backlog = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM processed_events),
                   (SELECT count(*) FROM outbox WHERE published_at IS NULL)
            """
        )
        now = time.monotonic()
        if not processed:
            # The first event is applied between this poll and the next: counting from
            # here errs by at most one poll interval, on the slow side.
            first_at = None
            idle_until = now
        elif first_at is None:
            first_at = idle_until
        if first_at is not None:
            timeline.append((now - first_at, processed))
            max_backlog = max(max_backlog, backlog)
        if processed >= total and applied_at is None:
            applied_at = now
        if applied_at is not None and backlog == 0:
            break
        if now - started > DRAIN_TIMEOUT or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"workers did not drain: {processed}/{total} applied")
        await asyncio.sleep(SAMPLE_SECONDS)
    assert first_at is not None
    return WorkerRun(
        events=total,
        seconds=applied_at - first_at,
        timeline=timeline,
        outbox_max_backlog=max_backlog,
        outbox_drain_seconds=time.monotonic() - applied_at,
    )


async def _latencies(
    stack: Stack, settings: Settings, events: list[BenchEvent], rate: float
) -> list[float]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await reader.start()
    try:
        await reader.topics()
        partitions = [
            TopicPartition(settings.topic_stock_reservation, p)
            for p in sorted(reader.partitions_for_topic(settings.topic_stock_reservation) or ())
        ]
        reader.assign(partitions)
        await reader.seek_to_end(*partitions)
        for tp in partitions:
            await reader.position(tp)
        answered: dict[tuple[str, str], float] = {}
        wanted = {(e.order_id, e.type) for e in events}
        publishing = asyncio.create_task(publish(stack.bootstrap, events, rate=rate))
        # Not every event gets an answer of its own (a payment failure after a
        # rejection changes nothing): stop once answers have stopped coming.
        last_answer = time.monotonic()
        while not wanted <= answered.keys():
            if publishing.done() and time.monotonic() - last_answer > 3:
                break
            batches = await reader.getmany(timeout_ms=100)
            arrived = time.monotonic()
            if batches:
                last_answer = arrived
            for records in batches.values():
                for record in records:
                    data = json.loads(record.value)["data"]
                    answers = _answered_type(data)
                    if answers is not None:
                        answered.setdefault((data["order_id"], answers), arrived)
        sent_at = await publishing
    finally:
        await reader.stop()
    return sorted(
        (answered[(e.order_id, e.type)] - sent) * 1000
        for e, sent in zip(events, sent_at, strict=True)
        if (e.order_id, e.type) in answered
    )


def _answered_type(data: dict[str, Any]) -> str | None:
    status, reason = data["status"], data.get("reason")
    if status == "RELEASED":
        return "payment.failed" if reason == "payment_failed" else "order.cancelled"
    return _ANSWERS.get(status)


def _usage(processes: list[subprocess.Popen[bytes]]) -> tuple[float, float]:
    """CPU seconds (all workers) and the largest peak RSS of one worker, in MB, from
    /proc (Linux): utime + stime of /proc/PID/stat, VmHWM of /proc/PID/status."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = 0.0
    peak_kb = 0
    for process in processes:
        with open(f"/proc/{process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
    return cpu, peak_kb / 1024


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def _stock_checks(conn: asyncpg.Connection, scenario: Scenario) -> dict[str, Any]:
    """After every hold is settled: nothing oversold, nothing stranded."""
    for _ in range(120):  # short holds expire within a few sweeps
        held = await conn.fetchval("SELECT count(*) FROM orders WHERE phase = 'RESERVED'")
        if held == 0:
            break
        await asyncio.sleep(0.5)
    row = await conn.fetchrow(
        """
        SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved,
               count(*) FILTER (WHERE reserved < 0 OR reserved > on_hand OR on_hand < 0) AS broken
        FROM variants
        """
    )
    sold = await conn.fetchval(
        "SELECT -coalesce(sum(delta_on_hand), 0) FROM audit_log "
        "WHERE change_type IN ('SALE', 'RETURN')"
    )
    initial = scenario.variants * scenario.units_per_variant
    return {
        "units": initial,
        "sold": int(sold),
        "on_hand": int(row["on_hand"]),
        "reserved": int(row["reserved"]),
        "oversold": max(int(sold) - initial, 0),
        "balance_ok": int(row["on_hand"]) + int(sold) == initial,
        "constraint_violations": int(row["broken"]),
        "still_reserved_orders": int(held),
    }
