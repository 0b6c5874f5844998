"""`make bench` (`python -m bench`): every scenario, side by side, in one run."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.ceiling import record_batches, replay
from bench.naive import measure_naive
from bench.probe import ProbeResult, fixed_rate_probe
from bench.stack import (
    Stack,
    bench_settings,
    broker_of_its_own,
    drop_database,
    fresh_database,
    load_catalogue,
    publish,
)
from bench.worker_run import WorkerRun, measure_worker
from bench.workload import SCENARIOS, Scenario, build_events
from service.adapters.database import asyncpg_dsn
from service.adapters.kafka import ensure_topics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ScenarioResult:
    scenario: Scenario
    worker: WorkerRun
    naive_rate: float | None = None
    ceiling_rate: float | None = None
    #: The fixed-rate probe against a warm worker of the scenario's catalogue on a
    #: broker of its own: the latency curve (shares of this scenario's maximum rate) and
    #: the fixed rates (2,000 checkouts/s).
    probes: list[ProbeResult] = field(default_factory=list)


#: Shares of the maximum rate the latency curve is measured at.
CURVE_SHARES = (0.10, 0.25, 0.50, 0.75)
#: Fixed rates the probe is also run at (checkouts/s): issue 14's target.
PROBE_RATES = (2_000.0,)


async def run_benchmarks(
    stack: Stack,
    names: list[str],
    *,
    scale: float = 1.0,
    naive_seconds: float = 15.0,
    latency_rate: float | None = None,
    relay_apart: bool = False,
    probe_seconds: float = 10.0,
    curve: bool = True,
) -> list[ScenarioResult]:
    """`latency_rate`: events/s of the latency phase (default: half the measured rate).
    `relay_apart`: workers run `--no-relay` beside one `stock relay` process.
    `curve`: after the uniform scenario's throughput, the fixed-rate probe at each of
    CURVE_SHARES of its rate and at PROBE_RATES, `probe_seconds` each."""
    results = []
    for name in names:
        scenario = SCENARIOS[name] if scale == 1.0 else SCENARIOS[name].scaled(scale)
        run = uuid.uuid4().hex[:6]
        log.info("bench %s: %d orders, %d worker(s)", name, scenario.orders, scenario.workers)
        measured = await measure_worker(
            stack, scenario, run, latency_rate=latency_rate, relay_apart=relay_apart
        )
        result = ScenarioResult(scenario, measured)
        if curve and name == "uniform":
            result.probes = await _probe_curve(
                stack, scenario, run, measured.rate, probe_seconds, relay_apart=relay_apart
            )
        if scenario.workers == 1:
            result.ceiling_rate = await _ceiling(stack, scenario, run)
            result.naive_rate = await _naive(stack, scenario, run, naive_seconds)
        log.info(
            "bench %s: worker %.0f/s, naive %s/s, ceiling %s/s",
            name,
            result.worker.rate,
            f"{result.naive_rate:.0f}" if result.naive_rate else "-",
            f"{result.ceiling_rate:.0f}" if result.ceiling_rate else "-",
        )
        results.append(result)
    return results


#: The share of the scenario the probe's worker drains first, to be warm.
PROBE_WARM_UP_SHARE = 0.1


async def _probe_curve(
    stack: Stack,
    scenario: Scenario,
    run: str,
    max_rate: float,
    seconds: float,
    *,
    relay_apart: bool,
) -> list[ProbeResult]:
    """The fixed-rate probe at PROBE_RATES and at CURVE_SHARES of `max_rate` (the
    scenario's drain rate), against a worker of its own on a broker of its own
    (`broker_of_its_own`: a fresh tansu when the run started one), warmed by draining a
    tenth of the scenario first."""
    probes: list[ProbeResult] = []
    with broker_of_its_own(stack) as probing:
        await measure_worker(
            probing,
            scenario.scaled(PROBE_WARM_UP_SHARE),
            f"{run}p",
            relay_apart=relay_apart,
            while_warm=_curve(probing, scenario, run, probes, seconds, max_rate),
        )
    return probes


def _curve(
    stack: Stack,
    scenario: Scenario,
    run: str,
    into: list[ProbeResult],
    seconds: float,
    max_rate: float,
) -> Callable[[Settings, WorkerRun], Awaitable[None]]:
    async def measure(settings: Settings, worker: WorkerRun) -> None:
        points = [(rate, f"{rate:,.0f}/s") for rate in PROBE_RATES]
        points += [(share * max_rate, f"{share:.0%} of max") for share in CURVE_SHARES]
        for n, (rate, label) in enumerate(points):
            await _outbox_drained(settings.database_url)
            log.info("probe %s: %.0f checkouts/s for %.0f s", label, rate, seconds)
            probe = await fixed_rate_probe(
                stack.bootstrap,
                settings.topic_order_checkout,
                settings.topic_stock_reservation,
                rate=rate,
                seconds=seconds,
                variants=scenario.variants,
                run=f"{run}{n}",
                label=label,
            )
            log.info(
                "probe %s: sent %.0f/s, %d/%d answered, p50 %.0f p99 %.0f ms",
                label,
                probe.sent_rate,
                probe.answered,
                probe.sent,
                _pct(probe.latencies_ms, 50),
                _pct(probe.latencies_ms, 99),
            )
            into.append(probe)

    return measure


async def _outbox_drained(database_url: str, within: float = 300.0) -> None:
    """Each probe starts on a worker with nothing left to publish: the previous probe's
    stock.changed rows (tens of thousands after the 75% point) would otherwise still
    be going out through the relay, on the same event loop, during the next probe."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        deadline = time.monotonic() + within
        while await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            if time.monotonic() > deadline:
                log.warning("probe: the outbox did not drain within %.0f s", within)
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(round(p / 100 * (len(values) - 1)), len(values) - 1)]


async def _ceiling(stack: Stack, scenario: Scenario, run: str) -> float:
    recorded_on = await fresh_database(stack, f"{scenario.name}_rec")
    replayed_on = await fresh_database(stack, f"{scenario.name}_sql")
    try:
        for url in (recorded_on, replayed_on):
            await load_catalogue(url, scenario)
        settings = bench_settings(recorded_on, stack, f"{run}c")
        events = build_events(scenario, settings, run=f"{run}a")
        recording = await record_batches(settings, events, settings.batch_max_records)
        seconds = await replay(replayed_on, recording)
        return len(events) / seconds
    finally:
        await drop_database(stack, recorded_on)
        await drop_database(stack, replayed_on)


async def _naive(stack: Stack, scenario: Scenario, run: str, seconds: float) -> float:
    url = await fresh_database(stack, f"{scenario.name}_naive")
    try:
        await load_catalogue(url, scenario)
        settings = bench_settings(url, stack, f"{run}n")
        await ensure_topics(settings)
        await publish(stack.bootstrap, build_events(scenario, settings, run=f"{run}a"))
        handled, elapsed = await measure_naive(settings, seconds)
        return handled / elapsed
    finally:
        await drop_database(stack, url)


def default_report_path() -> Path:
    return Path("docs") / "benchmarks.md"
