"""Where a checkout's time goes, from the worker's own OpenTelemetry spans
(service/tracing.py), and what tracing costs when it is off.

`span_breakdown(...)` runs a short load with tracing on into OpenTelemetry's in-memory
exporter and returns, per span name, how many there were and their p50/p99/mean
durations in milliseconds: `process batch` and its phases `decode`, `claim`, `lock`,
`decide`, `write`, `commit`; `process <checkout topic>` (one per traced checkout, from
its batch's start to its end); with a broker, `publish <topic>` (the relay's sends;
and the fast path's, where it makes that span). Without a broker it drives the batch
consumer directly (no Kafka, no publish spans).

    .venv/bin/python -m bench.span_breakdown [--orders N] [--batch N] [--kafka]
    .venv/bin/python -m bench.span_breakdown cost [--baseline REV] [--rounds N]

`cost` compares, in one run on one machine, the code without tracing with the code
now, tracing off, and tracing on: the per-event CPU of decoding a checkout and of
writing an outbox event (no database), then the batch path on an embedded PostgreSQL.
"Without tracing" is the work tree with the tracing commits' changes to the code they
hooked into taken out again (`TRACING_CHANGES`), so that nothing else differs; or, with
`--baseline REV`, the tree at a git revision. Each variant is a subprocess of its own,
alternated round by round so that the machine's noise falls on all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: What tracing changed in code it hooked into: (from, to, paths), oldest first.
TRACING_CHANGES = [
    (
        "9e1ea69",
        "849d361",
        [
            "service/adapters/outbox_relay.py",
            "service/application/consume.py",
            "service/application/unit_of_work.py",
            "service/entrypoints/cli.py",
            "service/entrypoints/http/app.py",
            "service/inbound.py",
        ],
    ),
    ("7ac87e3^", "7ac87e3", ["schemas/stock_schemas/kafka.py"]),
]
#: And by hand where other code has since been built on a hook: the event writer's
#: tests of `tracing.ENABLED` (its text path is then the only path).
TRACING_EDITS = [
    ("service/outbound.py", "from service import tracing\n", ""),
    (
        "service/outbound.py",
        "        if tracing.ENABLED:  # the trace context of what caused it, on event and header\n"
        "            headers = tracing.stamp(event, headers, correlation_id)\n",
        "",
    ),
    ("service/outbound.py", "if not tracing.ENABLED:", "if True:"),
]
VARIANTS = 200


def summarize(spans: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Finished spans -> {name: {count, p50_ms, p99_ms, mean_ms}}, by name."""
    durations: dict[str, list[float]] = {}
    for span in spans:
        if span.end_time is None or span.start_time is None:
            continue
        durations.setdefault(span.name, []).append((span.end_time - span.start_time) / 1e6)
    return {name: _stats(values) for name, values in sorted(durations.items())}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {
        "count": float(len(ordered)),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "mean_ms": statistics.fmean(ordered),
    }


def _traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def _checkout(index: int, source: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": "order.checkout",
        "time": "2026-01-01T00:00:00+00:00",
        "datacontenttype": "application/json",
        "traceparent": _traceparent(),
        "data": {
            "order_id": f"o-{index}",
            "lines": [
                {"variant_id": f"v{index % VARIANTS}", "quantity": 1},
                {"variant_id": f"v{(index * 7 + 1) % VARIANTS}", "quantity": 1},
            ],
        },
    }


async def _load_catalogue(database_url: str) -> None:
    import asyncpg

    from service.adapters.database import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO variants (variant_id, product_id, on_hand) "
            "SELECT 'v' || i, 'p' || (i % 20), 1000000 FROM generate_series(0, $1 - 1) i",
            VARIANTS,
        )
    finally:
        await conn.close()


