"""docs/benchmarks.md (tables, targets, the machine, the command) and a PNG plot."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.extras import Extras
from bench.probe import ProbeResult
from bench.run import CURVE_SHARES, ScenarioResult
from service.settings import Settings

#: The targets of issues 4 and 14, as ratios measured in the same run.
TARGET_NAIVE = 10.0
TARGET_CEILING = 0.7
TARGET_FLASH_VS_UNIFORM = 0.5
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 200.0
TARGET_PROBE_RATE = 2_000.0
TARGET_HTTP_RATE = 1_500.0
TARGET_HTTP_P99_MS = 50.0

#: Issue 14's figures for `stock run` with its defaults, by the same probe (before).
ISSUE_PROBE = ((200, 30, 63), (1_000, 52, 133), (2_000, 60, 175))


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(round(p / 100 * (len(sorted_values) - 1)), len(sorted_values) - 1)
    return sorted_values[index]


def write_report(
    results: list[ScenarioResult],
    path: Path,
    command: str,
    plot: Path | None,
    *,
    extras: Extras | None = None,
    curve_plot: Path | None = None,
    python_speed_ms: float | None = None,
) -> None:
    """`python_speed_ms`: `python_speed()` taken before the run, printed beside the
    machine so runs on different machines (or a busy one) can be compared."""
    extras = extras or Extras(missing={"http": "not measured", "spans": "not measured"})
    by_name = {r.scenario.name: r for r in results}
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Every figure below",
        "comes from that one run on one machine; ratios compare measurements of the same run.",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {_memory_gb():.0f} GB RAM, "
        f"Python {platform.python_version()}"
        + (
            f" (a plain Python loop: {python_speed_ms:.0f} ms per million turns before the run)"
            if python_speed_ms
            else ""
        )
        + ". PostgreSQL and the Kafka-protocol broker (tansu) "
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
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | met | gap |",
        "| --- | --- | --- | --- |",
    ]
    lines += _probe_targets(by_name)
    lines += _targets(by_name)
    lines += _http_targets(extras)
    lines += _curve_section(by_name, curve_plot)
    lines += _http_section(extras)
    lines += _span_section(extras)
    lines += _lock_section(extras)
    for flash_name in ("flash", "flash-two-workers"):
        flash = by_name.get(flash_name)
        if flash is None:
            continue
        c = flash.worker.checks
        lines += [
            "",
            f"## {flash.scenario.title}: the stock, unit by unit",
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
    lines += _analysis(by_name)
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
        "- **Fixed-rate probe** (`bench/probe.py`): one-line checkouts of random variants,",
        "  published at a fixed rate by a producer process of their own (what is due is sent",
        "  every 2 ms); each is timed from its `send()` to the moment a SEPARATE reader",
        "  process (fetch wait 10 ms: tansu holds an empty fetch for the whole wait) holds",
        "  its `stock.reservation` answer. Both stamp with CLOCK_MONOTONIC. Run against a",
        "  worker of the uniform scenario's catalogue, warmed by draining a tenth of the",
        "  scenario, on a broker of its own (a fresh tansu: tansu slows with every record",
        '  batch it holds, docs/design.md "Why tansu slows"). The maximum rate is the',
        "  uniform worker's events/s in this run, and the curve's points are shares of it",
        "  (in checkouts/s). This is how issue 14 measured `stock run` before.",
        "- **Latency (mixed events):** with the workers warm, a quarter as many orders",
        "  again (checkouts, payments, cancellations) are published at half the measured",
        "  rate from the harness's own process; each event is timed from its send to its",
        "  `stock.reservation` answer read back from Kafka (events without an answer of",
        "  their own, such as a payment failure after a rejection, are not timed).",
        "- **Naive consumer** (`bench/naive.py`): the seed's way, one",
        "  transaction and one offset commit per message, rows locked `FOR UPDATE`; run",
        "  for a fixed time on the same stream.",
        "- **Ceiling** (`bench/ceiling.py`): the worker's batch path runs",
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


def _analysis(by_name: dict[str, ScenarioResult]) -> list[str]:
    """Why the figures are what they are. The causes come from profiling the worker
    (the commands are given); the numbers from this run."""
    uniform = by_name.get("uniform")
    lines = [
        "",
        "## Where the time goes, and why targets are missed",
        "",
        "From issue 4 (before issue 14's changes), a profile of a worker process while it",
        "drains the uniform stream:",
        "`py-spy record -p $(pgrep -f 'cli run --no-api') -d 6 -r 200 -f raw -o spy.txt`",
        "during `python -m bench --scenario uniform --scale 0.5`. The process was busy in 92% of",
        "the samples: it is CPU-bound on one core. Of its time, the batch transaction took",
        "47% (the ledger, building the set-based writes, SQLAlchemy and asyncpg, with about",
        "10% spent waiting on PostgreSQL), decoding and validating events 11%, building the",
        "outbox CloudEvents 9%, the outbox relay 13% and FastStream's consume loop the rest.",
        "",
        "Changed in issue 4 because of that profile (each measured, `make bench`):",
        "",
        "- Order lines are loaded only for orders past `PENDING` (a new order has none), by",
        "  a join on the primary key that stays on the index while a fresh database's",
        "  statistics still call the table small. The batch path alone (no Kafka) went from",
        "  4,136 to 6,191 events/s on 16,000 uniform events.",
        "- Outbox JSON by pydantic-core instead of `json.dumps`; event ids without a",
        "  system call each (`uuid4` read `os.urandom` per event: 7% of the process);",
        "  header JSON and the batch timestamp cached.",
        "- The relay sends one Kafka batch per partition instead of one `send()` per row:",
        "  its share of the process fell from 19% to 13%, with per-key order kept.",
        "- FastStream's batch parser no longer copies every record (it copies only when",
        "  a header is not UTF-8).",
        "- The consumer's fetch wait is 50 ms (`STOCK_KAFKA_FETCH_MAX_WAIT_MS`): tansu",
        "  holds every fetch for the whole wait, which put 250 ms into every event's",
        "  latency at the default 500 ms.",
        "",
    ]
    lines += [
        "Run to run, on this shared 2-core machine, figures move by about 15%: three",
        "full runs gave the uniform worker 5,064, 5,267 and 6,496 events/s. Compare",
        "ratios within one run.",
        "",
    ]
    if uniform is not None and uniform.naive_rate and uniform.ceiling_rate:
        w = uniform.worker
        p99 = percentile(w.latencies_ms, 99)
        if w.rate < TARGET_NAIVE * uniform.naive_rate:
            lines += [
                f"- **x10 naive** (measured {w.rate / uniform.naive_rate:.1f}x): the naive",
                f"  consumer commits {uniform.naive_rate:,.0f} times a second on this machine,",
                "  where a commit's flush is cheap. Ten times that is more than one Python",
                "  process on a core shared with PostgreSQL and the broker does. On storage",
                "  where a flush costs 2 to 5 ms, the naive consumer falls to a few hundred",
                "  events a second while the worker, one commit per batch of up to 500",
                f"  events ({w.commits_per_event:.3f} commits per event here), barely moves.",
            ]
        if w.rate < TARGET_CEILING * uniform.ceiling_rate:
            lines += [
                f"- **x{TARGET_CEILING} ceiling** (measured "
                f"{w.rate / uniform.ceiling_rate:.2f}x): the",
                "  ceiling replays the same SQL with no Python work at all; the worker's",
                "  Python (decode, ledger, outbox events, relay, Kafka client) takes most of",
                "  each event's time on a core it shares.",
            ]
        if p99 >= TARGET_P99_MS:
            lines += [
                f"- **mixed events, p99 < 100 ms at half the rate** (measured {p99:.0f} ms at",
                f"  {w.latency_rate:,.0f} events/s): checkouts, payments and cancellations",
                "  published from the harness's own process (which shares a core) while the",
                "  outbox backlog reached "
                f"{w.outbox_max_backlog:,} rows in the throughput phase. The",
                "  checkout answer alone, from a separate producer and reader, is the probe",
                "  above.",
            ]
    return lines


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
                f"uniform: worker ≥ {TARGET_CEILING}x ceiling",
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
        over = p99 - TARGET_P99_MS
        rows.append(
            f"| {r.scenario.name}: mixed events, p99 < {TARGET_P99_MS:.0f} ms at half the rate | "
            f"{p99:.0f} ms | {_met(p99 < TARGET_P99_MS)} | "
            f"{f'{over:.0f} ms over' if over >= 0 else ''} |"
        )
        rss = r.worker.peak_rss_mb
        rows.append(
            f"| {r.scenario.name}: worker RSS < {TARGET_RSS_MB:.0f} MB | "
            f"{rss:.0f} MB | {_met(rss < TARGET_RSS_MB)} | "
            f"{f'{rss - TARGET_RSS_MB:.0f} MB over' if rss >= TARGET_RSS_MB else ''} |"
        )
    for flash_name in ("flash", "flash-two-workers"):
        flash = by_name.get(flash_name)
        if flash is None:
            continue
        c = flash.worker.checks
        exact = c["oversold"] == 0 and c["balance_ok"] and c["reserved"] == 0
        rows.append(
            f"| {flash_name}: exact (no oversell, nothing stranded) | sold {c['sold']:,} of "
            f"{c['units']:,}, {c['reserved']} reserved, "
            f"balance {'ok' if c['balance_ok'] else 'off'} | {_met(exact)} | |"
        )
    return rows


def _target_row(label: str, value: float, base: float | None, target: float) -> str:
    if not base:
        return f"| {label} | not measured | - | |"
    ratio = value / base
    gap = "" if ratio >= target else f"needs {target / ratio:.2f}x the rate"
    return f"| {label} | {ratio:.2f}x | {_met(ratio >= target)} | {gap} |"


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


def python_speed() -> float:
    """Milliseconds a plain Python loop takes per million turns (best of 3): one figure
    for how fast this machine runs the interpreter, to compare reports across machines
    (docs/design.md, "Comparing runs")."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for turn in range(2_000_000):
            total += turn
        best = min(best, time.perf_counter() - started)
    return best * 1000 / 2


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


