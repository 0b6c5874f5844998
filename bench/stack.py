"""What a benchmark run stands on: a PostgreSQL server, a broker, a fresh database per
measurement with the scenario's catalogue, and topics of its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer
from sqlalchemy.engine import make_url

from bench.workload import BenchEvent, Scenario
from service.adapters.database import asyncpg_dsn
from service.adapters.migrate import upgrade_to_head
from service.settings import Settings, isolated_settings


@dataclass(frozen=True)
class Stack:
    #: A URL to the server's maintenance database: benchmark databases are created beside it.
    server_url: str
    bootstrap: str
    #: Whether the run started the broker itself (an in-memory tansu), so a measurement
    #: may ask for one of its own (`broker_of_its_own`).
    owns_broker: bool = False
    #: The run's own processes, when it started them: the soak samples their CPU and memory.
    broker_pid: int | None = None
    postgres_pid: int | None = None


#: The run's own PostgreSQL, set as a server that takes thousands of transactions a
#: second is (docs/design.md, "Measuring the hot path"): initdb's 1 GB of WAL between
#: checkpoints made the soak's server checkpoint every 15-20 s, and after each
#: checkpoint the first change of every page writes the whole page to the WAL again.
LOAD_SERVER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "10min"}


@contextlib.contextmanager
def running_stack(database_url: str | None, bootstrap: str | None) -> Iterator[Stack]:
    """The given servers, or an embedded PostgreSQL and a tansu broker for the run."""
    from service.devstack.servers import EmbeddedPostgres, TansuBroker

    with contextlib.ExitStack() as cleanup:
        postgres_pid = broker_pid = None
        if database_url is None:
            postgres = EmbeddedPostgres(
                Path(tempfile.mkdtemp(prefix="stock-bench-")) / "pg", delete_on_stop=True
            )
            database_url = postgres.start()
            cleanup.callback(postgres.stop)
            postgres.configure(LOAD_SERVER_SETTINGS)
            postgres_pid = _postmaster_pid(postgres.data_dir)
        owns_broker = bootstrap is None
        if bootstrap is None:
            broker = TansuBroker()
            bootstrap = broker.start()
            cleanup.callback(broker.stop)
            broker_pid = broker.pid
        yield Stack(database_url, bootstrap, owns_broker, broker_pid, postgres_pid)


def _postmaster_pid(data_dir: Path) -> int | None:
    """The server's first process, from the first line of its `postmaster.pid`."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


@contextlib.contextmanager
def broker_of_its_own(stack: Stack) -> Iterator[Stack]:
    """The stack with a new, empty broker when the run started its own, else as it is.

    tansu keeps every record in memory and each fetch costs more the more record batches
    a partition holds (docs/design.md, "Why tansu slows"); Apache Kafka's do not. A
    latency measurement after the throughput scenarios would time tansu's history, not
    the worker, so it gets a broker holding only its own traffic."""
    if not stack.owns_broker:
        yield stack
        return
    from service.devstack.servers import TansuBroker

    broker = TansuBroker()
    bootstrap = broker.start()
    try:
        yield dataclasses.replace(stack, bootstrap=bootstrap)
    finally:
        broker.stop()


async def fresh_database(stack: Stack, label: str) -> str:
    """A new, migrated database beside the server's others; returns its URL.
    (The fault suite makes its databases here too.)"""
    name = f"stock_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
    admin = await asyncpg.connect(asyncpg_dsn(stack.server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(stack.server_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade_to_head, url)
    return url


async def drop_database(stack: Stack, url: str) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(asyncpg_dsn(stack.server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def load_catalogue(url: str, scenario: Scenario) -> None:
    """The scenario's variants, straight in (the benchmark measures orders, not
    restocks), each with the audit row a restock would have written (version 1): the
    log then adds up to the stock, and a reconciliation (the soak runs one every ten
    minutes) finds nothing, as in a shop, instead of 10,000 `ledger_mismatch`es."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            """
            WITH variant AS (
                INSERT INTO variants (variant_id, product_id, on_hand, version)
                SELECT 'var-' || lpad(i::text, 5, '0'), 'prod-' || (i / 10), $2, 1
                FROM generate_series(0, $1 - 1) AS i
                RETURNING variant_id, on_hand
            )
            INSERT INTO audit_log (
                variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
                reserved_after, version, reason, reference, actor
            )
            SELECT variant_id, 'RESTOCK', on_hand, 0, on_hand, 0, 1,
                   'bench catalogue', 'bench', 'bench'
            FROM variant
            """,
            scenario.variants,
            scenario.units_per_variant,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def bench_settings(url: str, stack: Stack, run: str) -> Settings:
    """Topics and group of their own per run, so runs never see each other's events."""
    prefix = f"bench-{run}"
    return isolated_settings(
        prefix,
        database_url=url,
        kafka_bootstrap_servers=stack.bootstrap,
        kafka_client_id=prefix,
        sweep_interval_seconds=1.0,
        # Maintenance jobs (a weekly reconciliation is due at once on a fresh database)
        # would land in the middle of a measurement.
        jobs_enabled=False,
    )


async def publish(
    bootstrap: str, events: list[BenchEvent], *, rate: float | None = None
) -> list[float]:
    """Publish in order, as fast as the broker takes them or at `rate` a second.
    Returns each event's send time (monotonic), for latency."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5 if rate is None else 0, enable_idempotence=False
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []
    try:
        started = loop.time()
        for n, event in enumerate(events):
            if rate is not None:
                due = started + n / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_at.append(time.monotonic())
            await producer.send(event.topic, event.value, key=event.key)
        await producer.flush()
    finally:
        await producer.stop()
    return sent_at
