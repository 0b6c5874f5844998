"""What analytics costs at scale: 1,000,000 variants and 20,000,000 audit rows.

    python -m bench.analytics_scale [--variants N] [--audit-per-variant K] [--days D]
        [--database-url URL] [--reuse DATABASE_URL] [--keep] [--repeat N]
        [--write-batches N] [--json] [--output FILE]

The data is bench/reconcile_scale.py's (imported, not copied: `generate`), into a fresh
migrated database, with one change: its audit rows are spread over the `--days` days
(default 400) that end an hour ago, instead of one a minute from 2026-01-01, so that 90
days hold a quarter of them as a real log's would. Each variant has a row every
`days / K` days (20 days by default); product `p0050000` is variants v00500000 to
v00500009. The analytics indexes are built after the load, as the unique index is.

Then, timed:

* the rollup job's first run over the whole history (variant_daily_sales, then the
  ranking into abc_tiers), a run that adds a day with sales, and a ranking alone;
* `analytics()` for one product over the 90 days before now (the issue's question) with
  abcClass from each of its sources (abc_tiers, the rollup with the raw log, the raw
  log alone: the same figures); over 366 days; over 90 days that ended 300 days ago;
  for a page of 1,000 variants with no filter; and, on the last day with sales, 30
  minutes and 20 hours after the ranking's hour;
* EXPLAIN (ANALYZE, BUFFERS) of the figures statement and of the ABC statements;
* the write cost of the analytics index on the hot path: audit rows inserted as the
  ledger inserts them (unnest batches of 500, about half of them SALE rows), in
  transactions rolled back, without the index, with it, and with a
  (variant_id, created_at) index for comparison (not in the schema: see
  docs/analytics.md).

`--reuse` measures a database a run kept (`--keep`) without generating it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.reconcile_scale import Plan, generate, server, sizes, variant_id
from bench.stack import Stack, drop_database, fresh_database
from service.adapters import analytics_sql
from service.adapters.database import asyncpg_dsn, create_engine
from service.application.analytics import (
    ABC_PERIOD,
    COVER_PERIOD,
    AnalyticsQuery,
    abc_ranges,
    analytics,
    rank,
    roll_up,
    tiers_ranges,
)

#: The generator's time of a row: `timestamptz '2026-01-01' + interval '1 minute' * n`
#: with n = version * variants + i (reconcile_scale.generate).
GENERATOR_TIME = "timestamptz '2026-01-01' + interval '1 minute'"
#: The indexes of audit_log that the generator does not handle itself: dropped before
#: the load and built again after it (it does so for audit_log_variant_version).
KEEP_INDEXES = {"audit_log_pkey", "audit_log_variant_version"}


class SpreadInTime:
    """The generator's connection, with its rows' times spread over [start, end): the
    audit INSERTs' time expression is rewritten; the indexes dropped before the load
    are built again before its VACUUM ANALYZE."""

    def __init__(self, conn: asyncpg.Connection, start: datetime, step: timedelta,
                 indexes: list[str], say: Any) -> None:
        self.conn = conn
        self.expression = (
            f"timestamptz '{start.isoformat()}' + interval '{step // timedelta(microseconds=1)} "
            "microseconds'"
        )
        self.indexes = indexes
        self.say = say
        self.rewritten = 0

    async def execute(self, statement: str, *args: Any) -> Any:
        if GENERATOR_TIME in statement:
            statement = statement.replace(GENERATOR_TIME, self.expression)
            self.rewritten += 1
        if statement.strip().startswith("VACUUM"):
            for index in self.indexes:
                started = time.perf_counter()
                await self.conn.execute(index)
                self.say(f"{index.split(' ON ')[0]} built in {time.perf_counter() - started:.1f}s")
        return await self.conn.execute(statement, *args)

    async def fetchval(self, statement: str, *args: Any) -> Any:
        return await self.conn.fetchval(statement, *args)


async def load(url: str, plan: Plan, days: int, say: Any) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        now = await conn.fetchval("SELECT now()")
        end = now - timedelta(hours=1)
        steps = (plan.per_variant + 1) * plan.variants  # n runs to (K + 1) * V
        step = timedelta(days=days) / steps
        start = end - step * steps
        indexes = [
            r["indexdef"]
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_log'"
            )
            if r["indexname"] not in KEEP_INDEXES
        ]
        for index in indexes:
            name = re.search(r"INDEX (\S+) ON", index)
            assert name
            await conn.execute(f"DROP INDEX {name.group(1)}")
        spread = SpreadInTime(conn, start, step, indexes, say)
        started = time.perf_counter()
        await generate(spread, plan, say)
        seconds = time.perf_counter() - started
        assert spread.rewritten == plan.per_variant, "the generator's time expression changed"
        return {
            "generation_seconds": round(seconds, 1),
            "first_row": start.isoformat(),
            "last_row": end.isoformat(),
            "row_every_seconds_per_variant": round(
                step.total_seconds() * plan.variants, 1
            ),
        }
    finally:
        await conn.close()


# ------------------------------------------------------------------ measurements


async def timed(repeat: int, work: Any) -> tuple[float, list[float], Any]:
    runs: list[float] = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await work()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), [round(r, 4) for r in runs], result


async def explain(engine: AsyncEngine, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    async with engine.connect() as conn:
        [[document]] = (
            await conn.execute(
                text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + str(statement)), params
            )
        ).all()
    if isinstance(document, str):
        document = json.loads(document)
    [document] = document
    plan = document["Plan"]
    return {
        "ms": round(document["Execution Time"], 1),
        "planning_ms": round(document["Planning Time"], 1),
        "shared_hit_blocks": plan.get("Shared Hit Blocks"),
        "shared_read_blocks": plan.get("Shared Read Blocks"),
        "temp_written_blocks": plan.get("Temp Written Blocks"),
        "text": "\n".join(_render(plan)),
    }


def _render(node: dict[str, Any], depth: int = 0) -> list[str]:
    name = node["Node Type"]
    for key in ("Strategy", "Join Type", "Relation Name", "Index Name", "CTE Name"):
        if key in node and not (key == "Strategy" and node[key] == "Plain"):
            name += f" {node[key]}"
    figures = [
        f"rows={node.get('Actual Rows')}",
        f"loops={node.get('Actual Loops')}",
        f"time={node.get('Actual Total Time', 0):.1f}ms",
    ]
    for key, label in (
        ("Shared Hit Blocks", "hit"), ("Shared Read Blocks", "read"),
        ("Temp Written Blocks", "temp_written"), ("Workers Launched", "workers"),
        ("Peak Memory Usage", "peak_kB"), ("Sort Method", "sort"),
    ):
        if node.get(key):
            figures.append(f"{label}={node[key]}")
    lines = ["  " * depth + ("-> " if depth else "") + name + "  " + " ".join(figures)]
    for child in node.get("Plans", []):
        lines.extend(_render(child, depth + 1))
    return lines


async def measure_rollup(engine: AsyncEngine, say: Any) -> dict[str, Any]:
    async with engine.begin() as conn:  # from nothing, also on a database measured before
        await conn.execute(text("TRUNCATE variant_daily_sales, abc_tiers"))
        await conn.execute(text("DELETE FROM rollups"))
    first_seconds, _, first = await timed(1, lambda: roll_up(engine))
    say(f"rollup, first run: {first.days} days, {first.rows:,} rows in {first_seconds:.1f}s")
    # One day more: the last day with sales taken out again, then rolled up.
    async with engine.begin() as conn:
        last = (await conn.execute(text("SELECT max(day) FROM variant_daily_sales"))).scalar()
        if last is not None:
            await conn.execute(text("DELETE FROM variant_daily_sales WHERE day >= :d"), {"d": last})
            await conn.execute(
                analytics_sql.MARK_ROLLED_UP,
                {"hi": datetime.combine(last, datetime.min.time(), UTC)},
            )
    day_seconds, _, day = await timed(1, lambda: roll_up(engine))
    say(f"rollup, one day: {day.rows:,} rows in {day_seconds:.2f}s")
    # The ranking alone: an hour earlier, then the job's hour again.
    ranked = first.tiers_at or day.complete_before
    await rank(engine, ranked - timedelta(hours=1))
    rank_seconds, _, tiers = await timed(1, lambda: rank(engine, ranked))
    say(f"abc_tiers alone: {tiers[1]} tiers in {rank_seconds:.2f}s")
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM variant_daily_sales"))).scalar()
    return {
        "first_run": {"seconds": round(first_seconds, 1), "days": first.days, "rows": first.rows},
        "one_day": {"seconds": round(day_seconds, 2), "days": day.days, "rows": day.rows},
        "ranking": {"seconds": round(rank_seconds, 2), "tiers": tiers[1]},
        "table_rows": rows,
        "complete_before": day.complete_before.isoformat(),
    }


async def measure_queries(
    engine: AsyncEngine, plan: Plan, repeat: int, say: Any
) -> dict[str, Any]:
    async with engine.connect() as conn:
        now = (await conn.execute(text("SELECT now()"))).scalar_one()
    middle = plan.variants // 2
    product = f"p{middle // 10:07d}"
    ninety = AnalyticsQuery(now - timedelta(days=90), now, product_ids=(product,))
    cases: dict[str, tuple[AnalyticsQuery, str]] = {
        "one product, 90 days (abcClass from abc_tiers)": (ninety, "auto"),
        "one product, 90 days (abcClass from the rollup and the raw log)": (ninety, "rollup"),
        "one product, 90 days (abcClass from the raw log alone)": (ninety, "log"),
        "one product, 366 days": (
            AnalyticsQuery(now - timedelta(days=366), now, product_ids=(product,)), "auto"
        ),
        "one product, 90 days ending 300 days ago (abcClass from the rollup)": (
            AnalyticsQuery(
                now - timedelta(days=390), now - timedelta(days=300), product_ids=(product,)
            ),
            "auto",
        ),
        "1,000 variants (no filter, a page), 90 days": (
            AnalyticsQuery(now - timedelta(days=90), now, limit=1000, after=variant_id(middle)),
            "auto",
        ),
    }
    results: dict[str, Any] = {}
    for label, (query, abc) in cases.items():
        seconds, runs, report = await timed(
            repeat, lambda q=query, a=abc: analytics(engine, q, abc=a)
        )
        results[label] = {
            "seconds": round(seconds, 4),
            "runs": runs,
            "variants": len(report.variants),
            "abc_source": report.abc_source,
            "sample": report.variants[0].as_json() if report.variants else None,
        }
        say(f"{label}: median {seconds * 1000:.0f} ms of {runs}")

    # abc_tiers moved on a day with sales (the last one): ranked at its 10:00 and `to`
    # half an hour later (the hourly job's usual case), then ranked at its midnight and
    # `to` 20 hours later (a job that stopped): that much of the sales join, and as much
    # of those 90 days before leave.
    async with engine.connect() as conn:
        last = (await conn.execute(text("SELECT max(day) FROM variant_daily_sales"))).scalar()
        clock = (await conn.execute(analytics_sql.CLOCK)).one()
    current, complete_before = clock.tiers_at, clock.rollup_complete_before
    assert last is not None, "no sales rolled up"
    midnight = datetime.combine(last, datetime.min.time(), UTC)
    busy_plans: dict[str, Any] = {}
    for at, end, after in (
        (midnight + timedelta(hours=10), midnight + timedelta(hours=10, minutes=30), "30 min"),
        (midnight, midnight + timedelta(hours=20), "20 h"),
    ):
        label = f"one product, 90 days ending {after} after abc_tiers' hour, on a day with sales"
        await rank(engine, at)
        query = AnalyticsQuery(end - timedelta(days=90), end, product_ids=(product,))
        seconds, runs, report = await timed(repeat, lambda q=query: analytics(engine, q))
        results[label] = {
            "seconds": round(seconds, 4), "runs": runs, "variants": len(report.variants),
            "abc_source": report.abc_source, "sample": report.variants[0].as_json(),
        }
        say(f"{label}: median {seconds * 1000:.0f} ms of {runs}")
        ranges = tiers_ranges(end, at, complete_before)
        busy_plans[f"abc (abc_tiers, `to` {after} after its hour)"] = await explain(
            engine, analytics_sql.ABC_FROM_TIERS,
            {"ids": [v.variant_id for v in report.variants], **ranges},
        )
    await rank(engine, current)

    # The two statements of the product's call, explained.
    async with engine.connect() as conn:
        ids = [
            r[0]
            for r in await conn.execute(
                text("SELECT variant_id FROM variants WHERE product_id = :p ORDER BY 1"),
                {"p": product},
            )
        ]
        clock = (await conn.execute(analytics_sql.CLOCK)).one()
    start, end = now - timedelta(days=90), now
    plans = {
        "figures (one product, 90 days)": await explain(
            engine,
            analytics_sql.FIGURES,
            {"ids": ids, "from_ts": start, "to_ts": end, "cover_from": end - COVER_PERIOD},
        ),
        "abc (abc_tiers)": await explain(
            engine, analytics_sql.ABC_FROM_TIERS,
            {"ids": ids, **tiers_ranges(end, clock.tiers_at, clock.rollup_complete_before)},
        ),
        **busy_plans,
        "abc (rollup)": await explain(
            engine, analytics_sql.ABC,
            {"ids": ids, **abc_ranges(end - ABC_PERIOD, end, clock.rollup_complete_before)},
        ),
        "abc (raw log only)": await explain(
            engine, analytics_sql.ABC, {"ids": ids, **abc_ranges(end - ABC_PERIOD, end, None)}
        ),
    }
    for label, found in plans.items():
        say(f"EXPLAIN ANALYZE {label}: {found['ms']} ms")
    return {"product": product, "variants_of_product": ids, "calls": results, "plans": plans}


async def write_cost(url: str, batches: int, rounds: int, say: Any) -> dict[str, Any]:
    """µs per audit row inserted as the ledger inserts them, in rolled-back transactions:
    without the analytics index, with it, and with a (variant_id, created_at) index."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    insert = """
        INSERT INTO audit_log (
            variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
            reserved_after, version, reason, reference, source_event_source,
            source_event_id, actor
        )
        SELECT 'v' || lpad((random() * $1)::int::text, 8, '0') || '-w' || $2 || '-' || g,
               CASE WHEN g % 2 = 0 THEN 'SALE' ELSE 'RESERVE' END,
               CASE WHEN g % 2 = 0 THEN -1 ELSE 0 END, CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END,
               10, 0, 1, NULL, 'o-' || g, 'order-service', md5($2 || '-' || g), 'order-service'
        FROM generate_series(1, 500) AS g
    """
    variants = await conn.fetchval("SELECT count(*) FROM variants")
    sales_index = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'audit_log_sales'"
    )
    configurations = {
        "without audit_log_sales": ["DROP INDEX audit_log_sales"],
        "with audit_log_sales (the schema)": [],
        "with audit_log_sales and (variant_id, created_at)": [
            "CREATE INDEX audit_log_variant_time ON audit_log (variant_id, created_at)"
        ],
    }
    timings: dict[str, list[float]] = {name: [] for name in configurations}
    try:
        for name, setup in configurations.items():
            # The configuration is made once, each round in a savepoint rolled back, and
            # everything rolled back at the end: the database is left as it was.
            outer = conn.transaction()
            await outer.start()
            try:
                for statement in setup:
                    started = time.perf_counter()
                    await conn.execute(statement)
                    say(f"({name}: {statement[:48]}... {time.perf_counter() - started:.0f}s)")
                for n in range(rounds):
                    inner = conn.transaction()
                    await inner.start()
                    started = time.perf_counter()
                    for b in range(batches):
                        await conn.execute(insert, variants, f"{n}-{b}-{uuid.uuid4().hex[:6]}")
                    seconds = time.perf_counter() - started
                    await inner.rollback()
                    timings[name].append(seconds / (batches * 500) * 1e6)
                    say(f"round {n + 1}: {name}: {timings[name][-1]:.1f} µs per audit row")
            finally:
                await outer.rollback()
    finally:
        await conn.close()
    assert sales_index
    base = statistics.median(timings["without audit_log_sales"])
    return {
        "rows_per_round": batches * 500,
        "rounds": rounds,
        "us_per_row": {name: round(statistics.median(t), 2) for name, t in timings.items()},
        "runs_us_per_row": {name: [round(x, 2) for x in t] for name, t in timings.items()},
        "extra_us_per_row": {
            name: round(statistics.median(t) - base, 2) for name, t in timings.items()
        },
    }


# ------------------------------------------------------------------ the run


async def run(args: argparse.Namespace, plan: Plan, say: Any) -> dict[str, Any]:
    if args.reuse:
        return await _measure(args, plan, args.reuse, None, say)
    async with server(args.database_url) as server_url:
        stack = Stack(server_url, bootstrap="")
        url = await fresh_database(stack, "analytics")
        say(f"database: {url.split('?')[0]}")
        try:
            loaded = await load(url, plan, args.days, say)
            return await _measure(args, plan, url, loaded, say)
        finally:
            if args.keep:
                say(f"kept: {url}")
            else:
                await drop_database(stack, url)


async def _measure(
    args: argparse.Namespace, plan: Plan, url: str, loaded: dict[str, Any] | None, say: Any
) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
        variant_rows = await conn.fetchval("SELECT count(*) FROM variants")
        server_settings = {
            name: str(await conn.fetchval(f"SHOW {name}"))
            for name in ("server_version", "shared_buffers", "work_mem",
                         "max_parallel_workers_per_gather", "jit")
        }
        table_sizes = await sizes(conn)
        for r in await conn.fetch(
            "SELECT indexname, pg_relation_size(indexname::regclass) AS size FROM pg_indexes "
            "WHERE tablename = 'audit_log'"
        ):
            table_sizes.setdefault("index " + r["indexname"], {})["heap"] = int(r["size"])
    finally:
        await conn.close()
    engine = create_engine(url, pool_size=2)
    try:
        rollup = await measure_rollup(engine, say)
        queries = await measure_queries(engine, plan, args.repeat, say)
    finally:
        await engine.dispose()
    cost = await write_cost(url, args.write_batches, 3, say) if args.write_batches else None
    return {
        "command": "python -m bench.analytics_scale " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "variants": int(variant_rows),
        "audit_rows": int(audit_rows),
        "data": loaded,
        "server": server_settings,
        "sizes": table_sizes,
        "rollup": rollup,
        **queries,
        "write_cost": cost,
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:,.0f} MB"


def print_report(result: dict[str, Any]) -> None:
    print(f"\n$ {result['command']}")
    print(f"{result['variants']:,} variants, {result['audit_rows']:,} audit rows")
    if result["data"]:
        print("data: " + ", ".join(f"{k}={v}" for k, v in result["data"].items()))
    print("server: " + ", ".join(f"{k}={v}" for k, v in result["server"].items()))
    for name, size in result["sizes"].items():
        if name.startswith("index "):
            print(f"  {name:<44} {_mb(size['heap'])}")
    r = result["rollup"]
    print(
        f"rollup: first run {r['first_run']['seconds']}s ({r['first_run']['days']} days, "
        f"{r['first_run']['rows']:,} rows); one more day {r['one_day']['seconds']}s "
        f"({r['one_day']['rows']:,} rows); {r['table_rows']:,} rows in all; abc_tiers "
        f"{r['ranking']['seconds']}s ({r['ranking']['tiers']} tiers)"
    )
    print(f"product {result['product']}: {', '.join(result['variants_of_product'])}")
    for label, call in result["calls"].items():
        print(f"  {label}: median {call['seconds'] * 1000:.1f} ms {call['runs']} "
              f"({call['variants']} variants, abcClass from {call['abc_source']})")
    for label, found in result["plans"].items():
        print(f"\nEXPLAIN ANALYZE {label}: {found['ms']} ms "
              f"(planning {found['planning_ms']} ms), hit {found['shared_hit_blocks']} "
              f"read {found['shared_read_blocks']} temp {found['temp_written_blocks']}")
        print(re.sub(r"^", "    ", found["text"], flags=re.M))
    cost = result["write_cost"]
    if cost:
        print(f"\nwrite cost, µs per audit row ({cost['rows_per_round']:,} rows a round, "
              f"median of {cost['rounds']}):")
        for name, us in cost["us_per_row"].items():
            print(f"  {name}: {us} (+{cost['extra_us_per_row'][name]}) "
                  f"{cost['runs_us_per_row'][name]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.analytics_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument("--audit-per-variant", type=int, default=20,
                        help="audit rows per variant (even, >= 4)")
    parser.add_argument("--days", type=int, default=400, help="the days the rows span")
    parser.add_argument("--database-url", help="a PostgreSQL server (its maintenance "
                        "database's URL); default: an embedded one for the run")
    parser.add_argument("--reuse", metavar="DATABASE_URL",
                        help="measure this database (kept by --keep) without generating")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per case")
    parser.add_argument("--write-batches", type=int, default=200,
                        help="batches of 500 audit rows per write-cost round (0: skip)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.audit_per_variant < 4 or args.audit_per_variant % 2:
        parser.error("--audit-per-variant must be even and at least 4")
    if args.variants < 1000:
        parser.error("--variants must be at least 1000")
    plan = Plan(args.variants, args.audit_per_variant, finished_orders=0, plant=0)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = asyncio.run(run(args, plan, say))
    if args.output:
        with open(args.output, "w") as out:
            out.write(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