def write_figures(results: list[ScenarioResult], path: Path, extras: Extras | None = None) -> None:
    """The run's figures as JSON, beside the report, for comparing runs."""
    import json

    figures = {
        r.scenario.name: {
            "events": r.worker.events,
            "worker_events_per_second": round(r.worker.rate, 1),
            "naive_events_per_second": r.naive_rate and round(r.naive_rate, 1),
            "ceiling_events_per_second": r.ceiling_rate and round(r.ceiling_rate, 1),
            "latency_rate": round(r.worker.latency_rate, 1),
            "latency_ms": {
                f"p{p}": round(percentile(r.worker.latencies_ms, p), 1) for p in (50, 95, 99)
            },
            "cpu_seconds": round(r.worker.cpu_seconds, 2),
            "peak_rss_mb": round(r.worker.peak_rss_mb, 1),
            "commits_per_event": round(r.worker.commits_per_event, 4),
            "outbox_max_backlog": r.worker.outbox_max_backlog,
            "checks": r.worker.checks,
            "probes": [probe_figures(p) for p in r.probes],
        }
        for r in results
    }
    if extras is not None:
        figures["lock_hold"] = [asdict(r) for r in extras.lock_hold or ()]
        figures["http_reserve"] = extras.http or {"missing": (extras.missing or {}).get("http")}
        figures["spans"] = extras.spans or {"missing": (extras.missing or {}).get("spans")}
    path.write_text(json.dumps(figures, indent=2) + "\n")


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