async def span_breakdown(
    database_url: str,
    *,
    orders: int = 2000,
    batch_size: int = 200,
    bootstrap: str | None = None,
) -> dict[str, dict[str, float]]:
    """Per-span p50/p99/mean milliseconds of `orders` two-line traced checkouts.

    `database_url`: an empty, migrated database (its catalogue is added here). Without
    `bootstrap`, batches of `batch_size` go straight to the batch consumer; with it, the
    checkouts go through that broker to a real worker (consumer, fast path, relay) on
    topics of their own, and the run ends when every answer has been read back."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service import tracing

    await _load_catalogue(database_url)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        if bootstrap is None:
            await _through_the_consumer(database_url, orders, batch_size)
        else:
            await _through_kafka(database_url, bootstrap, orders, batch_size)
    finally:
        tracing.uninstall()
    return summarize(exporter.get_finished_spans())


async def _through_the_consumer(database_url: str, orders: int, batch_size: int) -> None:
    from service.adapters.database import create_engine
    from service.application.consume import BatchConsumer
    from service.settings import Settings

    settings = Settings(database_url=database_url)
    engine = create_engine(database_url)
    records = [
        _Record(
            settings.topic_order_checkout, json.dumps(_checkout(i, "bench")).encode(), offset=i
        )
        for i in range(orders)
    ]
    consumer = BatchConsumer(engine, settings)
    try:
        for start in range(0, len(records), batch_size):
            await consumer.handle(records[start : start + batch_size])
    finally:
        await engine.dispose()


class _Record:
    """The plain data of a consumed Kafka record."""

    def __init__(self, topic: str, value: bytes, offset: int) -> None:
        self.topic, self.value, self.offset = topic, value, offset
        self.partition = 0
        self.timestamp = int(time.time() * 1000)
        self.key: bytes | None = None
        self.headers: tuple[tuple[str, bytes], ...] = ()


async def _through_kafka(database_url: str, bootstrap: str, orders: int, batch_size: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from service.adapters.kafka import ensure_topics
    from service.entrypoints.worker import Worker
    from service.settings import isolated_settings

    settings = isolated_settings(
        f"spans{uuid.uuid4().hex[:6]}",
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=False,
        batch_max_records=batch_size,
        jobs_enabled=False,
    )
    await ensure_topics(settings)
    reader = AIOKafkaConsumer(
        settings.topic_stock_reservation,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    worker = Worker(settings, sweep=False)
    await worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        for i in range(orders):
            event = _checkout(i, "bench")
            await producer.send(
                settings.topic_order_checkout,
                json.dumps(event).encode(),
                key=event["data"]["order_id"].encode(),
            )
        await producer.flush()
        answered = 0
        deadline = time.monotonic() + 120
        while answered < orders and time.monotonic() < deadline:
            fetched = await reader.getmany(timeout_ms=200)
            answered += sum(len(records) for records in fetched.values())
        # The relay's last sends (stock.changed) end their spans after their delivery.
        await asyncio.sleep(1.0)
    finally:
        await producer.stop()
        await worker.stop()
        await reader.stop()


def print_breakdown(breakdown: dict[str, dict[str, float]]) -> None:
    print(f"{'span':<36} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, row in breakdown.items():
        print(
            f"{name:<36} {int(row['count']):>7} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['mean_ms']:>8.2f}"
        )


# ---------------------------------------------------------------- the cost of tracing


_PROBE = r'''
import asyncio, json, sys, time
from datetime import UTC, datetime
mode, database_url = sys.argv[1], sys.argv[2]
orders, batch_size = int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from bench.span_breakdown import _checkout, _Record, _load_catalogue
from service.inbound import decode_record
from service.outbound import EventWriter
from service.settings import Settings
if mode == "on":
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from service import tracing
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracing.install(provider)

settings = Settings(database_url=database_url)
topic = settings.topic_order_checkout
records = [_Record(topic, json.dumps(_checkout(i, "probe")).encode(), i) for i in range(2000)]
writer = EventWriter(settings)
now = datetime.now(UTC)
data = {"order_id": "o-1", "status": "RESERVED", "lines": [{"variant_id": "v1", "quantity": 1}]}

def best(work, repeat=9):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) / 2000 * 1e6

decode_us = best(lambda: [decode_record(r, "order.checkout") for r in records])
write_us = best(lambda: [writer._event(topic, "stock.reservation", "o-1", data, now, "o-1")
                         for _ in range(2000)])

async def batch_path():
    from service.adapters.database import create_engine
    from service.application.consume import BatchConsumer
    await _load_catalogue(database_url)
    engine = create_engine(database_url)
    consumer = BatchConsumer(engine, settings)
    records = [_Record(topic, json.dumps(_checkout(i, "path")).encode(), i) for i in range(orders)]
    started = time.perf_counter()
    for start in range(0, orders, batch_size):
        await consumer.handle(records[start:start + batch_size])
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return orders / elapsed

import service
assert service.__file__.startswith(sys.argv[5]), service.__file__
print(json.dumps({"decode_us": decode_us, "write_us": write_us,
                  "events_per_s": asyncio.run(batch_path())}))
'''


def _export(revision: str | None) -> Path:
    """The baseline's tree (service, schemas, bench): the work tree without the tracing
    changes, or the tree at `revision`."""
    where = Path(tempfile.mkdtemp(prefix="stock-without-tracing-"))
    if revision is None:
        for part in ("service", "schemas", "bench"):
            shutil.copytree(
                ROOT / part, where / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        for start, end, paths in reversed(TRACING_CHANGES):
            patch = subprocess.run(
                ["git", "diff", "-U1", start, end, "--", *paths], cwd=ROOT, check=True,
                capture_output=True, text=True,
            ).stdout
            _take_out(patch, where)
        for name, old, new in TRACING_EDITS:
            path = where / name
            text = path.read_text()
            if old not in text:
                raise RuntimeError(f"{name}: {old!r} is gone; update TRACING_EDITS")
            path.write_text(text.replace(old, new))
    else:
        archive = subprocess.run(
            ["git", "archive", revision, "service", "schemas", "bench"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    # The probe's helpers are this file's, whatever the baseline's bench/ holds.
    (where / "bench" / "span_breakdown.py").write_bytes(Path(__file__).read_bytes())
    return where


def _take_out(patch: str, where: Path) -> None:
    """Undo `patch` in the files under `where` by content, not by position: each run of
    added lines (with the line before it) goes back to the removed lines, wherever it
    sits now. Others' changes near the hooks do not get in the way, as they would a
    reversed `patch`; a run no longer found once is an error."""
    path: Path | None = None
    before = ""
    removed: list[str] = []
    added: list[str] = []

    def flush() -> None:
        nonlocal removed, added
        if path is not None and (removed or added):
            text = path.read_text()
            now, then = before + "".join(added), before + "".join(removed)
            if text.count(now) != 1 and text.count("".join(added)) == 1:
                now, then = "".join(added), "".join(removed)  # the line before changed
            if text.count(now) != 1:
                raise RuntimeError(f"{path}: cannot take out {''.join(added)!r}")
            path.write_text(text.replace(now, then))
        removed, added = [], []

    for line in patch.splitlines(keepends=True):
        if line.startswith("+++ "):
            flush()
            path = where / line[len("+++ b/") :].strip()
        elif line.startswith(("--- ", "diff ", "index ")):
            flush()
        elif line.startswith("@@"):
            flush()
            before = ""
        elif line.startswith("+"):
            added.append(line[1:])
        elif line.startswith("-"):
            removed.append(line[1:])
        else:
            flush()
            before = line[1:]
    flush()


async def _create_database(server_url: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    from service.adapters.database import asyncpg_dsn

    name = f"stock_cost_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


_MIGRATE = "import sys; from service.adapters.migrate import upgrade_to_head as up; up(sys.argv[1])"


def _fresh_database(server_url: str, tree: Path) -> str:
    """A new database on the server, migrated by `tree`'s own migrations."""
    url = asyncio.run(_create_database(server_url))
    env = dict(os.environ, PYTHONPATH=f"{tree}:{tree / 'schemas'}")
    subprocess.run([sys.executable, "-c", _MIGRATE, url], check=True, env=env, cwd=tree)
    return url


