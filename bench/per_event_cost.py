"""CPU per event of the worker's per-record steps, each against what it replaced, in one run.

    .venv/bin/python -m bench.per_event_cost [--loops N]

- decode: `parse_record` (one `validate_json` into a typed envelope) against the long
  way it replaced (parse the JSON, validate the envelope, validate `data`);
- outbox events: EventWriter's JSON text for `stock.changed` / `stock.reservation`
  against its dict path (the one taken while tracing is on);
- the batch path on an embedded PostgreSQL (BatchConsumer.handle, no Kafka), on
  asyncio's loop and on uvloop, alternated.

CPU time of this process (`time.process_time`), the least of several repetitions:
on a machine shared with other work, wall time measures the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic_core import from_json
from stock_schemas.envelope import CloudEvent
from stock_schemas.events import CONSUMED_DATA_MODELS, ChangeType, ReservationStatus
from stock_schemas.kafka import parse_record

from service import tracing
from service.domain.model import ReservationOutcome, StockChange
from service.outbound import EventWriter
from service.settings import Settings
from tests.support.records import checkout, paid, record_of


def cpu_us(step: Callable[[], Any], loops: int, repeats: int = 8) -> float:
    """Least CPU microseconds per call over `repeats` runs of `loops` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(loops):
            step()
        best = min(best, (time.process_time() - started) / loops * 1e6)
    return best


def long_way(value: bytes) -> Any:
    """What parse_record did for a structured-mode record before the one-call path."""
    envelope = CloudEvent.model_validate(from_json(value.decode("utf-8")))
    return CONSUMED_DATA_MODELS[envelope.type].model_validate(envelope.data)


def decode_figures(loops: int) -> None:
    settings = Settings()
    for name, event in [
        ("checkout, 2 lines", checkout("o1", {"v1": 1, "v7": 2})),
        ("payment.succeeded", paid("o1")),
    ]:
        record = record_of(settings, event)
        value, headers = record.value, record.headers
        new = cpu_us(
            lambda v=value, h=headers: parse_record(v, h, models=CONSUMED_DATA_MODELS), loops
        )
        old = cpu_us(lambda v=value: long_way(v), loops)
        print(f"decode {name}: {old:.2f} -> {new:.2f} us (long way -> one validate_json)")


def outbox_figures(loops: int) -> None:
    writer = EventWriter(Settings())
    change = StockChange("v1", "p1", ChangeType.RESERVE, 0, 2, 100, 7, 42, "o1", None, None)
    outcome = ReservationOutcome("o1", ReservationStatus.RESERVED, (("v1", 1), ("v8", 2)))
    now = datetime.now(UTC)
    for name, step in [
        ("stock.changed", lambda: writer.stock_changed(change, now)),
        ("stock.reservation", lambda: writer.reservation(outcome, now)),
    ]:
        text = cpu_us(step, loops)
        tracing.ENABLED = True  # the dict path; no tracer is set up, so nothing is stamped
        try:
            via_dict = cpu_us(step, loops)
        finally:
            tracing.ENABLED = False
        print(f"outbox {name}: {via_dict:.2f} -> {text:.2f} us (dict path -> JSON text)")


async def _batch_path(url: str, tag: str, orders: int, restock: bool) -> float:
    from service.adapters.database import create_engine
    from service.application.admin import StockAdmin
    from service.application.consume import BatchConsumer

    settings = Settings(database_url=url)
    engine = create_engine(url)
    if restock:
        admin = StockAdmin(engine, settings)
        for i in range(1000):
            await admin.restock(f"v{i}", 1_000_000, product_id=f"p{i % 100}")
    records = [
        record_of(
            settings,
            checkout(f"{tag}o{i}", {f"v{i % 1000}": 1, f"v{(i * 7 + 1) % 1000}": 2}),
        )
        for i in range(orders)
    ]
    records += [record_of(settings, paid(f"{tag}o{i}")) for i in range(0, orders, 2)]
    consumer = BatchConsumer(engine, settings)
    started = time.process_time()
    for start in range(0, len(records), 500):
        await consumer.handle(records[start : start + 500])
    spent = time.process_time() - started
    await engine.dispose()
    return spent / len(records) * 1e6


def loop_figures(orders: int, rounds: int) -> None:
    import uvloop

    from service.adapters.migrate import upgrade_to_head
    from service.devstack.servers import EmbeddedPostgres

    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="stock-cost-")) / "pg", delete_on_stop=True
    )
    url = server.start()
    try:
        upgrade_to_head(url)
        asyncio.run(_batch_path(url, "warm", 200, restock=True))
        spent: dict[str, list[float]] = {"asyncio": [], "uvloop": []}
        for r in range(rounds):
            spent["asyncio"].append(asyncio.run(_batch_path(url, f"a{r}", orders, False)))
            spent["uvloop"].append(uvloop.run(_batch_path(url, f"u{r}", orders, False)))
        for name, figures in spent.items():
            shown = ", ".join(f"{f:.0f}" for f in figures)
            print(f"batch path on {name}: {shown} us CPU per event ({orders * 3 // 2} events)")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=4_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-database", action="store_true", help="skip the batch path")
    args = parser.parse_args()
    decode_figures(args.loops)
    outbox_figures(args.loops)
    if not args.no_database:
        loop_figures(args.orders, args.rounds)


if __name__ == "__main__":
    main()
