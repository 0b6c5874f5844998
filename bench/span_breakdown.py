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
import atexit
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The copies of the code a run makes, removed when it ends.
_COPIES: list[Path] = []
atexit.register(lambda: [shutil.rmtree(path, ignore_errors=True) for path in _COPIES])


def _copy_dir(prefix: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix=prefix))
    _COPIES.append(where)
    return where
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
        ],
    ),
    ("a198ee6^", "a198ee6", ["service/adapters/fast_publish.py"]),
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


def summarize(spans: Iterable[Any], strip: str = "") -> dict[str, dict[str, float]]:
    """Finished spans -> {name: {count, p50_ms, p99_ms, mean_ms}}, by name (without
    `strip`, a run's topic prefix: `publish stock.reservation`, not `publish x.stock...`)."""
    durations: dict[str, list[float]] = {}
    for span in spans:
        if span.end_time is None or span.start_time is None:
            continue
        name = span.name.replace(strip, "") if strip else span.name
        durations.setdefault(name, []).append((span.end_time - span.start_time) / 1e6)
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
        "time": datetime.now(UTC).isoformat(),  # a past time would be a stale checkout
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
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service import tracing

    await _load_catalogue(database_url)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    # As in production: spans are exported off the event loop's thread, in batches (a
    # synchronous export would add its own time to every parent span).
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1_000_000))
    tracing.install(provider)
    try:
        if bootstrap is None:
            await _through_the_consumer(database_url, orders, batch_size)
            prefix = ""
        else:
            prefix = await _through_kafka(database_url, bootstrap, orders, batch_size)
    finally:
        tracing.uninstall()  # flushes what is queued
    return summarize(exporter.get_finished_spans(), strip=prefix)


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


