"""What reconciliation costs at scale: 1,000,000 variants and 20,000,000 audit rows.

    python -m bench.reconcile_scale [--variants N] [--audit-per-variant K]
        [--finished-orders N] [--plant N] [--database-url URL] [--keep] [--json]
        [--repeat N] [--output FILE] [--no-compare]

Into a fresh database (the project's migrations; an embedded PostgreSQL unless
`--database-url` names a server, beside whose databases it is created), generated
set-based with generate_series, consistent the way the service writes it:

* every variant starts at 0: version 1 restocks 100 units; versions 2..K-1 are
  RESERVE (+1 reserved) / SALE (-1 on hand, -1 reserved) pairs; version K is a
  RESERVE held by a RESERVED order for one variant in ten, a RESTOCK of 5 for the
  others. The audit rows are written version by version over all variants, so each
  variant's rows are scattered over the table as they are in a real log;
* `--finished-orders` CONFIRMED orders with one line each, so `order_lines` is not
  only the holds;
* then `--plant` discrepancies of each kind: on_hand changed behind the service's
  back (ledger_mismatch), reserved changed (reserved_mismatch), the row's version
  moved (version_gap), an audit log whose last version skips two (version_gap, made
  at generation), reserved above on_hand with the CHECK constraint dropped (bounds,
  plus the ledger_mismatch of the same change), a deleted variant row (ledger_mismatch
  and version_gap from its log).

VACUUM ANALYZE, then: the tables' and indexes' sizes, EXPLAIN (ANALYZE, BUFFERS) of
the reconciliation statement with the work_mem it sets and with the server's
default, and of its first form (a hash aggregate over a sequential scan of the log)
for comparison, then the timed `reconcile(full=True)` itself (the statement, the run
recorded, one outbox row per discrepancy), then `reconcile()` from the checkpoints the
full runs left: with nothing new, and after one more version of one variant in a
hundred. It checks that every run finds exactly the planted discrepancies, and exits 1
if not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.stack import Stack, drop_database, fresh_database
from service.adapters import reconciliation_sql
from service.adapters.database import asyncpg_dsn, create_engine
from service.application.reconciliation import ReconciliationReport, reconcile
from service.settings import isolated_settings

UNITS_RESTOCKED = 100
LAST_RESTOCK = 5
HELD_EVERY = 10  # one variant in ten ends with a unit held by a RESERVED order


def variant_id(i: int) -> str:
    return f"v{i:08d}"


@dataclass(frozen=True)
class Plan:
    variants: int
    per_variant: int
    finished_orders: int
    plant: int

    @property
    def pairs(self) -> int:
        return (self.per_variant - 2) // 2

    def final_on_hand(self, i: int) -> int:
        return UNITS_RESTOCKED - self.pairs + (0 if i % HELD_EVERY == 0 else LAST_RESTOCK)

    def final_reserved(self, i: int) -> int:
        return 1 if i % HELD_EVERY == 0 else 0

    def _spread(self, kind: int, held: bool) -> list[int]:
        """`plant` variant numbers for one kind, spread over the range, none shared."""
        found: list[int] = []
        for n in range(self.plant):
            i = (self.variants * (2 * n + 1)) // (2 * self.plant)  # the middle of slice n
            i = i - i % HELD_EVERY + (0 if held else 1 + kind)
            found.append(min(max(i, 1), self.variants))
        return found

    @property
    def ledger(self) -> list[int]:
        return self._spread(0, held=False)

    @property
    def reserved(self) -> list[int]:
        return self._spread(1, held=False)

    @property
    def version(self) -> list[int]:
        return self._spread(2, held=False)

    @property
    def log_gap(self) -> list[int]:
        return self._spread(3, held=False)

    @property
    def deleted(self) -> list[int]:
        return self._spread(4, held=False)

    @property
    def bounds(self) -> list[int]:
        return self._spread(0, held=True)

    def expected(self) -> set[tuple[str, str, int, int]]:
        """(variant, kind, expected, actual) of every planted discrepancy."""
        k = self.per_variant
        found: set[tuple[str, str, int, int]] = set()
        for i in self.ledger:
            found.add((variant_id(i), "ledger_mismatch", self.final_on_hand(i),
                       self.final_on_hand(i) + 7))
        for i in self.reserved:
            found.add((variant_id(i), "reserved_mismatch", 0, 1))
        for i in self.version:
            found.add((variant_id(i), "version_gap", k, k + 1))
        for i in self.log_gap:
            found.add((variant_id(i), "version_gap", k, k + 2))
        for i in self.deleted:
            found.add((variant_id(i), "ledger_mismatch", self.final_on_hand(i), 0))
            found.add((variant_id(i), "version_gap", k, 0))
        for i in self.bounds:
            found.add((variant_id(i), "bounds", 0, 1))
            found.add((variant_id(i), "ledger_mismatch", self.final_on_hand(i), 0))
        return found


# ------------------------------------------------------------------ generation


def _array(ids: list[int]) -> str:
    return "ARRAY[" + ",".join(str(i) for i in ids) + "]::bigint[]" if ids else "'{}'::bigint[]"


async def generate(conn: asyncpg.Connection, plan: Plan, say: Any) -> None:
    v, k = plan.variants, plan.per_variant
    gap = _array(plan.log_gap)
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    started = time.perf_counter()
    # The unique index is built once after the load (as the migrations define it):
    # much faster than row by row.
    index = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'audit_log_variant_version'"
    )
    await conn.execute("DROP INDEX audit_log_variant_version")
    await conn.execute(
        f"""
        INSERT INTO variants (variant_id, product_id, on_hand, reserved, version)
        SELECT 'v' || lpad(i::text, 8, '0'), 'p' || lpad((i / 10)::text, 7, '0'),
               {UNITS_RESTOCKED - plan.pairs}
                 + CASE WHEN i % {HELD_EVERY} = 0 THEN 0 ELSE {LAST_RESTOCK} END,
               CASE WHEN i % {HELD_EVERY} = 0 THEN 1 ELSE 0 END,
               CASE WHEN i = ANY({gap}) THEN {k + 2} ELSE {k} END
        FROM generate_series(1, {v}) AS i
        """
    )
    say(f"variants: {v:,} rows in {time.perf_counter() - started:.1f}s")
    for version in range(1, k + 1):
        if version == 1:
            kind, d_on_hand, d_reserved, reference = "'RESTOCK'", "100", "0", "'delivery-' || i"
        elif version < k and version % 2 == 0:
            kind, d_on_hand, d_reserved = "'RESERVE'", "0", "1"
            reference = f"'o-' || i || '-{version}'"
        elif version < k:
            kind, d_on_hand, d_reserved = "'SALE'", "-1", "-1"
            reference = f"'o-' || i || '-{version - 1}'"
        else:
            held = f"i % {HELD_EVERY} = 0"
            kind = f"CASE WHEN {held} THEN 'RESERVE' ELSE 'RESTOCK' END"
            d_on_hand = f"CASE WHEN {held} THEN 0 ELSE {LAST_RESTOCK} END"
            d_reserved = f"CASE WHEN {held} THEN 1 ELSE 0 END"
            reference = f"CASE WHEN {held} THEN 'hold-' || i ELSE 'delivery-' || i END"
        sales_before = max(0, (version - 1) // 2) if version < k else plan.pairs
        reserved_after = (
            "1" if version < k and version % 2 == 0
            else f"CASE WHEN i % {HELD_EVERY} = 0 THEN 1 ELSE 0 END" if version == k
            else "0"
        )
        on_hand_after = (
            f"{UNITS_RESTOCKED - plan.pairs} + CASE WHEN i % {HELD_EVERY} = 0 THEN 0 "
            f"ELSE {LAST_RESTOCK} END"
            if version == k
            else str(UNITS_RESTOCKED - sales_before)
        )
        version_sql = (
            f"CASE WHEN i = ANY({gap}) THEN {k + 2} ELSE {k} END" if version == k else str(version)
        )
        step = time.perf_counter()
        await conn.execute(
            f"""
            INSERT INTO audit_log (
                variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
                reserved_after, version, reason, reference, source_event_source,
                source_event_id, actor, created_at
            )
            SELECT 'v' || lpad(i::text, 8, '0'), {kind}, {d_on_hand}, {d_reserved},
                   {on_hand_after}, {reserved_after}, {version_sql}, NULL, {reference},
                   'order-service', md5(i::text || '-{version}'), 'order-service',
                   timestamptz '2026-01-01' + interval '1 minute' * ({version} * {v} + i)
            FROM generate_series(1, {v}) AS i
            """
        )
        say(f"audit_log version {version}/{k}: {v:,} rows in {time.perf_counter() - step:.1f}s")
    step = time.perf_counter()
    await conn.execute(index)
    say(f"{index} built in {time.perf_counter() - step:.1f}s")

    step = time.perf_counter()
    await conn.execute(
        f"""
        INSERT INTO orders (order_id, phase, expires_at, payment)
        SELECT 'hold-' || i, 'RESERVED', timestamptz '2100-01-01', NULL
        FROM generate_series({HELD_EVERY}, {v}, {HELD_EVERY}) AS i
        UNION ALL
        SELECT 'sale-' || j, 'CONFIRMED', NULL, 'SUCCEEDED'
        FROM generate_series(1, {plan.finished_orders}) AS j
        """
    )
    await conn.execute(
        f"""
        INSERT INTO order_lines (order_id, variant_id, quantity)
        SELECT 'hold-' || i, 'v' || lpad(i::text, 8, '0'), 1
        FROM generate_series({HELD_EVERY}, {v}, {HELD_EVERY}) AS i
        UNION ALL
        SELECT 'sale-' || j, 'v' || lpad((1 + j % {v})::text, 8, '0'), 1
        FROM generate_series(1, {plan.finished_orders}) AS j
        """
    )
    say(f"orders and lines in {time.perf_counter() - step:.1f}s")

    # The planted discrepancies, behind the service's back.
    await conn.execute(
        f"UPDATE variants SET on_hand = on_hand + 7 WHERE variant_id = ANY({_ids(plan.ledger)})"
    )
    await conn.execute(
        f"UPDATE variants SET reserved = reserved + 1 WHERE variant_id = ANY({_ids(plan.reserved)})"
    )
    await conn.execute(
        f"UPDATE variants SET version = version + 1 WHERE variant_id = ANY({_ids(plan.version)})"
    )
    await conn.execute(f"DELETE FROM variants WHERE variant_id = ANY({_ids(plan.deleted)})")
    await conn.execute("ALTER TABLE variants DROP CONSTRAINT reserved_within_on_hand")
    await conn.execute(
        f"UPDATE variants SET on_hand = 0 WHERE variant_id = ANY({_ids(plan.bounds)})"
    )
    # Back for new rows; the planted one stays (NOT VALID: existing rows are not checked).
    await conn.execute(
        "ALTER TABLE variants ADD CONSTRAINT reserved_within_on_hand "
        "CHECK (reserved >= 0 AND reserved <= on_hand) NOT VALID"
    )
    step = time.perf_counter()
    await conn.execute("VACUUM ANALYZE")
    say(f"VACUUM ANALYZE in {time.perf_counter() - step:.1f}s")
    say(f"generated in {time.perf_counter() - started:.1f}s")


#: After the full runs, one variant in this many gets one more version (a RESTOCK of 1),
#: which the next run from the checkpoints reads.
CHANGED_EVERY = 100


async def append_changes(url: str, plan: Plan) -> int:
    """One more version, as the service writes it (row and audit row together), for one
    variant in CHANGED_EVERY, the planted ones left alone: their discrepancies stay as
    planned. Answers how many variants changed."""
    planted = sorted(
        {*plan.ledger, *plan.reserved, *plan.version, *plan.log_gap, *plan.deleted, *plan.bounds}
    )
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(
            await conn.fetchval(
                f"""
                WITH moved AS (
                    UPDATE variants SET on_hand = on_hand + 1, version = version + 1
                    WHERE substr(variant_id, 2)::bigint % {CHANGED_EVERY} = 0
                      AND NOT (variant_id = ANY({_ids(planted)}))
                    RETURNING variant_id, on_hand, reserved, version
                ),
                logged AS (
                    INSERT INTO audit_log (
                        variant_id, change_type, delta_on_hand, delta_reserved,
                        on_hand_after, reserved_after, version, reference, actor
                    )
                    SELECT variant_id, 'RESTOCK', 1, 0, on_hand, reserved, version,
                           'late-delivery', 'bench'
                    FROM moved
                    RETURNING 1
                )
                SELECT count(*) FROM logged
                """
            )
        )
    finally:
        await conn.close()


def _ids(numbers: list[int]) -> str:
    return "ARRAY[" + ",".join(f"'{variant_id(i)}'" for i in numbers) + "]::text[]"


# ------------------------------------------------------------------ measurement


async def sizes(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        """
        SELECT c.relname AS name, c.reltuples::bigint AS rows,
               pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
               pg_total_relation_size(c.oid) AS total
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r'
          AND c.relname IN ('variants', 'audit_log', 'orders', 'order_lines')
        ORDER BY c.relname
        """
    )
    found = {r["name"]: {k: int(r[k]) for k in ("rows", "heap", "indexes", "total")} for r in rows}
    for r in await conn.fetch(
        """
        SELECT i.relname AS name, pg_relation_size(i.oid) AS size
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relname IN ('variants', 'audit_log', 'orders', 'order_lines')
        ORDER BY i.relname
        """
    ):
        found.setdefault("index " + r["name"], {})["heap"] = int(r["size"])
    return found


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_walk(child))
    return found


#: The statement as first written: the audit log read by a sequential scan into a hash
#: aggregate of every variant. Measured beside the index-ordered one for comparison.
HASH_AGGREGATE_FORM = re.sub(
    r"FROM \(SELECT variant_id, version, delta_on_hand FROM audit_log ORDER BY variant_id\) AS log",
    "FROM audit_log",
    str(reconciliation_sql.FIND_DISCREPANCIES),
)


async def explain(
    conn: asyncpg.Connection, work_mem: str | None, statement: str | None = None
) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the reconciliation statement; the plan's figures."""
    label = "as written" if statement is None else "hash aggregate (the first form)"
    statement = statement or str(reconciliation_sql.FIND_DISCREPANCIES)
    # Rolled back: the statement moves the checkpoints, and each plan is to start alike.
    transaction = conn.transaction()
    await transaction.start()
    try:
        if work_mem is not None:
            await conn.execute(f"SET LOCAL work_mem = '{work_mem}'")
        used = await conn.fetchval("SHOW work_mem")
        [document] = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}")
        )
    finally:
        await transaction.rollback()
    plan = document["Plan"]
    nodes = _walk(plan)
    memory = [
        {
            "node": n["Node Type"] + (f" ({n['Strategy']})" if "Strategy" in n else ""),
            "rows": n.get("Actual Rows"),
            "peak_kb": n.get("Peak Memory Usage"),
            "disk_kb": n.get("Disk Usage"),
            "batches": n.get("HashAgg Batches", n.get("Hash Batches")),
            "workers": n.get("Workers Launched"),
        }
        for n in nodes
        if "Peak Memory Usage" in n or "Disk Usage" in n or "Workers Launched" in n
    ]
    return {
        "statement": label,
        "work_mem": used,
        "seconds": document["Execution Time"] / 1000,
        "planning_ms": document["Planning Time"],
        "shared_hit_blocks": plan.get("Shared Hit Blocks"),
        "shared_read_blocks": plan.get("Shared Read Blocks"),
        "temp_written_blocks": plan.get("Temp Written Blocks"),
        "temp_written_bytes": (plan.get("Temp Written Blocks") or 0) * 8192,
        "jit_ms": round(document.get("JIT", {}).get("Timing", {}).get("Total", 0.0)),
        "memory": memory,
        "text": "\n".join(_render(plan)),
    }


