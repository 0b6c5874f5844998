"""bench/span_breakdown.py, the source of the report's latency breakdown, in miniature:
a few traced checkouts through the real batch consumer and database give every phase."""

from __future__ import annotations

import pytest

from bench.span_breakdown import span_breakdown
from service import tracing

pytestmark = pytest.mark.integration


async def test_every_phase_has_its_durations(database_url) -> None:
    breakdown = await span_breakdown(database_url, orders=40, batch_size=20)
    assert not tracing.ENABLED  # put back as it was
    for name in (*tracing.PHASES, "process batch"):
        assert breakdown[name]["count"] == 2
    assert breakdown["process order.checkout"]["count"] == 40
    for row in breakdown.values():
        assert 0 <= row["p50_ms"] <= row["p99_ms"]
