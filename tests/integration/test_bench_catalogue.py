"""The benchmarks' catalogue (`bench.stack.load_catalogue`) on the real database: its
stock has the audit rows a restock would have written, so a reconciliation finds
nothing and the soak's invariants hold before any event (docs/design.md, "Measuring
the hot path"). Without them the soak's every reconciliation round flagged every
variant `ledger_mismatch` and published that many anomalies at once."""

from __future__ import annotations

import asyncpg
import pytest

from bench.soak import invariant_violations_sql
from bench.stack import load_catalogue
from bench.workload import Scenario
from service.adapters.database import asyncpg_dsn
from service.application.reconciliation import reconcile

pytestmark = pytest.mark.integration


async def test_the_bench_catalogue_reconciles_with_nothing_found(
    database_url, engine, settings
) -> None:
    await load_catalogue(database_url, Scenario("t", "t", 25, 40, 0))

    report = await reconcile(engine, settings, "test")

    assert report.checked_variants == 25
    assert not report.discrepancies
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await conn.fetchval("SELECT sum(on_hand) FROM variants") == 25 * 40
        assert await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE change_type = 'RESTOCK' AND version = 1"
        ) == 25
        assert await invariant_violations_sql(conn) == []
    finally:
        await conn.close()
