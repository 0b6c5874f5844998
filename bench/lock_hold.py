"""How long a batch holds a hot variant's row lock (docs/scaling.md).

The flash sale's events (every checkout on one variant) go through the worker's batch
path in-process (`BatchConsumer.handle`, no Kafka) in batches of 1, 10, 100 and 500.
For each batch: from the moment the variants' `SELECT ... FOR UPDATE` returns (the
row is locked) to the moment `handle` returns (the commit is done, the lock released),
and the whole batch for comparison. Every other batch on that variant, from any
worker, waits that long: one hot variant goes at most batch size / hold time.

    .venv/bin/python -m bench.lock_hold [--orders 10000] [--sizes 1 10 100 500]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event

from bench.ceiling import _Record
from bench.stack import Stack, bench_settings, drop_database, fresh_database, load_catalogue
from bench.workload import SCENARIOS, build_events
from service.adapters.database import create_engine
from service.application.consume import BatchConsumer


@dataclass
class LockHold:
    batch_size: int
    batches: int
    #: Lock to commit done, per batch (ms): median and 99th percentile.
    hold_p50_ms: float
    hold_p99_ms: float
    #: The whole batch (ms), decode to commit.
    batch_p50_ms: float
    #: Events a second one hot variant can take at this batch size (batch / hold p50).
    hot_variant_ceiling: float


async def measure_lock_hold(
    stack: Stack, *, orders: int = 10_000, sizes: tuple[int, ...] = (1, 10, 100, 500)
) -> list[LockHold]:
    """One database, the flash sale's variant; each batch size on orders of its own
    (after the units are gone, checkouts are refused: the refusal locks the row too)."""
    scenario = SCENARIOS["flash"].scaled(orders / SCENARIOS["flash"].orders)
    url = await fresh_database(stack, "lockhold")
    results = []
    # As a worker runs (`stock run` logs at WARNING here): a line per refused order
    # would be formatted inside the measured hold.
    service_log = logging.getLogger("service")
    level = service_log.level
    service_log.setLevel(logging.WARNING)
    try:
        await load_catalogue(url, scenario)
        for size in sizes:
            settings = bench_settings(url, stack, f"lock{size}")
            events = build_events(scenario, settings, run=f"lh{size}")
            # Small batches take long one by one: 50 batches say enough.
            results.append(await _measure(settings, events[: max(size * 50, 500)], size))
    finally:
        service_log.setLevel(level)
        await drop_database(stack, url)
    return results


async def _measure(settings: Any, events: list[Any], size: int) -> LockHold:
    engine = create_engine(settings.database_url, pool_size=1)
    locked_at: list[float] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM variants" in statement and "FOR UPDATE" in statement and not locked_at:
            locked_at.append(time.perf_counter())

    event.listen(engine.sync_engine, "after_cursor_execute", after)
    consumer = BatchConsumer(engine, settings)
    now_ms = int(time.time() * 1000)
    records = [_Record(e.topic, 0, n, now_ms, e.key, e.value) for n, e in enumerate(events)]
    holds, whole = [], []
    try:
        for start in range(0, len(records), size):
            locked_at.clear()
            began = time.perf_counter()
            await consumer.handle(records[start : start + size])
            done = time.perf_counter()
            whole.append((done - began) * 1000)
            if locked_at:
                holds.append((done - locked_at[0]) * 1000)
    finally:
        await engine.dispose()
    holds.sort()
    p50 = statistics.median(holds)
    return LockHold(
        batch_size=size,
        batches=len(holds),
        hold_p50_ms=round(p50, 2),
        hold_p99_ms=round(holds[min(round(0.99 * (len(holds) - 1)), len(holds) - 1)], 2),
        batch_p50_ms=round(statistics.median(whole), 2),
        hot_variant_ceiling=round(size / (p50 / 1000)) if p50 else 0,
    )


def main(argv: list[str] | None = None) -> int:
    from bench.stack import running_stack

    parser = argparse.ArgumentParser(prog="python -m bench.lock_hold")
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    with running_stack(args.database_url, "unused:9092") as stack:
        results = asyncio.run(measure_lock_hold(stack, orders=args.orders, sizes=tuple(args.sizes)))
    print(
        "| batch size | batches | lock held p50 ms | p99 ms | whole batch p50 ms "
        "| one hot variant at most (events/s) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r.batch_size} | {r.batches} | {r.hold_p50_ms} | {r.hold_p99_ms} "
              f"| {r.batch_p50_ms} | {r.hot_variant_ceiling:,} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
