"""What the anomaly rules cost at scale: 1,000,000 variants and 20,000,000 audit rows.

    python -m bench.shrinkage_scale [--variants N] [--audit-per-variant K]
        [--adjusted-every N] [--adjustments M] [--database-url URL] [--repeat N]
        [--json] [--output FILE]

The data is bench/reconcile_scale.py's (imported, not copied: `generate`, with
bench/analytics_scale.py's `SpreadInTime` to put its rows in time). That generator
writes no ADJUSTMENT row at all (RESTOCK, RESERVE and SALE only), so this adds them:

* the generated history is spread over the 400 days that end 57 days before the judged
  week (the last complete ISO week) starts, so it is all older than the 9 weeks the
  shrinkage statement reads: those weeks hold only the rows added here;
* one variant in `--adjusted-every` (5) gets `--adjustments` (3) negative ADJUSTMENT
  rows (1 to 12 units each, reasons `damaged` and `cycle_count`), spread evenly over
  the 9 weeks and the current week (the judged week's 8 weeks of baseline, the judged
  week, and what has passed since), and one in 100 of those a write-off of 40 in the
  judged week as well; appended after the variant's last version (versions and
  `on_hand_after` follow on, the variant's row moves with them, as the ledger writes
  it). INSERTs only, the log stays append-only.

VACUUM ANALYZE, then: the tables' and indexes' sizes, EXPLAIN (ANALYZE, BUFFERS) of the
shrinkage statement (`anomaly_sql.WEEKLY_LOSSES`) and of the single-variant
`large_adjustment` lookup (`anomaly_sql.ADJUSTMENT_HISTORY`, the 90 days of daily
non-sale changes of one adjusted variant), then `check_shrinkage()` end to end
(`--repeat` runs, median; the anomalies and outbox rows a run raised are deleted
before the next, so each run raises them again). If the schema has the index
`audit_log_losses`, the statement is also explained without it (dropped in a
transaction rolled back), and the write cost of the index measured: batches of audit
rows as the ledger inserts them, with and without it, rolled back.
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
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.analytics_scale import KEEP_INDEXES, SpreadInTime
from bench.reconcile_scale import Plan, generate, server, sizes, variant_id
from bench.stack import Stack, drop_database, fresh_database
from service.adapters import anomaly_sql
from service.adapters.database import asyncpg_dsn, create_engine
from service.application.anomaly_checks import check_shrinkage
from service.domain.anomaly_rules import BASELINE_WEEKS, HISTORY_DAYS
from service.settings import isolated_settings

#: The index the shrinkage statement may use (service/migrations/versions/0003_insight.py).
LOSSES_INDEX = "audit_log_losses"
HISTORY_SPAN = timedelta(days=400)


async def load(url: str, plan: Plan, every: int, adjustments: int, say: Any) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        week_start = await conn.fetchval(str(anomaly_sql.LAST_COMPLETE_WEEK.text))
        window_start = week_start - timedelta(days=7 * BASELINE_WEEKS)
        end = window_start - timedelta(days=1)
        steps = (plan.per_variant + 1) * plan.variants
        step = HISTORY_SPAN / steps
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
        spread = SpreadInTime(conn, end - step * steps, step, indexes, say)
        started = time.perf_counter()
        await generate(spread, plan, say)
        assert spread.rewritten == plan.per_variant, "the generator's time expression changed"
        generated = time.perf_counter() - started

        # The ADJUSTMENT rows: variant i (i % every = 1) gets rows j = 1..m at
        # window_start + (j - 1 + frac) * span / m, frac from a hash; the heavy ones
        # (i % (100 * every) = 1) a write-off of 40 in the judged week, as row m + 1.
        step_started = time.perf_counter()
        span = f"(now() - timestamptz '{window_start.isoformat()}')"
        judged = f"timestamptz '{week_start.isoformat()}'"
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(
            f"""
            WITH rows AS (
                SELECT v.variant_id, v.on_hand, v.reserved, v.version, j,
                       CASE WHEN j > {adjustments} THEN -40
                            ELSE -(1 + abs(hashtext(v.variant_id || '/' || j)) % 12) END
                         AS delta,
                       CASE WHEN j > {adjustments}
                            THEN {judged} + interval '3 days'
                            ELSE timestamptz '{window_start.isoformat()}'
                                 + {span} * ((j - 1) + (abs(hashtext(v.variant_id || '@' || j))
                                              % 1000) / 1000.0) / {adjustments}
                       END AS at
                FROM variants AS v
                CROSS JOIN generate_series(1, {adjustments + 1}) AS j
                WHERE substr(v.variant_id, 2)::bigint % {every} = 1
                  AND (j <= {adjustments} OR substr(v.variant_id, 2)::bigint % {100 * every} = 1)
            ),
            ordered AS (
                SELECT *, row_number() OVER w AS n, sum(delta) OVER w AS moved
                FROM rows WINDOW w AS (PARTITION BY variant_id ORDER BY at)
            )
            INSERT INTO audit_log (
                variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
                reserved_after, version, reason, reference, source_event_source,
                source_event_id, actor, created_at
            )
            SELECT variant_id, 'ADJUSTMENT', delta, 0, on_hand + moved, reserved, version + n,
                   CASE WHEN j % 2 = 0 THEN 'cycle_count' ELSE 'damaged' END,
                   'adjust-' || variant_id || '-' || j, NULL, NULL, 'api:bench', at
            FROM ordered
            ORDER BY at
            """
        )
        await conn.execute(
            """
            UPDATE variants AS v SET on_hand = a.on_hand_after, version = a.version
            FROM (SELECT DISTINCT ON (variant_id) variant_id, on_hand_after, version
                  FROM audit_log WHERE change_type = 'ADJUSTMENT'
                  ORDER BY variant_id, version DESC) AS a
            WHERE a.variant_id = v.variant_id
            """
        )
        added = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE change_type = 'ADJUSTMENT'"
        )
        say(f"{added:,} ADJUSTMENT rows in {time.perf_counter() - step_started:.1f}s")
        step_started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        say(f"VACUUM ANALYZE in {time.perf_counter() - step_started:.1f}s")
        return {
            "generation_seconds": round(generated, 1),
            "adjustment_rows": int(added),
            "history_from": (end - step * steps).isoformat(),
            "history_to": end.isoformat(),
            "judged_week_start": week_start.isoformat(),
            "adjustments_from": window_start.isoformat(),
        }
    finally:
        await conn.close()


async def explain(
    conn: asyncpg.Connection, statement: str, args: list[Any], drop: str | None = None
) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement with `$n` parameters; with `drop`,
    that index dropped in a transaction rolled back."""
    tr = conn.transaction()
    await tr.start()
    try:
        if drop:
            await conn.execute(f"DROP INDEX {drop}")
        [document] = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *args)
        )
    finally:
        await tr.rollback()
    plan = document["Plan"]
    return {
        "seconds": round(document["Execution Time"] / 1000, 4),
        "planning_ms": round(document["Planning Time"], 1),
        "shared_hit_blocks": plan.get("Shared Hit Blocks"),
        "shared_read_blocks": plan.get("Shared Read Blocks"),
        "temp_written_blocks": plan.get("Temp Written Blocks"),
        "rows": plan.get("Actual Rows"),
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
        ("Sort Method", "sort"),
    ):
        if node.get(key):
            figures.append(f"{label}={node[key]}")
    lines = ["  " * depth + ("-> " if depth else "") + name + "  " + " ".join(figures)]
    for child in node.get("Plans", []):
        lines.extend(_render(child, depth + 1))
    return lines