def measure_cost(
    server_url: str, *, baseline: str | None = None, rounds: int = 3, orders: int = 3000,
    batch_size: int = 300,
) -> dict[str, dict[str, list[float]]]:
    """{variant: {metric: [one figure per round]}} for without / off / on."""
    without = _export(baseline)
    trees = {"without": without, "off": ROOT, "on": ROOT}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(rounds):
        for variant, tree in trees.items():
            url = _fresh_database(server_url, tree)
            env = dict(os.environ, PYTHONPATH=f"{tree}:{tree / 'schemas'}")
            out = subprocess.run(
                [sys.executable, "-c", _PROBE, variant, url, str(orders), str(batch_size),
                 str(tree)],
                check=True, capture_output=True, text=True, env=env, cwd=tree,
            ).stdout
            for metric, value in json.loads(out.splitlines()[-1]).items():
                results[variant].setdefault(metric, []).append(value)
    return results


def print_cost(results: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'':<8} {'decode µs/event':>16} {'write µs/event':>15} {'batch path ev/s':>16}")
    for variant, metrics in results.items():
        print(
            f"{variant:<8} {min(metrics['decode_us']):>16.2f} {min(metrics['write_us']):>15.2f} "
            f"{statistics.median(metrics['events_per_s']):>16,.0f}"
        )
    print("(decode, write: best of 9 x 2,000 per round, best round; batch path: median round)")


# ------------------------------------------------------------------------------ main


@contextlib.contextmanager
def _postgres() -> Any:
    from service.devstack.servers import EmbeddedPostgres

    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stock-spans-")) / "pg", delete_on_stop=True
    )
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(prog="python -m bench.span_breakdown")
    parser.add_argument("what", nargs="?", choices=["breakdown", "cost"], default="breakdown")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--kafka", action="store_true", help="through a tansu broker and a worker")
    parser.add_argument("--baseline", default=None, help="a git revision (default: see above)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with _postgres() as server_url:
        if args.what == "cost":
            print_cost(measure_cost(server_url, baseline=args.baseline, rounds=args.rounds))
            return
        url = _fresh_database(server_url, ROOT)
        if not args.kafka:
            print_breakdown(asyncio.run(span_breakdown(url, orders=args.orders,
                                                       batch_size=args.batch)))
            return
        from service.devstack.servers import TansuBroker

        broker = TansuBroker()
        bootstrap = broker.start()
        try:
            print_breakdown(
                asyncio.run(
                    span_breakdown(
                        url, orders=args.orders, batch_size=args.batch, bootstrap=bootstrap
                    )
                )
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