# --- issue 14: the fixed-rate probe, the latency curve, HTTP, the span breakdown -----


def _probe(by_name: dict[str, ScenarioResult], label: str) -> ProbeResult | None:
    uniform = by_name.get("uniform")
    for probe in uniform.probes if uniform else ():
        if probe.label == label:
            return probe
    return None


def _half_label() -> str:
    return f"{0.5:.0%} of max"


def _rate_label(rate: float) -> str:
    return f"{rate:,.0f}/s"


def _probe_targets(by_name: dict[str, ScenarioResult]) -> list[str]:
    rows = []
    for label, what in (
        (_rate_label(TARGET_PROBE_RATE), f"{TARGET_PROBE_RATE:,.0f} checkouts/s"),
        (_half_label(), "half the maximum rate"),
    ):
        probe = _probe(by_name, label)
        title = f"probe: p99 < {TARGET_P99_MS:.0f} ms at {what}"
        if probe is None or not probe.latencies_ms:
            rows.append(f"| {title} | not measured | - | |")
            continue
        p99 = percentile(probe.latencies_ms, 99)
        gap = f"{p99 - TARGET_P99_MS:.0f} ms over ({p99 / TARGET_P99_MS:.1f}x)"
        rows.append(
            f"| {title} | {p99:.0f} ms at {probe.sent_rate:,.0f}/s sent "
            f"({probe.answered:,}/{probe.sent:,} answered) | {_met(p99 < TARGET_P99_MS)} "
            f"| {gap if p99 >= TARGET_P99_MS else ''} |"
        )
    return rows