def _render(node: dict[str, Any], depth: int = 0) -> list[str]:
    """The plan as EXPLAIN ANALYZE's text would show it, one line a node, shortened."""
    name = node["Node Type"]
    for key in ("Strategy", "Join Type", "Relation Name", "Index Name", "CTE Name"):
        if key in node and not (key == "Strategy" and node[key] == "Plain"):
            name += f" {node[key]}"
    figures = [
        f"rows={node.get('Actual Rows')}",
        f"loops={node.get('Actual Loops')}",
        f"time={node.get('Actual Total Time', 0):.0f}ms",
    ]
    for key, label in (
        ("Peak Memory Usage", "peak_kB"), ("Disk Usage", "disk_kB"),
        ("HashAgg Batches", "batches"), ("Hash Batches", "batches"),
        ("Workers Launched", "workers"), ("Sort Method", "sort"),
        ("Shared Read Blocks", "read"), ("Temp Written Blocks", "temp_written"),
    ):
        if node.get(key):
            figures.append(f"{label}={node[key]}")
    lines = ["  " * depth + ("-> " if depth else "") + name + "  " + " ".join(figures)]
    for child in node.get("Plans", []):
        lines.extend(_render(child, depth + 1))
    return lines


async def settings_of(conn: asyncpg.Connection) -> dict[str, str]:
    names = [
        "server_version", "shared_buffers", "work_mem", "hash_mem_multiplier",
        "max_parallel_workers_per_gather", "jit",
    ]
    return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}


