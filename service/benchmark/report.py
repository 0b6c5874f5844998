"""docs/benchmarks.md (tables, targets, the machine, the command) and a PNG plot."""

from __future__ import annotations

import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path

from service.benchmark.run import ScenarioResult
from service.settings import Settings

#: The targets of issue #4, as ratios measured in the same run.
TARGET_NAIVE = 10.0
TARGET_CEILING = 0.5
TARGET_FLASH_VS_UNIFORM = 0.5
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 200.0


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(round(p / 100 * (len(sorted_values) - 1)), len(sorted_values) - 1)
    return sorted_values[index]


def write_report(
    results: list[ScenarioResult], path: Path, command: str, plot: Path | None
) -> None:
    by_name = {r.scenario.name: r for r in results}
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Every figure below",
        "comes from that one run on one machine; ratios compare measurements of the same run.",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {_memory_gb():.0f} GB RAM, "
        f"Python {platform.python_version()}. PostgreSQL and the Kafka-protocol broker (tansu) "
        "run on the same machine as the workers, so they share its cores.",
        "",
        _settings_line(),
        "",
        "## Results",
        "",
        "| scenario | events | worker events/s | naive events/s | ceiling events/s "
        "| x naive | x ceiling | latency p50 / p95 / p99 ms (at events/s) | worker CPU s "
        "| peak RSS MB | commits/event | outbox max backlog | outbox drained after |",
        "| --- " + "| ---: " * 6 + "| --- " + "| ---: " * 5 + "|",
    ]
    for r in results:
        w = r.worker
        lat = w.latencies_ms
        lines.append(
            f"| {r.scenario.title} | {w.events:,} | {w.rate:,.0f} | {_num(r.naive_rate)} "
            f"| {_num(r.ceiling_rate)} | {_ratio(w.rate, r.naive_rate)} "
            f"| {_ratio(w.rate, r.ceiling_rate)} | {percentile(lat, 50):.0f} / "
            f"{percentile(lat, 95):.0f} / {percentile(lat, 99):.0f} ({w.latency_rate:,.0f}) "
            f"| {w.cpu_seconds:.1f} | {w.peak_rss_mb:.0f} | {w.commits_per_event:.3f} "
            f"| {w.outbox_max_backlog:,} | {w.outbox_drain_seconds:.1f} s |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    lines += _targets(by_name)
    flash = by_name.get("flash")
    if flash is not None:
        c = flash.worker.checks
        lines += [
            "",
            "## Flash sale: the stock, unit by unit",
            "",
            f"{c['units']:,} units; {c['sold']:,} sold; {c['on_hand']:,} on hand after the "
            f"run; {c['reserved']} still reserved ({c['still_reserved_orders']} orders still "
            f"holding once every short hold had expired); oversold: {c['oversold']}; "
            f"on hand + sold = units: {'yes' if c['balance_ok'] else 'NO'}; rows breaking "
            f"`0 <= reserved <= on_hand`: {c['constraint_violations']}.",
            "",
            "Every unit that is not sold is back on the shelf. Units a failed payment or a",
            "cancellation frees are taken by later shoppers; those freed after the last",
            "checkout stay on hand (nobody is left to buy them).",
        ]
    lines += [
        "",
        "## How it is measured",
        "",
        "- **Worker as built:** `stock run --no-api` processes, started after the whole",
        "  stream is on the broker. Rate = events from the first applied to the last",
        "  (the consumer group join is not counted). CPU seconds and peak RSS (VmHWM) from",
        "  /proc. Commits/event from `pg_stat_database.xact_commit`, which also counts the",
        "  harness's own polls (4 a second). Outbox: the largest unpublished backlog seen,",
        "  and how long after the last event was applied the relay had published all.",
        "- **Latency:** with the workers warm, a quarter as many orders again are published",
        "  at half the measured rate; each event is timed from its send to its",
        "  `stock.reservation` answer read back from Kafka (events without an answer of",
        "  their own, such as a payment failure after a rejection, are not timed).",
        "- **Naive consumer** (`service/benchmark/naive.py`): the seed's way, one",
        "  transaction and one offset commit per message, rows locked `FOR UPDATE`; run",
        "  for a fixed time on the same stream.",
        "- **Ceiling** (`service/benchmark/ceiling.py`): the worker's batch path runs",
        "  in-process over the same events while every SQL statement is recorded; the",
        "  recording is replayed from asyncpg on a fresh database, one transaction per",
        "  batch. No Kafka, no decoding, no domain code.",
        "- Each measurement has a fresh database with the scenario's catalogue and topics",
        "  of its own.",
    ]
    if plot is not None:
        lines += ["", f"![throughput and latency]({plot.name})"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _targets(by_name: dict[str, ScenarioResult]) -> list[str]:
    rows = []
    uniform = by_name.get("uniform")
    if uniform is not None:
        rows.append(
            _target_row(
                "uniform: worker ≥ 10x naive", uniform.worker.rate, uniform.naive_rate, TARGET_NAIVE
            )
        )
        rows.append(
            _target_row(
                "uniform: worker ≥ 0.5x ceiling",
                uniform.worker.rate,
                uniform.ceiling_rate,
                TARGET_CEILING,
            )
        )
        flash = by_name.get("flash")
        if flash is not None:
            rows.append(
                _target_row(
                    "flash sale ≥ 0.5x uniform rate",
                    flash.worker.rate,
                    uniform.worker.rate,
                    TARGET_FLASH_VS_UNIFORM,
                )
            )
    for r in by_name.values():
        p99 = percentile(r.worker.latencies_ms, 99)
        rows.append(
            f"| {r.scenario.name}: p99 < {TARGET_P99_MS:.0f} ms at half the rate | "
            f"{p99:.0f} ms | {_met(p99 < TARGET_P99_MS)} |"
        )
        rows.append(
            f"| {r.scenario.name}: worker RSS < {TARGET_RSS_MB:.0f} MB | "
            f"{r.worker.peak_rss_mb:.0f} MB | {_met(r.worker.peak_rss_mb < TARGET_RSS_MB)} |"
        )
    flash = by_name.get("flash")
    if flash is not None:
        c = flash.worker.checks
        exact = c["oversold"] == 0 and c["balance_ok"] and c["reserved"] == 0
        rows.append(
            f"| flash sale: no oversell, nothing stranded | sold {c['sold']:,} of "
            f"{c['units']:,}, {c['reserved']} reserved, "
            f"balance {'ok' if c['balance_ok'] else 'off'} | {_met(exact)} |"
        )
    return rows


def _target_row(label: str, value: float, base: float | None, target: float) -> str:
    if not base:
        return f"| {label} | not measured | - |"
    ratio = value / base
    return f"| {label} | {ratio:.2f}x | {_met(ratio >= target)} |"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _num(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


def _settings_line() -> str:
    s = Settings()
    return (
        f"Worker settings: batches of up to {s.batch_max_records} records, linger "
        f"{s.batch_linger_ms} ms, fetch wait {s.kafka_fetch_max_wait_ms} ms, outbox batches "
        f"of {s.outbox_batch_size}, database pool {s.database_pool_size}."
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def write_plot(results: list[ScenarioResult], path: Path) -> bool:
    """Throughput over time and the latency distribution, per scenario. False if
    matplotlib is not installed (`pip install -e '.[bench]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in results:
        times, rates = _rates(r.worker.timeline)
        rate_axis.plot(times, rates, label=r.scenario.name)
        latencies = r.worker.latencies_ms
        if latencies:
            share = [100 * (i + 1) / len(latencies) for i in range(len(latencies))]
            latency_axis.plot(
                latencies, share, label=f"{r.scenario.name} ({r.worker.latency_rate:,.0f}/s)"
            )
    rate_axis.set(
        title="Applied events per second (1 s windows)", xlabel="seconds", ylabel="events/s"
    )
    latency_axis.set(
        title="Latency at half the sustained rate",
        xlabel="ms (event sent → answer on Kafka)",
        ylabel="% of events",
        xscale="log",
    )
    for axis in (rate_axis, latency_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _rates(timeline: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    times, rates = [], []
    for (t0, n0), (t1, n1) in zip(timeline, timeline[4:], strict=False):
        if t1 > t0:
            times.append(t1)
            rates.append((n1 - n0) / (t1 - t0))
    return times, rates


def summary(results: list[ScenarioResult]) -> str:
    parts = []
    for r in results:
        lat = r.worker.latencies_ms
        parts.append(
            f"{r.scenario.name}: {r.worker.rate:,.0f} events/s "
            f"(naive {_num(r.naive_rate)}, ceiling {_num(r.ceiling_rate)}), "
            f"p99 {percentile(lat, 99):.0f} ms, "
            f"median {statistics.median(lat) if lat else 0:.0f} ms"
        )
    return "\n".join(parts)
