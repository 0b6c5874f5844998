"""The outbox fast path, off and on in one run (docs/design.md, "The outbox fast path").

The fixed-rate probe of bench/probe.py against one `stock run --no-api` worker with
STOCK_OUTBOX_FAST_PATH off, then on, alternating `--rounds` times, on one embedded
stack (bench/stack.py), a fresh database each time. Prints one JSON line per point and
the medians over the rounds.

    PYTHONPATH=. .venv/bin/python docs/fast_path_ab.py [--rates 200,500] [--seconds 8] [--rounds 2]
"""
import argparse, asyncio, json, statistics, time
import asyncpg
from bench.probe import fixed_rate_probe
from bench.stack import bench_settings, fresh_database, load_catalogue, running_stack
from bench.workload import SCENARIOS
from bench.worker_run import _start, _stop
from service.adapters.database import asyncpg_dsn
from service.adapters.kafka import ensure_topics

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")

async def ready(url, settings):
    # Time for the worker to start and join its group; the warm-up probe follows.
    await asyncio.sleep(12)

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="200,1000")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    scenario = SCENARIOS["uniform"]
    results = []
    with running_stack(None, None) as stack:
        n = 0
        for round_ in range(args.rounds):
            for fast in (False, True):
                n += 1
                url = await fresh_database(stack, f"ab{n}")
                await load_catalogue(url, scenario)
                settings = bench_settings(url, stack, f"ab{n}-{int(time.time())}").model_copy(
                    update={"outbox_fast_path": fast})
                await ensure_topics(settings)
                worker = _start(settings, ["run", "--no-api"], "w")
                try:
                    await ready(url, settings)
                    # warm-up
                    await fixed_rate_probe(stack.bootstrap, settings.topic_order_checkout,
                        settings.topic_stock_reservation, rate=100, seconds=2,
                        variants=scenario.variants, run=f"ab{n}w")
                    for k, rate in enumerate(rates):
                        p = await fixed_rate_probe(stack.bootstrap, settings.topic_order_checkout,
                            settings.topic_stock_reservation, rate=rate, seconds=args.seconds,
                            variants=scenario.variants, run=f"ab{n}r{k}")
                        row = dict(round=round_, fast=fast, rate=rate, sent_rate=round(p.sent_rate),
                                   answered=p.answered, sent=p.sent,
                                   p50=round(pct(p.latencies_ms, 50), 1),
                                   p99=round(pct(p.latencies_ms, 99), 1),
                                   growth=round(p.growth(), 2))
                        print(json.dumps(row), flush=True)
                        results.append(row)
                finally:
                    _stop([worker])
    print("summary (median over rounds):")
    for rate in rates:
        def med(fast, key):
            return statistics.median(r[key] for r in results if r["rate"] == rate and r["fast"] == fast)
        off50, off99, on50, on99 = med(False, "p50"), med(False, "p99"), med(True, "p50"), med(True, "p99")
        print(f"{rate:.0f}/s: off p50 {off50} p99 {off99} | on p50 {on50} p99 {on99} | "
              f"ratio off/on p50 {off50/on50:.2f} p99 {off99/on99:.2f}")

asyncio.run(main())
