"""StockAdmin (restock, adjust, reads) and the `stock` CLI, on the real database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from stock_schemas.envelope import EventType

from service.adapters.database import asyncpg_dsn
from service.adapters.migrate import head_revision
from service.application.admin import StockAdmin
from service.domain.errors import CountBelowReserved, InvalidQuantity, UnknownVariant
from tests.support.invariants import invariant_violations
from tests.support.records import checkout
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_restock_creates_the_variant_and_audits_it(engine, settings) -> None:
    admin = StockAdmin(engine, settings)
    s = Scenario(engine, settings)
    change = await admin.restock("v1", 10, product_id="p1", reason="delivery", reference="po-7")
    assert (change.change_type.value, change.delta_on_hand, change.on_hand, change.version) == (
        "RESTOCK", 10, 10, 1
    )
    level = await admin.stock_level("v1")
    assert (level.product_id, level.on_hand, level.reserved, level.available, level.version) == (
        "p1", 10, 0, 10, 1
    )
    assert level.low_stock_threshold == settings.low_stock_threshold == 5
    [row] = await admin.audit_trail("v1")
    assert (row["change_type"], row["delta_on_hand"], row["delta_reserved"]) == ("RESTOCK", 10, 0)
    assert (row["on_hand_after"], row["reserved_after"], row["version"]) == (10, 0, 1)
    assert (row["reason"], row["reference"]) == ("delivery", "po-7")
    [published] = await s.outbox(settings.topic_stock_changed)
    assert published.key == b"v1"
    assert published.data == {
        "variant_id": "v1", "product_id": "p1", "on_hand": 10, "reserved": 0, "available": 10,
        "change_type": "RESTOCK", "delta_on_hand": 10, "delta_reserved": 0,
        "reference": "po-7", "version": 1,
    }
    # A second delivery adds to it; the product stays the one it was created with.
    await admin.restock("v1", 5)
    assert (await admin.stock_level("v1")).on_hand == 15
    assert [r["version"] for r in await admin.audit_trail("v1")] == [2, 1]
    # A variant without a product id is its own product.
    await admin.restock("solo", 1)
    assert (await admin.stock_level("solo")).product_id == "solo"
    assert await s.lows() == []  # restocking never crosses the threshold downwards
    assert await invariant_violations(engine) == []


@pytest.mark.parametrize("quantity", [0, -3])
async def test_restock_of_nothing_is_refused_and_creates_nothing(
    engine, settings, quantity: int
) -> None:
    admin = StockAdmin(engine, settings)
    with pytest.raises(InvalidQuantity):
        await admin.restock("new", quantity)
    with pytest.raises(UnknownVariant):
        await admin.stock_level("new")
    assert await Scenario(engine, settings).outbox_count() == 0


async def test_adjust_sets_on_hand_to_the_count_with_its_reason(engine, settings) -> None:
    admin = StockAdmin(engine, settings)
    s = Scenario(engine, settings)
    await admin.restock("v1", 10, product_id="p1")
    await s.deliver(checkout("o1", {"v1": 3}))
    change = await admin.adjust("v1", 7, reason="cycle count", reference="count-42")
    assert (change.delta_on_hand, change.delta_reserved, change.on_hand, change.reserved) == (
        -3, 0, 7, 3
    )
    level = await admin.stock_level("v1")
    assert (level.on_hand, level.reserved, level.available, level.version) == (7, 3, 4, 3)
    newest = (await admin.audit_trail("v1", limit=1))[0]
    assert (newest["change_type"], newest["delta_on_hand"], newest["reason"]) == (
        "ADJUSTMENT", -3, "cycle count"
    )
    assert newest["reference"] == "count-42"
    last = (await s.changes("v1"))[-1]
    assert (last["change_type"], last["on_hand"], last["available"], last["version"]) == (
        "ADJUSTMENT", 7, 4, 3
    )
    # available went 7 -> 4: across the default threshold of 5.
    [low] = await s.lows("v1")
    assert (low["available"], low["threshold"], low["out_of_stock"]) == (4, 5, False)
    # A count equal to what is there is still recorded.
    same = await admin.adjust("v1", 7, reason="recount")
    assert (same.delta_on_hand, same.version) == (0, 4)
    # Up again, then exactly down to what is reserved.
    await admin.adjust("v1", 20, reason="found a box")
    await admin.adjust("v1", 3, reason="damaged")
    assert (await admin.stock_level("v1")).available == 0
    assert await invariant_violations(engine) == []


async def test_adjust_below_reserved_is_refused_and_changes_nothing(engine, settings) -> None:
    admin = StockAdmin(engine, settings)
    s = Scenario(engine, settings)
    await admin.restock("v1", 10)
    await s.deliver(checkout("o1", {"v1": 6}))
    before = await s.outbox_count()
    with pytest.raises(CountBelowReserved) as refused:
        await admin.adjust("v1", 5, reason="count")
    assert (refused.value.counted, refused.value.reserved) == (5, 6)
    assert refused.value.code == "count_below_reserved"
    with pytest.raises(InvalidQuantity):
        await admin.adjust("v1", -1, reason="count")
    level = await admin.stock_level("v1")
    assert (level.on_hand, level.reserved, level.version) == (10, 6, 2)
    assert len(await admin.audit_trail("v1")) == 2
    assert await s.outbox_count() == before
    assert await invariant_violations(engine) == []


async def test_adjust_of_an_unknown_variant_is_refused_and_creates_nothing(
    engine, settings
) -> None:
    admin = StockAdmin(engine, settings)
    with pytest.raises(UnknownVariant) as refused:
        await admin.adjust("ghost", 3, reason="count")
    assert refused.value.code == "unknown_variant"
    with pytest.raises(UnknownVariant):
        await admin.stock_level("ghost")
    with pytest.raises(UnknownVariant):
        await admin.audit_trail("ghost")
    assert await Scenario(engine, settings).outbox_count() == 0


async def test_restock_beyond_what_the_database_can_count_is_an_invalid_quantity(
    engine, settings
) -> None:
    admin = StockAdmin(engine, settings)
    await admin.restock("v1", 10)
    with pytest.raises(InvalidQuantity):
        await admin.restock("v1", 10**20)
    assert (await admin.stock_level("v1")).on_hand == 10


# ---------------------------------------------------------------------- the CLI


async def _stock(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    env["STOCK_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.entrypoints.cli", *args,
        cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_restock_adjust_show_end_to_end(engine, settings, database_url) -> None:
    code, out, err = await _stock(
        database_url, "restock", "v9", "7", "--product", "p9", "--reason", "delivery"
    )
    assert code == 0, err
    assert "v9" in out and "on_hand=7" in out

    code, out, err = await _stock(database_url, "adjust", "v9", "5", "--reason", "count")
    assert code == 0, err
    assert "on_hand=5" in out

    code, out, err = await _stock(database_url, "show", "v9", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["variant_id"], shown["product_id"]) == ("v9", "p9")
    assert (shown["on_hand"], shown["reserved"], shown["available"], shown["version"]) == (
        5, 0, 5, 2
    )
    audit = shown["audit"]
    assert [row["version"] for row in audit] == [2, 1], "audit rows newest first"
    assert [row["change_type"] for row in audit] == ["ADJUSTMENT", "RESTOCK"]
    assert [row["delta_on_hand"] for row in audit] == [-2, 7]
    assert [row["reason"] for row in audit] == ["count", "delivery"]
    assert {row["reference"] for row in audit} == {"cli"}

    code, out, err = await _stock(database_url, "adjust", "nope", "1", "--reason", "x")
    assert code == 2
    assert "unknown_variant" in err
    code, out, err = await _stock(database_url, "show", "nope")
    assert code == 2 and "unknown_variant" in err

    # What the CLI did went through the same ledger and outbox as everything else
    # (on the default topic names: the CLI was given only the database).
    published = await Scenario(engine, settings).outbox(EventType.STOCK_CHANGED)
    assert [(p.key, p.data["change_type"], p.data["version"]) for p in published] == [
        (b"v9", "RESTOCK", 1), (b"v9", "ADJUSTMENT", 2)
    ]
    assert await invariant_violations(engine) == []


async def test_cli_migrate_brings_a_fresh_database_to_head_and_is_idempotent(
    postgres_admin_url: str,
) -> None:
    name = f"stock_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    fresh_url = make_url(postgres_admin_url).set(database=name).render_as_string(
        hide_password=False
    )
    try:
        for _ in range(2):
            code, out, err = await _stock(fresh_url, "migrate")
            assert code == 0, err
            assert "at head" in out
        conn = await asyncpg.connect(asyncpg_dsn(fresh_url))
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == (
                head_revision()
            )
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        finally:
            await conn.close()
        assert {"variants", "orders", "order_lines", "audit_log", "processed_events",
                "outbox"} <= tables
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_cli_writes_the_asyncapi_and_openapi_documents(tmp_path) -> None:
    code, out, err = await _stock("postgresql://unused@127.0.0.1:1/none", "docs", "asyncapi")
    assert code == 0, err
    document = json.loads(out)
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {"order.checkout", "payment.succeeded", "stock.changed", "stock.dlq"} <= addresses
    target = tmp_path / "openapi.json"
    code, _, err = await _stock("postgresql://unused@127.0.0.1:1/none", "docs", "openapi",
                                "-o", str(target))
    assert code == 0, err
    assert "/api/inventory/reserve" in json.loads(target.read_text())["paths"]