def _http_targets(extras: Extras) -> list[str]:
    title = (
        f"HTTP: ≥ {TARGET_HTTP_RATE:,.0f} reserves/s at p99 < {TARGET_HTTP_P99_MS:.0f} ms"
        " (16 kept-alive clients)"
    )
    if not extras.http:
        why = (extras.missing or {}).get("http", "not measured")
        return [f"| {title} | {why} | - | |"]
    rows = []
    for phase, label in (("alone", "alone"), ("with_kafka", "while Kafka checkouts flow")):
        figures = extras.http.get(phase) or {}
        rate, p99 = figures.get("rate", 0.0), figures.get("p99_ms", float("nan"))
        ok = rate >= TARGET_HTTP_RATE and p99 < TARGET_HTTP_P99_MS
        gaps = []
        if rate < TARGET_HTTP_RATE:
            gaps.append(f"needs {TARGET_HTTP_RATE / rate:.2f}x the rate" if rate else "no rate")
        if not p99 < TARGET_HTTP_P99_MS:
            gaps.append(f"p99 {p99 - TARGET_HTTP_P99_MS:.0f} ms over")
        rows.append(
            f"| {title}, {label} | {rate:,.0f}/s, p99 {p99:.0f} ms | {_met(ok)} "
            f"| {'; '.join(gaps)} |"
        )
    return rows


