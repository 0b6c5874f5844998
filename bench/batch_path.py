"""Rough probe of the batch path alone: BatchConsumer.handle on an embedded PostgreSQL.

No Kafka, no relay: how many consumed events a second one process turns into
committed stock changes, audit rows and outbox rows. Not the benchmark (issue #4
builds `make bench`); a quick figure to notice a gross regression.

    .venv/bin/python bench/batch_path.py [orders] [batch_size]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.adapters.database import create_engine
from service.adapters.migrate import upgrade_to_head
from service.application.admin import StockAdmin
from service.application.consume import BatchConsumer
from service.devstack.servers import EmbeddedPostgres
from service.settings import Settings
from tests.support.records import checkout, paid, record_of


async def probe(url: str, orders: int, batch_size: int) -> None:
    settings = Settings(database_url=url)
    engine = create_engine(url)
    admin = StockAdmin(engine, settings)
    for i in range(1000):
        await admin.restock(f"v{i}", 1_000_000, product_id=f"p{i % 100}")
    records = [
        record_of(settings, checkout(f"o{i}", {f"v{i % 1000}": 1, f"v{(i * 7 + 1) % 1000}": 2}))
        for i in range(orders)
    ]
    records += [record_of(settings, paid(f"o{i}")) for i in range(0, orders, 2)]
    consumer = BatchConsumer(engine, settings)
    started = time.perf_counter()
    for start in range(0, len(records), batch_size):
        await consumer.handle(records[start : start + batch_size])
    elapsed = time.perf_counter() - started
    await engine.dispose()
    print(
        f"{len(records)} events ({orders} two-line checkouts, {orders // 2} payments) "
        f"in batches of {batch_size}: {elapsed:.2f}s = {len(records) / elapsed:,.0f} events/s"
    )


def main() -> None:
    orders = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch_size = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stock-probe-")) / "pg", delete_on_stop=True
    )
    url = server.start()
    try:
        upgrade_to_head(url)
        asyncio.run(probe(url, orders, batch_size))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
