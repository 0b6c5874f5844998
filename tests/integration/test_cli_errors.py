"""The `stock` CLI against the real database and broker when something is wrong
(issue 11, items 3 and 4), and the audit source of each entrypoint.

Every command runs as a real process: what is checked is what a user sees, its exit
status and its stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import asyncpg_dsn
from service.application.admin import CLI_SOURCE, StockAdmin
from service.application.commands import API_SOURCE, StockCommands
from service.devstack.catalogue import CATALOGUE_SOURCE, SAMPLE_CATALOGUE, load_sample_catalogue
from service.domain.requests import RestockRequest
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.invariants import invariant_violations

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STOCK = Path(sys.executable).parent / "stock"


async def stock(*args: str, **env: str) -> tuple[int, str, str]:
    """`stock ARGS` as a process of its own, with only the STOCK_* variables given."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    process = await asyncio.create_subprocess_exec(
        str(STOCK), *args,
        cwd=ROOT, env={**clean, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def said_in_two_lines(code: int, err: str, status: int = 2) -> list[str]:
    assert code == status, (code, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, err
    return lines


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture
async def empty_database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database with nothing in it (not even the stock tables)."""
    name = f"stock_empty_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(postgres_admin_url, name)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------- stock migrate


async def test_migrate_of_an_unreachable_server_says_so_in_two_lines() -> None:
    url = f"postgresql://stock:s3cret@127.0.0.1:{closed_port()}/stock"
    code, out, err = await stock("migrate", STOCK_DATABASE_URL=url)
    first, hint = said_in_two_lines(code, err)
    assert out == ""
    assert first.startswith("stock migrate: cannot reach postgresql://stock:***@127.0.0.1:")
    assert first.endswith("connection refused")
    assert "s3cret" not in err
    assert hint.strip().startswith("hint:") and "STOCK_DATABASE_URL" in hint


async def test_migrate_of_an_unknown_host_says_so() -> None:
    url = "postgresql://stock@no-such-host.invalid/stock"
    code, _, err = await stock("migrate", STOCK_DATABASE_URL=url)
    first, _ = said_in_two_lines(code, err)
    assert "unknown host 'no-such-host.invalid'" in first


async def test_migrate_of_a_missing_database_says_how_to_make_it(postgres_admin_url: str) -> None:
    name = f"stock_missing_{uuid.uuid4().hex[:8]}"
    url = _with_database(postgres_admin_url, name)
    code, _, err = await stock("migrate", STOCK_DATABASE_URL=url)
    first, hint = said_in_two_lines(code, err)
    assert f'database "{name}" does not exist' in first
    assert f"createdb {name}" in hint
    password = make_url(postgres_admin_url).password
    if password:
        assert str(password) not in err


@pytest.mark.parametrize("url", ["mysql://x", "not a url"])
async def test_migrate_of_a_url_that_is_not_postgresql_names_the_forms(url: str) -> None:
    code, _, err = await stock("migrate", STOCK_DATABASE_URL=url)
    [line] = said_in_two_lines(code, err)
    assert line.startswith(f"stock: STOCK_DATABASE_URL={url!r}: not a")
    assert "expected postgresql://user:password@host:5432/database" in line


async def test_a_migration_that_fails_is_status_1_without_a_traceback(
    empty_database_url: str,
) -> None:
    """A database stamped by a release this one does not know: Alembic cannot find the
    revision. Not a connection problem: status 1, the error in a line."""
    conn = await asyncpg.connect(asyncpg_dsn(empty_database_url))
    try:
        await conn.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('from_the_future')"
        )
    finally:
        await conn.close()
    code, _, err = await stock("migrate", STOCK_DATABASE_URL=empty_database_url)
    first, hint = said_in_two_lines(code, err, status=1)
    assert first.startswith("stock migrate: a migration of postgresql://")
    assert "from_the_future" in first
    assert "STOCK_LOG_LEVEL=DEBUG" in hint


async def test_show_of_a_database_without_the_schema_says_to_migrate(
    empty_database_url: str,
) -> None:
    code, _, err = await stock("show", "v1", STOCK_DATABASE_URL=empty_database_url)
    first, hint = said_in_two_lines(code, err)
    assert first.startswith("stock show: cannot use postgresql://")
    assert "stock migrate" in hint


# ----------------------------------------------------------------- ids and reasons


@pytest.mark.parametrize(
    "args",
    [
        ["restock", "x" * 300, "5"],
        ["restock", " v1", "5"],
        ["restock", "v1 ", "5"],
        ["restock", "v1", "5", "--product", "p1\n"],
        ["restock", "v1", "5", "--reason", "  "],
    ],
    ids=["300 characters", "leading space", "trailing space", "product newline", "blank reason"],
)
async def test_a_restock_the_rules_refuse_creates_nothing(
    engine: AsyncEngine, database_url: str, args: list[str]
) -> None:
    code, _, err = await stock(*args, STOCK_DATABASE_URL=database_url)
    assert code == 2 and "Traceback" not in err, err
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM variants"))).scalar() == 0


async def test_adjust_with_a_blank_reason_changes_nothing(
    engine: AsyncEngine, database_url: str, settings: Settings
) -> None:
    await StockAdmin(engine, settings).restock("v1", 5)
    for reason in ("", "   "):
        code, _, err = await stock(
            "adjust", "v1", "3", "--reason", reason, STOCK_DATABASE_URL=database_url
        )
        assert code == 2 and "blank" in err and "Traceback" not in err, err
    assert (await StockAdmin(engine, settings).stock_level("v1")).on_hand == 5


async def test_http_refuses_the_ids_the_cli_refuses(
    engine: AsyncEngine, settings: Settings
) -> None:
    api = settings.model_copy(update={"api_tokens": SecretStr("t")})
    app = create_app(ApiServices.build(api, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        for variant in (" v1", "v1 ", "x" * 201, "a\tb"):
            answer = await http.post(
                "/api/inventory/restock",
                json={"updates": [{"variantId": variant, "quantity": 1}]},
                headers={"Authorization": "Bearer t"},
            )
            assert answer.status_code == 422, (variant, answer.text)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM variants"))).scalar() == 0


# ------------------------------------------------------------------------ stock tail


async def _topics(bootstrap: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


async def test_tail_of_a_missing_topic_says_so_and_creates_nothing(kafka_bootstrap: str) -> None:
    topic = f"no.such.topic.{uuid.uuid4().hex[:8]}"
    code, out, err = await stock(
        "tail", topic, "--seconds", "3", STOCK_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap
    )
    first, hint = said_in_two_lines(code, err)
    assert out == ""
    assert first == f"stock tail: no topic {topic} on the broker at {kafka_bootstrap}"
    assert "nothing has been created" in hint
    assert topic not in await _topics(kafka_bootstrap)


async def test_tail_of_an_unreachable_broker_says_so() -> None:
    code, _, err = await stock(
        "tail", "stock.changed", STOCK_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port()}"
    )
    assert code == 2 and "Traceback" not in err, err
    assert "stock tail: cannot reach the broker at 127.0.0.1:" in err


# ------------------------------------------------------------------- audit sources


async def _sources(engine: AsyncEngine, variant_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT source_event_source FROM audit_log WHERE variant_id = :v ORDER BY id"),
            {"v": variant_id},
        )
        return [row[0] for row in rows]


async def test_each_entrypoint_writes_its_own_audit_source(
    engine: AsyncEngine, database_url: str, settings: Settings
) -> None:
    code, _, err = await stock("restock", "cli-v", "4", STOCK_DATABASE_URL=database_url)
    assert code == 0, err
    code, _, err = await stock(
        "adjust", "cli-v", "3", "--reason", "count", STOCK_DATABASE_URL=database_url
    )
    assert code == 0, err
    assert await _sources(engine, "cli-v") == [CLI_SOURCE, CLI_SOURCE] == ["stock-cli"] * 2

    api = settings.model_copy(update={"api_tokens": SecretStr("t")})
    app = create_app(ApiServices.build(api, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        answer = await http.post(
            "/api/inventory/restock",
            json={"updates": [{"variantId": "cli-v", "quantity": 1}]},
            headers={"Authorization": "Bearer t"},
        )
        assert answer.status_code == 200, answer.text
    assert (await _sources(engine, "cli-v"))[-1] == API_SOURCE == "stock-api"

    assert await load_sample_catalogue(StockAdmin(engine, settings)) == len(SAMPLE_CATALOGUE)
    _, variant, _ = SAMPLE_CATALOGUE[0]
    assert await _sources(engine, variant) == [CATALOGUE_SOURCE] == ["stock-dev-catalogue"]
    assert await invariant_violations(engine) == []


async def test_an_idempotency_key_is_claimed_per_entrypoint(
    engine: AsyncEngine, settings: Settings
) -> None:
    api_commands = StockCommands(engine, settings, give_up_after=5)
    cli = StockAdmin(engine, settings)
    request = RestockRequest("v1", 10, "p1", None, None, default_product_id="v1")
    [by_api] = await api_commands.restock([request], idempotency_key="delivery-1")
    [again] = await api_commands.restock([request], idempotency_key="delivery-1")
    assert again == by_api, "a retry through the same entrypoint is replayed"
    by_cli = await cli.restock("v1", 10, idempotency_key="delivery-1")
    assert by_cli == await cli.restock("v1", 10, idempotency_key="delivery-1")
    assert (by_api.on_hand, by_cli.on_hand) == (10, 20), "two entrypoints, two requests"
    async with engine.connect() as conn:
        claims = set(
            await conn.execute(
                text("SELECT source, event_id FROM processed_events ORDER BY source")
            )
        )
    assert claims == {("stock-api", "restock:delivery-1"), ("stock-cli", "restock:delivery-1")}
    assert await _sources(engine, "v1") == ["stock-api", "stock-cli"]