def _positional(statement: Any, names: list[str]) -> str:
    """A SQLAlchemy `text()` statement with `:name` as asyncpg's `$n`."""
    sql = str(statement.text)
    for n, name in enumerate(names, 1):
        sql = re.sub(rf"(?<!:):{name}\b", f"${n}", sql)
    return sql


async def write_cost(conn: asyncpg.Connection, batches: int, say: Any) -> dict[str, Any]:
    """Audit rows inserted as the ledger does (unnest batches of 500; one in ten a negative
    ADJUSTMENT, the rest SALE/RESERVE/RESTOCK), rolled back, with the losses index and
    without it."""
    statement = """
        INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
            on_hand_after, reserved_after, version, actor, created_at)
        SELECT 'x' || $2::text || '-' || ($1::bigint * 500 + g),
               CASE WHEN g % 10 = 0 THEN 'ADJUSTMENT'
                    WHEN g % 3 = 0 THEN 'RESTOCK' WHEN g % 3 = 1 THEN 'SALE' ELSE 'RESERVE' END,
               CASE WHEN g % 10 = 0 THEN -2 WHEN g % 3 = 0 THEN 5 WHEN g % 3 = 1 THEN -1 ELSE 0 END,
               0, 10, 0, 1, 'bench', now()
        FROM unnest(ARRAY(SELECT generate_series(1, 500))) AS g
    """
    # Fresh keys for every run: a run rolled back leaves its entries in the unique
    # (variant_id, version) index until vacuum, and a later run inserting the same keys
    # checks each against them, which made whichever form ran first look 4x slower.
    # The two forms alternate, so neither has the warm caches to itself.
    forms = (("with the index", None), ("without it", LOSSES_INDEX))
    runs: dict[str, list[float]] = {label: [] for label, _ in forms}
    attempt = 0
    for _ in range(5):
        for label, drop in forms:
            attempt += 1
            tr = conn.transaction()
            await tr.start()
            try:
                if drop:
                    await conn.execute(f"DROP INDEX {drop}")
                started = time.perf_counter()
                for b in range(batches):
                    await conn.execute(statement, b, str(attempt))
                runs[label].append(time.perf_counter() - started)
            finally:
                await tr.rollback()
    found: dict[str, Any] = {}
    for label, timings in runs.items():
        seconds = statistics.median(timings)
        found[label] = {
            "seconds": round(seconds, 3),
            "runs": [round(t, 3) for t in timings],
            "rows_per_second": round(batches * 500 / seconds),
        }
        say(
            f"write cost {label}: {batches * 500:,} rows in {seconds:.3f}s"
            f" (median of {found[label]['runs']})"
        )
    return found


