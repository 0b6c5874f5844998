"""`python -m bench.reconcile_scale` in miniature: 10,000 variants and 200,000 audit
rows generated the way the full measurement does, and reconciliation finds exactly the
planted discrepancies, no more (docs/reconciliation.md has the full-size figures)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def test_the_scale_benchmark_finds_exactly_what_it_planted(postgres_admin_url) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.reconcile_scale",
        "--variants", "10000", "--plant", "2", "--json", "--database-url", postgres_admin_url,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, err.decode()[-3000:]
    result = json.loads(out)
    assert result["variants"] == 10000 - 2  # two planted deletions
    assert result["audit_rows"] == 200_000
    # Per planted variant: one discrepancy, two for a deleted row and for a bound broken.
    assert result["planted"] == 2 * (1 + 1 + 1 + 1 + 2 + 2)
    assert result["missed"] == [] and result["unexpected"] == []
    assert result["reconcile"]["discrepancies"] == result["planted"]
    assert result["reconcile"]["checked_variants"] == 10000 - 2
    # From the checkpoints the full runs left, before and after more changes: the same.
    assert result["since_checkpoints"]["discrepancies"] == result["planted"]
    assert result["since_checkpoints"]["changed_variants"] > 0
    [with_its_work_mem, *_] = result["plans"]
    assert with_its_work_mem["temp_written_bytes"] == 0  # the hash tables stay in memory
