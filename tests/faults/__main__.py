"""`make faults`: every fault scenario against real processes; writes docs/reliability.md.

    python -m tests.faults [--short] [--only NAME ...] [--runs N] [--seed S] [--out FILE]

Exit status 0 only if every run of every scenario found nothing lost, doubled or
oversold, every fault recovered and the backlog drained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from tests.faults.report import write_report
from tests.faults.scenarios import ScenarioResult, run_scenario, scenarios
from tests.faults.stack import fault_stack


async def run_all(short: bool, only: list[str], runs: int, seed: int) -> list[ScenarioResult]:
    chosen = [s for s in scenarios(short) if not only or s.name in only]
    if only and len(chosen) != len(only):
        known = ", ".join(s.name for s in scenarios(False))
        raise SystemExit(f"unknown scenario in {only}; known: {known}")
    results: list[ScenarioResult] = []
    for scenario in chosen:
        for n in range(runs):
            # A fresh PostgreSQL and broker per run: the in-memory broker would
            # otherwise hold every earlier run's topics, and no run sees another's.
            with fault_stack() as stack:
                result = await run_scenario(stack, scenario, seed + n)
            results.append(result)
            _say(result)
    return results


def _say(result: ScenarioResult) -> None:
    v = result.verdict
    recoveries = ", ".join(
        f"{f.kind} {f.recovery_seconds:.1f}s"
        if f.recovery_seconds is not None
        else f"{f.kind} never"
        for f in result.faults
    )
    print(
        f"{'PASS' if result.ok else 'FAIL'} {result.name} (seed {result.seed}): "
        f"{v.figures.get('valid_events', 0)} events, {v.figures.get('poison', 0)} poison, "
        f"lost {v.lost}, doubled {v.doubled}, oversold {v.oversold}; "
        f"faults: {recoveries or 'none'}; drained "
        f"{'never' if result.drained_seconds is None else f'{result.drained_seconds:.1f}s'}; "
        f"unexpected exits {result.unexpected_exits}; "
        f"healthz failed {result.health_failures}/{result.health_probes}; "
        f"redelivered >= {result.redelivered}; "
        f"{result.seconds:.0f}s",
        flush=True,
    )
    for problem in v.problems[:30]:
        print(f"    {problem}", flush=True)
    for exit_ in result.unexpected_exit_details:
        print(f"    exited on its own: {exit_}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the CI version: all faults, once")
    parser.add_argument("--only", nargs="*", default=[], help="scenario names")
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario (seeds S, S+1, ...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, help="write the report (markdown) and a .json beside it"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The shop's own Kafka clients complain while the broker is away: that is the test.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    results = asyncio.run(run_all(args.short, args.only, args.runs, args.seed))
    if args.out:
        write_report(results, args.out, " ".join(sys.argv[1:]))
        args.out.with_suffix(".json").write_text(
            json.dumps([_as_json(r) for r in results], indent=2) + "\n"
        )
    return 0 if all(r.ok for r in results) else 1


def _as_json(result: ScenarioResult) -> dict[str, object]:
    return {
        "scenario": result.name,
        "seed": result.seed,
        "ok": result.ok,
        "lost": result.verdict.lost,
        "doubled": result.verdict.doubled,
        "oversold": result.verdict.oversold,
        "problems": result.verdict.problems,
        "figures": result.verdict.figures,
        "faults": [
            {
                "kind": f.kind,
                "at": round(f.at, 2),
                "healed_at": round(f.healed_at, 2),
                "recovery_seconds": f.recovery_seconds,
                "detail": f.detail,
            }
            for f in result.faults
        ],
        "drained_seconds": result.drained_seconds,
        "unexpected_exits": result.unexpected_exits,
        "unexpected_exit_details": result.unexpected_exit_details,
        "health_failures": result.health_failures,
        "health_probes": result.health_probes,
        "redelivered_at_least": result.redelivered,
        "seconds": round(result.seconds, 1),
        "counts": result.counts,
    }


if __name__ == "__main__":
    sys.exit(main())