async def _through_kafka(database_url: str, bootstrap: str, orders: int, batch_size: int) -> str:
    """Returns the prefix of the run's topic names."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from service.adapters.kafka import ensure_topics
    from service.entrypoints.worker import Worker
    from service.settings import isolated_settings

    prefix = f"spans{uuid.uuid4().hex[:6]}"
    settings = isolated_settings(
        prefix,
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
        # Until the relay has sent the rest (stock.changed): its spans end with delivery.
        await _outbox_drained(database_url, deadline)
    finally:
        await producer.stop()
        await worker.stop()
        await reader.stop()
    return prefix + "."


async def _outbox_drained(database_url: str, deadline: float) -> None:
    import asyncpg

    from service.adapters.database import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        while time.monotonic() < deadline:
            waiting = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            if not waiting:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the last delivery's span
    finally:
        await conn.close()


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
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from service import tracing
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=1_000_000)
    )
    tracing.install(provider)

settings = Settings(database_url=database_url)
topic = settings.topic_order_checkout
records = [_Record(topic, json.dumps(_checkout(i, "probe")).encode(), i) for i in range(2000)]
from stock_schemas.events import ChangeType, ReservationStatus
from service.domain.model import ReservationOutcome, StockChange
writer = EventWriter(settings)
now = datetime.now(UTC)
outcome = ReservationOutcome("o-1", ReservationStatus.RESERVED, (("v1", 1), ("v2", 2)))
change = StockChange("v1", "p1", ChangeType.RESERVE, 0, 1, 10, 1, 7, "o-1", None, None)

def best(work, repeat=9):
    # CPU time, not wall time: the machine is shared, time slices lost to others do not
    # count; the best of the repeats.
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times) / 2000 * 1e6

decode_us = best(lambda: [decode_record(r, "order.checkout") for r in records])
# The two events of every checkout: its answer and a stock change (per event: / 2).
write_us = best(lambda: [(writer.reservation(outcome, now), writer.stock_changed(change, now))
                         for _ in range(1000)])

async def batch_path():
    from service.adapters.database import create_engine
    from service.application.consume import BatchConsumer
    await _load_catalogue(database_url)
    engine = create_engine(database_url)
    consumer = BatchConsumer(engine, settings)
    records = [_Record(topic, json.dumps(_checkout(i, "path")).encode(), i) for i in range(orders)]
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, orders, batch_size):
        await consumer.handle(records[start:start + batch_size])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await engine.dispose()
    return orders / elapsed, cpu / orders * 1e6

import service
assert service.__file__.startswith(sys.argv[5]), service.__file__
rate, cpu_us = asyncio.run(batch_path()) if orders else (0.0, 0.0)
print(json.dumps({"decode_us": decode_us, "write_us": write_us,
                  "events_per_s": rate, "path_cpu_us": cpu_us}))
'''


def _snapshot(source: Path, prefix: str) -> Path:
    """A copy of `source`'s service, schemas and bench: what the run measures stays put
    while people edit the work tree."""
    where = _copy_dir(prefix)
    for part in ("service", "schemas", "bench"):
        shutil.copytree(source / part, where / part, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def _export(revision: str | None, now: Path) -> Path:
    """The baseline's tree (service, schemas, bench): `now` without the tracing
    changes, or the tree at `revision`."""
    if revision is None:
        where = _snapshot(now, "stock-without-tracing-")
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
        where = _copy_dir("stock-baseline-")
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


def _renamed(tree: Path) -> Path:
    """`tree`'s service and stock_schemas packages as `service_without` and
    `stock_schemas_without`, importable beside the real ones in one process."""
    where = _copy_dir("stock-renamed-")
    shutil.copytree(tree / "service", where / "service_without")
    shutil.copytree(tree / "schemas" / "stock_schemas", where / "stock_schemas_without")
    for path in where.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bstock_schemas\b", "stock_schemas_without", text)
        text = re.sub(r"\b(from|import) service\b", r"\1 service_without", text)
        path.write_text(text)
    return where


def measure_cpu_in_one_process(rounds: int = 30) -> dict[str, dict[str, float]]:
    """Per-event CPU (µs) of decoding a checkout and writing its two events, with and
    without the tracing changes, tracing off, timed turn about in this one process
    (separate processes differ by more than what is measured here). Best of `rounds`."""
    from datetime import UTC, datetime

    now_tree = _snapshot(ROOT, "stock-with-tracing-")
    renamed = _renamed(_export(None, now_tree))
    sys.path.insert(0, str(renamed))
    import service_without.domain.model as model_without  # type: ignore[import-not-found]
    import service_without.inbound as inbound_without  # type: ignore[import-not-found]
    import service_without.outbound as outbound_without  # type: ignore[import-not-found]
    from stock_schemas.events import ChangeType, ReservationStatus

    import service.domain.model as model_now
    import service.inbound as inbound_now
    import service.outbound as outbound_now
    from service.settings import Settings

    settings = Settings()
    topic = settings.topic_order_checkout
    records = [_Record(topic, json.dumps(_checkout(i, "probe")).encode(), i) for i in range(2000)]
    at = datetime.now(UTC)
    work: dict[str, dict[str, Any]] = {}
    for name, inbound, outbound, model in (
        ("without", inbound_without, outbound_without, model_without),
        ("off", inbound_now, outbound_now, model_now),
    ):
        writer = outbound.EventWriter(settings)
        outcome = model.ReservationOutcome(
            "o-1", ReservationStatus.RESERVED, (("v1", 1), ("v2", 2))
        )
        change = model.StockChange(
            "v1", "p1", ChangeType.RESERVE, 0, 1, 10, 1, 7, "o-1", None, None
        )
        decode = inbound.decode_record

        def decoding(decode: Any = decode) -> None:
            for record in records:
                decode(record, "order.checkout")

        def writing(writer: Any = writer, outcome: Any = outcome, change: Any = change) -> None:
            for _ in range(1000):
                writer.reservation(outcome, at)
                writer.stock_changed(change, at)

        work[name] = {"decode": decoding, "write": writing}
    figures = {name: {"decode": float("inf"), "write": float("inf")} for name in work}
    for _ in range(rounds):
        for name, runs in work.items():
            for metric, run in runs.items():
                started = time.process_time()
                run()
                took = (time.process_time() - started) / 2000 * 1e6
                figures[name][metric] = min(figures[name][metric], took)
    return figures


def measure_path_cpu_in_one_process(
    database_url: str, rounds: int = 20, batch_size: int = 300
) -> dict[str, list[float]]:
    """CPU of this process per consumed checkout (µs) through the whole batch path on
    PostgreSQL (decode, claim, lock, decide, write-back, commit), with and without the
    tracing changes, tracing off: a batch of each in turn, `rounds` times, one process,
    one database. {variant: [µs per event of each batch]}."""
    import prometheus_client

    from service.adapters.database import create_engine
    from service.application.consume import BatchConsumer

    now_tree = _snapshot(ROOT, "stock-with-tracing-")
    renamed = _renamed(_export(None, now_tree))
    sys.path.insert(0, str(renamed))
    registry = prometheus_client.REGISTRY
    for collector in list(registry._collector_to_names):  # the copy registers its own
        registry.unregister(collector)
    from service_without.adapters.database import (  # type: ignore[import-not-found]
        create_engine as create_engine_without,
    )
    from service_without.application.consume import (  # type: ignore[import-not-found]
        BatchConsumer as ConsumerWithout,
    )
    from service_without.settings import (  # type: ignore[import-not-found]
        Settings as SettingsWithout,
    )

    async def run() -> dict[str, list[float]]:
        await _load_catalogue(database_url)
        from service.settings import Settings

        engines = [create_engine_without(database_url), create_engine(database_url)]
        consumers = {
            "without": ConsumerWithout(engines[0], SettingsWithout(database_url=database_url)),
            "off": BatchConsumer(engines[1], Settings(database_url=database_url)),
        }
        topic = Settings().topic_order_checkout
        figures: dict[str, list[float]] = {name: [] for name in consumers}
        serial = 0
        try:
            for round_ in range(rounds + 1):
                names = list(consumers)[:: 1 if round_ % 2 else -1]
                for name in names:
                    records = []
                    for _ in range(batch_size):
                        serial += 1
                        event = json.dumps(_checkout(serial, "path")).encode()
                        records.append(_Record(topic, event, serial))
                    started = time.process_time()
                    await consumers[name].handle(records)
                    took = (time.process_time() - started) / batch_size * 1e6
                    if round_:  # the first round warms both up
                        figures[name].append(took)
        finally:
            for engine in engines:
                await engine.dispose()
        return figures

    return asyncio.run(run())


def measure_cost(
    server_url: str, *, baseline: str | None = None, rounds: int = 3, orders: int = 3000,
    batch_size: int = 300,
) -> dict[str, dict[str, list[float]]]:
    """{variant: {metric: [one figure per round]}} for without / off / on."""
    now = _snapshot(ROOT, "stock-with-tracing-")
    trees = {"without": _export(baseline, now), "off": now, "on": now}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    names = list(trees)
    for round_ in range(rounds):
        # Each round in another order: no variant always runs first (or last).
        for variant in names[round_ % len(names) :] + names[: round_ % len(names)]:
            tree = trees[variant]
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
    print(
        f"{'':<8} {'decode µs/event':>16} {'write µs/event':>15} {'batch path ev/s':>16} "
        f"{'path CPU µs/event':>18}"
    )
    for variant, metrics in results.items():
        print(
            f"{variant:<8} {min(metrics['decode_us']):>16.2f} {min(metrics['write_us']):>15.2f} "
            f"{statistics.median(metrics['events_per_s']):>16,.0f} "
            f"{statistics.median(metrics['path_cpu_us']):>18.1f}"
        )
    print(
        "(decode, write: best of 9 x 2,000 per round, best round; batch path: median round;"
        " path CPU: the worker process's own CPU time, which other load on the machine"
        " barely moves)"
    )
    for variant, metrics in results.items():
        rounds = ", ".join(f"{value:,.0f}" for value in metrics["events_per_s"])
        print(f"  batch path rounds, {variant}: {rounds}")


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
    parser.add_argument(
        "what", nargs="?", choices=["breakdown", "cost", "cpu", "path-cpu"], default="breakdown"
    )
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--kafka", action="store_true", help="through a tansu broker and a worker")
    parser.add_argument("--baseline", default=None, help="a git revision (default: see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--path-orders", type=int, default=3000, help="cost: checkouts of the batch path, 0: none"
    )
    args = parser.parse_args(argv)
    if args.what == "cpu":
        for name, row in measure_cpu_in_one_process(args.rounds).items():
            print(f"{name:<8} decode {row['decode']:.3f} µs/event, write {row['write']:.3f}")
        print(f"(CPU time, best of {args.rounds} x 2,000, turn about in one process)")
        return
    if args.what == "path-cpu":
        with _postgres() as server_url:
            url = _fresh_database(server_url, ROOT)
            path = measure_path_cpu_in_one_process(url, rounds=args.rounds)
        for name, values in path.items():
            print(
                f"{name:<8} batch path CPU per checkout: median {statistics.median(values):.1f}"
                f" µs, best {min(values):.1f} µs ({len(values)} batches of 300)"
            )
        print("(this process's CPU time, batches of each in turn in one process)")
        return
    with _postgres() as server_url:
        if args.what == "cost":
            print_cost(
                measure_cost(
                    server_url, baseline=args.baseline, rounds=args.rounds,
                    orders=args.path_orders,
                )
            )
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
