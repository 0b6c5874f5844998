"""What the dashboard's overview costs at scale: its reads over 1,000,000 variants.

    python -m bench.dashboard_scale [--variants N] [--repeat N]

Into a fresh embedded PostgreSQL (the project's migrations), N variants (default
1,000,000) with one in twenty at or below the default low-stock threshold of 5, made
set-based with generate_series, then ANALYZE. Each read of the overview
(service/application/dashboard_reads.py) is run once to warm up and then `--repeat`
times (default 7): the median and the fastest, in milliseconds. The machine is shared
and its timings noisy: compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from service.adapters.database import asyncpg_dsn, create_engine
from service.adapters.migrate import upgrade_to_head
from service.application.dashboard_reads import DashboardReads
from service.devstack.servers import EmbeddedPostgres
from service.settings import Settings

_VARIANTS = """
    INSERT INTO variants (variant_id, product_id, on_hand, reserved, version)
    SELECT 'v-' || lpad(i::text, 8, '0'), 'p-' || (i / 4),
           CASE WHEN i % 20 = 0 THEN i % 5 ELSE 10 + i % 90 END, 0, 1
    FROM generate_series(1, $1::int) AS i
"""


async def measure(url: str, variants: int, repeat: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(_VARIANTS, variants)
        await conn.execute("ANALYZE variants")
    finally:
        await conn.close()
    engine = create_engine(url, pool_size=2)
    reads = DashboardReads(engine, Settings(database_url=url))
    try:
        for name, call in (
            ("attention (at most 200 rows)", reads.attention),
            ("latest anomalies", reads.latest_anomalies),
            ("open counts", reads.open_counts),
        ):
            await call()
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                await call()
                times.append((time.perf_counter() - started) * 1000)
            print(
                f"{name}: median {statistics.median(times):.1f} ms, "
                f"fastest {min(times):.1f} ms ({variants:,} variants, {repeat} runs)"
            )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_scale")
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="dashboard-scale-")) / "pg", delete_on_stop=True
    )
    url = server.start()
    try:
        upgrade_to_head(url)
        asyncio.run(measure(url, args.variants, args.repeat))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