def _curve_section(by_name: dict[str, ScenarioResult], curve_plot: Path | None) -> list[str]:
    uniform = by_name.get("uniform")
    if uniform is None or not uniform.probes:
        return []
    lines = [
        "",
        "## The fixed-rate probe and the latency curve",
        "",
        f"Against a warm worker of the uniform scenario's catalogue, on a broker of its own "
        f"(maximum rate: the uniform worker's {uniform.worker.rate:,.0f} events/s in this run).",
        "One-line checkouts at a fixed rate from a producer process; each answer read by a",
        "separate reader process (10 ms fetch wait).",
        "",
        "| point | asked checkouts/s | sent/s | answered | p50 ms | p95 ms | p99 ms | max ms "
        "| last third / first third (p50) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for probe in uniform.probes:
        lat = probe.latencies_ms
        lines.append(
            f"| {probe.label} | {probe.rate:,.0f} | {probe.sent_rate:,.0f} "
            f"| {probe.answered:,}/{probe.sent:,} | {percentile(lat, 50):.0f} "
            f"| {percentile(lat, 95):.0f} | {percentile(lat, 99):.0f} "
            f"| {max(lat) if lat else float('nan'):.0f} | {probe.growth():.2f} |"
        )
    lines += [
        "",
        "Before (issue 14, `stock run` with its defaults, the same probe): "
        + "; ".join(f"{r:,}/s p50 {p50} / p99 {p99} ms" for r, p50, p99 in ISSUE_PROBE)
        + ".",
        "",
        "The last column compares the median latency of the last third of the sends with",
        "the first third's: near 1, the worker keeps up and the latency is the cost of a",
        "batch; well above 1, a queue is building (the rate is beyond what the worker",
        "sustains while sharing the cores with PostgreSQL, tansu and the two probe processes).",
    ]
    lines += _curve_why(uniform)
    if curve_plot is not None:
        lines += ["", f"![latency curve]({curve_plot.name})"]
    return lines


def _curve_why(uniform: ScenarioResult) -> list[str]:
    """Why a probe point misses 100 ms, from what this run measured."""
    lines = []
    for probe in uniform.probes:
        if not probe.latencies_ms:
            continue
        p99 = percentile(probe.latencies_ms, 99)
        if p99 < TARGET_P99_MS:
            continue
        growth = probe.growth()
        share = probe.sent_rate / uniform.worker.rate if uniform.worker.rate else 0.0
        if growth >= 1.5:
            cause = (
                f"the latency grew {growth:.1f}x from the first third of the sends to the "
                f"last: at {probe.sent_rate:,.0f} checkouts/s ({share:.0%} of the drain rate) "
                "the worker falls behind and the answers queue"
            )
        else:
            cause = (
                f"the latency stayed level (x{growth:.2f} over the run): no queue built, so "
                "the time is each checkout's own path (the wait for a batch to fill, the "
                "batch's transaction and commit, the publish of the answer and the reader's "
                "fetch), on two cores shared with PostgreSQL, tansu and the probe's two "
                "processes; the span breakdown below splits it"
            )
        if probe.answered < probe.sent:
            cause += f"; {probe.sent - probe.answered:,} checkouts had no answer within 5 s"
        lines.append(f"- **{probe.label}**: p99 {p99:.0f} ms, {cause}.")
    if lines:
        lines = ["", "Where a point misses 100 ms at p99:", "", *lines]
    return lines


def _http_section(extras: Extras) -> list[str]:
    lines = ["", "## HTTP reserves (`POST /api/inventory/reserve`)", ""]
    if not extras.http:
        why = (extras.missing or {}).get("http", "not measured")
        return [*lines, f"Not in this run: {why}."]
    h = extras.http
    lines += [
        f"`bench/http_reserve.py`: one `stock run` process (API and worker), "
        f"{h.get('clients', '?')} kept-alive clients in a load process of their own, "
        f"{h.get('seconds', '?')} s per phase; the second phase while "
        f"{h.get('checkouts_per_second', 0):,.0f} checkouts/s (with their payments) flow "
        "through Kafka into the same process.",
        "",
        "| phase | requests | reserves/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in ("alone", "with_kafka"):
        f = h.get(phase) or {}
        lines.append(
            f"| {phase.replace('_', ' ')} | {f.get('requests', 0):,} | {f.get('rate', 0):,.0f} "
            f"| {f.get('p50_ms', float('nan')):.0f} | {f.get('p95_ms', float('nan')):.0f} "
            f"| {f.get('p99_ms', float('nan')):.0f} | {f.get('max_ms', float('nan')):.0f} "
            f"| {f.get('errors', 0)} |"
        )
    with_kafka = h.get("with_kafka") or {}
    if "events_rate" in with_kafka:
        lines += [
            "",
            f"Kafka events applied during the second phase: {with_kafka['events_rate']:,.0f}/s.",
        ]
    if h.get("checks"):
        lines += ["", f"Checks after the run: {h['checks']}."]
    return lines


def _span_section(extras: Extras) -> list[str]:
    lines = ["", "## Latency breakdown by span", ""]
    if not extras.spans:
        why = (extras.missing or {}).get("spans", "not measured")
        # HOOK: bench/extras.py calls bench/span_breakdown.py (H5) when it is there.
        return [*lines, f"Not in this run: {why}."]
    lines += [
        "From the worker's OpenTelemetry spans (`bench/span_breakdown.py`, `span_breakdown()`:",
        "traced two-line checkouts through the broker to a real worker, tracing on),",
        "per span name:",
        "",
        "| span | count | p50 ms | p99 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    spans = extras.spans.get("spans", extras.spans)
    for name, figures in spans.items():
        if isinstance(figures, dict) and "p50_ms" in figures:
            lines.append(
                f"| {name} | {figures.get('count', 0):,.0f} | {figures['p50_ms']:.1f} "
                f"| {figures.get('p99_ms', float('nan')):.1f} "
                f"| {figures.get('mean_ms', float('nan')):.1f} |"
            )
    return lines


def write_curve_plot(results: list[ScenarioResult], path: Path) -> bool:
    """p50/p95/p99 of the probe against the rate sent, with the 100 ms target and
    issue 14's figures before. False without matplotlib or without a probe."""
    uniform = next((r for r in results if r.scenario.name == "uniform"), None)
    if uniform is None or not uniform.probes:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    probes = sorted((p for p in uniform.probes if p.latencies_ms), key=lambda p: p.sent_rate)
    figure, axis = plt.subplots(figsize=(8, 4.8))
    rates = [p.sent_rate for p in probes]
    for pct, style in ((50, "o-"), (95, "s-"), (99, "^-")):
        axis.plot(rates, [percentile(p.latencies_ms, pct) for p in probes], style, label=f"p{pct}")
    axis.plot(
        [r for r, _, _ in ISSUE_PROBE],
        [p99 for _, _, p99 in ISSUE_PROBE],
        "x--",
        color="grey",
        label="p99 before (issue 14)",
    )
    axis.axhline(TARGET_P99_MS, color="red", linestyle=":", label="target p99 100 ms")
    for share in CURVE_SHARES:
        axis.axvline(share * uniform.worker.rate, color="lightgrey", linewidth=0.8)
    axis.set(
        title=f"Answer latency by rate (max {uniform.worker.rate:,.0f} events/s in this run)",
        xlabel="checkouts/s sent (fixed rate, one line each)",
        ylabel="ms, send → stock.reservation read",
        yscale="log",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def probe_figures(probe: ProbeResult) -> dict[str, object]:
    return {
        "label": probe.label,
        "rate": round(probe.rate, 1),
        "sent_rate": round(probe.sent_rate, 1),
        "sent": probe.sent,
        "answered": probe.answered,
        "latency_ms": {f"p{p}": round(percentile(probe.latencies_ms, p), 1) for p in (50, 95, 99)},
        "growth": round(probe.growth(), 2),
    }


def _lock_section(extras: Extras) -> list[str]:
    lines = ["", "## A hot variant: how long a batch holds its row", ""]
    if not extras.lock_hold:
        why = (extras.missing or {}).get("lock_hold", "not measured")
        return [*lines, f"Not in this run: {why}."]
    lines += [
        "`bench/lock_hold.py`: the flash sale's events (one variant) through the worker's",
        "batch path in-process, per batch from the variants' `SELECT ... FOR UPDATE`",
        "returning to the commit done. Every other batch on that variant waits this long,",
        "whichever worker holds it, so one hot variant takes at most batch size / hold.",
        "",
        *_lock_table(extras),
    ]
    return lines


def _lock_table(extras: Extras) -> list[str]:
    rows = [
        "| batch size | batches | row lock held p50 ms | p99 ms | whole batch p50 ms "
        "| one hot variant at most (events/s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in extras.lock_hold or ():
        rows.append(
            f"| {r.batch_size} | {r.batches} | {r.hold_p50_ms:.1f} | {r.hold_p99_ms:.1f} "
            f"| {r.batch_p50_ms:.1f} | {r.hot_variant_ceiling:,.0f} |"
        )
    return rows


SCALING_BEGIN = "<!-- figures: written by make bench (bench/report.py); do not edit by hand -->"
SCALING_END = "<!-- figures: end -->"


def write_scaling_figures(
    results: list[ScenarioResult], extras: Extras, path: Path, command: str
) -> bool:
    """The figures block of docs/scaling.md, from this run. False if the document or
    its markers are missing (the prose around the block is written by hand)."""
    if not path.exists():
        return False
    text = path.read_text()
    if SCALING_BEGIN not in text or SCALING_END not in text:
        return False
    by_name = {r.scenario.name: r for r in results}
    lines = [
        SCALING_BEGIN,
        "",
        f"From `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {_cpu_model()}, "
        f"{os.cpu_count()} cores shared by PostgreSQL, tansu and the workers "
        "(see [benchmarks.md](benchmarks.md) for the whole run).",
        "",
        "| figure | value |",
        "| --- | ---: |",
    ]
    uniform, two = by_name.get("uniform"), by_name.get("two-workers")
    flash, flash_two = by_name.get("flash"), by_name.get("flash-two-workers")
    if uniform is not None:
        w = uniform.worker
        lines += [
            f"| one worker, uniform one-line orders (events/s) | {w.rate:,.0f} |",
            f"| its CPU over the run, throughput and latency phases (s) | {w.cpu_seconds:.1f} |",
            f"| the same SQL replayed without Python (ceiling, events/s) | "
            f"{_num(uniform.ceiling_rate)} |",
            f"| naive consumer (events/s) | {_num(uniform.naive_rate)} |",
        ]
    if two is not None:
        lines.append(f"| two workers, one group, uniform (events/s) | {two.worker.rate:,.0f} |")
        if uniform is not None and uniform.worker.rate:
            lines.append(
                f"| two workers / one worker | {two.worker.rate / uniform.worker.rate:.2f}x |"
            )
    if flash is not None:
        lines.append(
            f"| flash sale, one worker, one variant (events/s) | {flash.worker.rate:,.0f} |"
        )
    if flash_two is not None:
        lines.append(
            f"| flash sale, two workers, one variant (events/s) | {flash_two.worker.rate:,.0f} |"
        )
    half = _probe(by_name, _half_label())
    if half is not None and half.latencies_ms:
        lines.append(
            f"| answer p99 at half the maximum rate, {half.sent_rate:,.0f} checkouts/s (ms) "
            f"| {percentile(half.latencies_ms, 99):.0f} |"
        )
    if extras.lock_hold:
        lines += ["", "The hot variant's row lock, per batch (`python -m bench.lock_hold`):", ""]
        lines += _lock_table(extras)
    lines += ["", SCALING_END]
    before, rest = text.split(SCALING_BEGIN, 1)
    after = rest.split(SCALING_END, 1)[1]
    path.write_text(before + "\n".join(lines) + after)
    return True