# ------------------------------------------------------------------ the run


@contextlib.asynccontextmanager
async def server(database_url: str | None) -> AsyncIterator[str]:
    if database_url is not None:
        yield database_url
        return
    from service.devstack.servers import EmbeddedPostgres

    postgres = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stock-reconcile-bench-")) / "pg", delete_on_stop=True
    )
    url = await asyncio.to_thread(postgres.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(postgres.stop)


async def run(
    plan: Plan, database_url: str | None, keep: bool, repeat: int, compare: bool, say: Any
) -> dict[str, Any]:
    async with server(database_url) as server_url:
        stack = Stack(server_url, bootstrap="")
        url = await fresh_database(stack, "reconcile")
        say(f"database: {url.split('?')[0]}")
        try:
            return await _measure(plan, url, repeat, compare, say)
        finally:
            if keep:
                say(f"kept: {url}")
            else:
                await drop_database(stack, url)


async def _measure(
    plan: Plan, url: str, repeat: int, compare: bool, say: Any
) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        generation = time.perf_counter()
        await generate(conn, plan, say)
        generation = time.perf_counter() - generation
        server_settings = await settings_of(conn)
        table_sizes = await sizes(conn)
        audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
        variant_rows = await conn.fetchval("SELECT count(*) FROM variants")
        assert str(reconciliation_sql.FIND_DISCREPANCIES) != HASH_AGGREGATE_FORM
        plans = [await explain(conn, reconciliation_sql.WORK_MEM)]
        if server_settings["work_mem"] != reconciliation_sql.WORK_MEM:
            plans.append(await explain(conn, None))
        if compare:
            for work_mem in ("256MB", None):
                plans.append(await explain(conn, work_mem, HASH_AGGREGATE_FORM))
    finally:
        await conn.close()

    engine = create_engine(url, pool_size=1)
    settings = isolated_settings(f"bench-{uuid.uuid4().hex[:6]}", database_url=url)
    expected = plan.expected()
    # Over every run: each must find exactly the planted discrepancies.
    missed: set[tuple[str, str, int, int]] = set()
    unexpected: set[tuple[str, str, int, int]] = set()

    async def timed(label: str, *, full: bool) -> tuple[float, ReconciliationReport]:
        started = time.perf_counter()
        report = await reconcile(engine, settings, "bench", full=full)
        seconds = time.perf_counter() - started
        say(f"reconcile({label}): {seconds:.2f}s, {len(report.discrepancies)} discrepancies")
        found = {(d.variant_id, d.kind.value, d.expected, d.actual) for d in report.discrepancies}
        missed.update(expected - found)
        unexpected.update(found - expected)
        return seconds, report

    try:
        # Read whole: the first run of a database, and `stock reconcile --full`.
        timings: list[float] = []
        for _ in range(repeat):
            seconds, report = await timed("full=True", full=True)
            timings.append(seconds)
        # From the checkpoints the full runs left: with nothing new, then after one
        # more version of one variant in a hundred (CHANGED_EVERY).
        quiet = [(await timed("from the checkpoints", full=False))[0] for _ in range(repeat)]
        changed = await append_changes(url, plan)
        after_changes, last = await timed(f"after {changed:,} changes", full=False)
    finally:
        await engine.dispose()
    seconds = statistics.median(timings)
    return {
        "command": "python -m bench.reconcile_scale " + " ".join(sys.argv[1:]),
        "variants": int(variant_rows),
        "audit_rows": int(audit_rows),
        "generation_seconds": round(generation, 1),
        "server": server_settings,
        "sizes": table_sizes,
        "plans": plans,
        "reconcile": {
            "seconds": round(seconds, 3),
            "runs": [round(t, 3) for t in timings],
            "audit_rows_per_second": round(audit_rows / seconds),
            "variants_per_second": round(variant_rows / seconds),
            "checked_variants": report.checked_variants,
            "discrepancies": len(report.discrepancies),
        },
        "since_checkpoints": {
            "nothing_new_seconds": round(statistics.median(quiet), 3),
            "nothing_new_runs": [round(t, 3) for t in quiet],
            "changed_variants": changed,
            "after_changes_seconds": round(after_changes, 3),
            "discrepancies": len(last.discrepancies),
        },
        "planted": len(expected),
        "missed": sorted(missed),
        "unexpected": sorted(unexpected),
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:,.0f} MB"


def print_report(result: dict[str, Any]) -> None:
    print(f"\n$ {result['command']}")
    print(
        f"{result['variants']:,} variants, {result['audit_rows']:,} audit rows "
        f"(generated in {result['generation_seconds']}s)"
    )
    print("server: " + ", ".join(f"{k}={v}" for k, v in result["server"].items()))
    print("sizes:")
    for name, size in result["sizes"].items():
        if name.startswith("index "):
            print(f"  {name:<40} {_mb(size['heap'])}")
        else:
            print(
                f"  {name:<40} {size['rows']:>12,} rows  heap {_mb(size['heap'])}, "
                f"indexes {_mb(size['indexes'])}, total {_mb(size['total'])}"
            )
    for plan in result["plans"]:
        print(
            f"\nEXPLAIN ANALYZE, {plan['statement']}, work_mem={plan['work_mem']}: "
            f"{plan['seconds']:.2f}s, "
            f"shared hit {plan['shared_hit_blocks']} read {plan['shared_read_blocks']} blocks, "
            f"temp written {_mb(plan['temp_written_bytes'])}, JIT {plan['jit_ms']} ms"
        )
        for node in plan["memory"]:
            print(
                f"  {node['node']:<28} rows={node['rows']} peak={node['peak_kb']} kB "
                f"disk={node['disk_kb']} kB batches={node['batches']} workers={node['workers']}"
            )
        print(re.sub(r"^", "    ", plan["text"], flags=re.M))
    r = result["reconcile"]
    print(
        f"\nreconcile(): median {r['seconds']}s of {r['runs']} "
        f"for {r['checked_variants']:,} variants "
        f"({r['variants_per_second']:,} variants/s, {r['audit_rows_per_second']:,} audit rows/s), "
        f"{r['discrepancies']} discrepancies; planted {result['planted']}, "
        f"missed {len(result['missed'])}, unexpected {len(result['unexpected'])}"
    )
    c = result["since_checkpoints"]
    print(
        f"reconcile() from the checkpoints: median {c['nothing_new_seconds']}s of "
        f"{c['nothing_new_runs']} with nothing new; {c['after_changes_seconds']}s after "
        f"{c['changed_variants']:,} variants changed ({c['discrepancies']} discrepancies)"
    )
    for row in result["missed"]:
        print(f"  missed: {row}")
    for row in result["unexpected"]:
        print(f"  unexpected: {row}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reconcile_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument(
        "--audit-per-variant", type=int, default=20, help="audit rows per variant (even, >= 4)"
    )
    parser.add_argument(
        "--finished-orders", type=int, default=None,
        help="CONFIRMED orders with one line each (default: as many as variants)",
    )
    parser.add_argument("--plant", type=int, default=3, help="discrepancies planted per kind")
    parser.add_argument(
        "--database-url", help="a PostgreSQL server (its maintenance database's URL); "
        "default: an embedded one for the run"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed reconcile() runs (the median is reported)"
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--no-compare", dest="compare", action="store_false",
        help="skip the EXPLAIN ANALYZE of the hash-aggregate form (for comparison)",
    )
    args = parser.parse_args(argv)
    k = args.audit_per_variant
    if k < 4 or k % 2:
        parser.error("--audit-per-variant must be even and at least 4")
    if args.variants < 100 * max(args.plant, 1):
        parser.error("--variants must be at least 100 per planted discrepancy")
    plan = Plan(
        variants=args.variants,
        per_variant=k,
        finished_orders=args.variants if args.finished_orders is None else args.finished_orders,
        plant=args.plant,
    )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = asyncio.run(
        run(plan, args.database_url, args.keep, max(args.repeat, 1), args.compare, say)
    )
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0 if not result["missed"] and not result["unexpected"] else 1


if __name__ == "__main__":
    sys.exit(main())