async def measure(url: str, plan: Plan, repeat: int, say: Any) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        table_sizes = await sizes(conn)
        audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
        has_index = bool(
            await conn.fetchval("SELECT 1 FROM pg_indexes WHERE indexname = $1", LOSSES_INDEX)
        )
        week_start, label = (
            await conn.fetchrow(str(anomaly_sql.LAST_COMPLETE_WEEK.text))
        ).values()
        losses = _positional(anomaly_sql.WEEKLY_LOSSES, ["week_start", "label", "min_units"])
        args = [week_start, label, 10]
        plans = {"shrinkage statement": await explain(conn, losses, args)}
        if has_index:
            plans[f"shrinkage statement without {LOSSES_INDEX}"] = await explain(
                conn, losses, args, drop=LOSSES_INDEX
            )
        # One adjusted variant (i % 5 = 1 by default: v00500001), as an adjust would ask.
        heavy = variant_id(plan.variants // 2 + 1)
        history = _positional(anomaly_sql.ADJUSTMENT_HISTORY, ["ids", "days"])
        plans["large_adjustment lookup (one variant)"] = await explain(
            conn, history, [[heavy], HISTORY_DAYS]
        )
        runs: list[float] = []
        for _ in range(repeat):
            started = time.perf_counter()
            await conn.fetch(history, [heavy], HISTORY_DAYS)
            runs.append(time.perf_counter() - started)
        lookup = {"seconds": round(statistics.median(runs), 4), "runs": [round(r, 4) for r in runs],
                  "variant": heavy}
        for name, found in plans.items():
            say(f"EXPLAIN ANALYZE {name}: {found['seconds']}s, {found['rows']} rows")
        costs = await write_cost(conn, 40, say) if has_index else None
    finally:
        await conn.close()

    engine = create_engine(url, pool_size=1)
    timings: list[float] = []
    try:
        settings = isolated_settings(f"bench-{uuid.uuid4().hex[:6]}", database_url=url)
        for _ in range(repeat):
            async with engine.begin() as c:
                await c.execute(text("DELETE FROM anomalies WHERE rule = 'unusual_shrinkage'"))
                await c.execute(text("DELETE FROM outbox"))
            started = time.perf_counter()
            report = await check_shrinkage(engine, settings, "bench")
            timings.append(time.perf_counter() - started)
            say(
                f"check_shrinkage(): {timings[-1]:.2f}s, {report.candidates} candidates, "
                f"{len(report.raised)} raised"
            )
    finally:
        await engine.dispose()
    return {
        "audit_rows": int(audit_rows),
        "losses_index": has_index,
        "sizes": table_sizes,
        "plans": plans,
        "large_adjustment_lookup": lookup,
        "check_shrinkage": {
            "seconds": round(statistics.median(timings), 3),
            "runs": [round(t, 3) for t in timings],
            "week": report.week,
            "candidates": report.candidates,
            "raised": len(report.raised),
        },
        "write_cost_500_row_batches": costs,
    }


async def run(args: argparse.Namespace, plan: Plan, say: Any) -> dict[str, Any]:
    async with server(args.database_url) as server_url:
        stack = Stack(server_url, bootstrap="")
        url = await fresh_database(stack, "shrinkage")
        say(f"database: {url.split('?')[0]}")
        try:
            loaded = await load(url, plan, args.adjusted_every, args.adjustments, say)
            result = await measure(url, plan, max(args.repeat, 1), say)
        finally:
            await drop_database(stack, url)
    return {
        "command": "python -m bench.shrinkage_scale " + " ".join(sys.argv[1:]),
        "variants": plan.variants,
        **loaded,
        **result,
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:,.1f} MB"


def print_report(result: dict[str, Any]) -> None:
    print(f"\n$ {result['command']}")
    print(
        f"{result['variants']:,} variants, {result['audit_rows']:,} audit rows, "
        f"{result['adjustment_rows']:,} of them ADJUSTMENT (generated in "
        f"{result['generation_seconds']}s); judged week from {result['judged_week_start']}"
    )
    print("sizes:")
    for name, size in result["sizes"].items():
        if name.startswith("index "):
            print(f"  {name:<40} {_mb(size['heap'])}")
        else:
            print(f"  {name:<40} {size['rows']:>12,} rows  heap {_mb(size['heap'])}, "
                  f"indexes {_mb(size['indexes'])}, total {_mb(size['total'])}")
    for name, plan in result["plans"].items():
        print(
            f"\nEXPLAIN ANALYZE {name}: {plan['seconds']}s, {plan['rows']} rows, shared hit "
            f"{plan['shared_hit_blocks']} read {plan['shared_read_blocks']} blocks, "
            f"temp written {plan['temp_written_blocks'] or 0} blocks"
        )
        print(re.sub(r"^", "    ", plan["text"], flags=re.M))
    lookup = result["large_adjustment_lookup"]
    print(f"\nlarge_adjustment lookup ({lookup['variant']}): median {lookup['seconds']}s "
          f"of {lookup['runs']}")
    s = result["check_shrinkage"]
    print(f"check_shrinkage(): median {s['seconds']}s of {s['runs']}, week {s['week']}, "
          f"{s['candidates']} candidates, {s['raised']} raised")
    if result["write_cost_500_row_batches"]:
        for label, cost in result["write_cost_500_row_batches"].items():
            print(f"write cost {label}: {cost['rows_per_second']:,} audit rows/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shrinkage_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument("--audit-per-variant", type=int, default=20,
                        help="the generator's audit rows per variant (even, >= 4)")
    parser.add_argument("--adjusted-every", type=int, default=5,
                        help="one variant in N gets ADJUSTMENT rows")
    parser.add_argument("--adjustments", type=int, default=3,
                        help="negative ADJUSTMENT rows per adjusted variant")
    parser.add_argument("--database-url", help="a PostgreSQL server (its maintenance "
                        "database's URL); default: an embedded one for the run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    k = args.audit_per_variant
    if k < 4 or k % 2:
        parser.error("--audit-per-variant must be even and at least 4")
    if args.variants < 1000:
        parser.error("--variants must be at least 1000")
    plan = Plan(variants=args.variants, per_variant=k, finished_orders=0, plant=0)

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
