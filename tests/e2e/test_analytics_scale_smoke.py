"""`python -m bench.analytics_scale` in miniature: 2,000 variants and 40,000 audit rows
generated the way the full measurement does (docs/analytics.md, "Scale"), every case
measured, and the three sources of abcClass giving the same figures for the same call."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def test_the_analytics_benchmark_runs_in_miniature(postgres_admin_url) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.analytics_scale",
        "--variants", "2000", "--repeat", "1", "--write-batches", "1", "--json",
        "--database-url", postgres_admin_url,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    assert (result["variants"], result["audit_rows"]) == (2000, 40_000)
    assert result["rollup"]["first_run"]["rows"] == 2000 * 9  # 9 sales a variant, a day each
    calls = result["calls"]
    ninety = [calls[k] for k in calls if k.startswith("one product, 90 days (abcClass")]
    assert [c["abc_source"] for c in ninety] == ["tiers", "rollup", "log"]
    assert ninety[0]["sample"] == ninety[1]["sample"] == ninety[2]["sample"]
    assert all(c["variants"] == 10 for k, c in calls.items() if k.startswith("one product"))
    assert set(result["write_cost"]["us_per_row"]) == {
        "without audit_log_sales",
        "with audit_log_sales (the schema)",
        "with audit_log_sales and (variant_id, created_at)",
    }
