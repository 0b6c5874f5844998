"""`make bench` (`python -m bench`): every scenario, side by side, in one run."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.ceiling import record_batches, replay
from bench.naive import measure_naive
from bench.stack import (
    Stack,
    bench_settings,
    drop_database,
    fresh_database,
    load_catalogue,
    publish,
)
from bench.worker_run import WorkerRun, measure_worker
from bench.workload import SCENARIOS, Scenario, build_events
from service.adapters.kafka import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class ScenarioResult:
    scenario: Scenario
    worker: WorkerRun
    naive_rate: float | None = None
    ceiling_rate: float | None = None


async def run_benchmarks(
    stack: Stack,
    names: list[str],
    *,
    scale: float = 1.0,
    naive_seconds: float = 15.0,
    latency_rate: float | None = None,
    relay_apart: bool = False,
) -> list[ScenarioResult]:
    """`latency_rate`: events/s of the latency phase (default: half the measured rate).
    `relay_apart`: workers run `--no-relay` beside one `stock relay` process."""
    results = []
    for name in names:
        scenario = SCENARIOS[name] if scale == 1.0 else SCENARIOS[name].scaled(scale)
        run = uuid.uuid4().hex[:6]
        log.info("bench %s: %d orders, %d worker(s)", name, scenario.orders, scenario.workers)
        measured = await measure_worker(
            stack, scenario, run, latency_rate=latency_rate, relay_apart=relay_apart
        )
        result = ScenarioResult(scenario, measured)
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
