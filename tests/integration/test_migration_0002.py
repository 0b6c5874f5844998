"""Migration 0002 backfills the audit log's `actor` from what each row already says."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from service.adapters.migrate import alembic_config

pytestmark = pytest.mark.integration


async def test_existing_audit_rows_get_an_actor_and_the_log_stays_append_only(
    engine, database_url
) -> None:
    from alembic import command

    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0001")
    async with engine.begin() as conn:
        for version, source in enumerate(("shop-web", "stock-api", "stock-cli", None), start=1):
            await conn.execute(
                text(
                    "INSERT INTO audit_log (variant_id, change_type, delta_on_hand,"
                    " delta_reserved, on_hand_after, reserved_after, version,"
                    " source_event_source) VALUES ('v', 'RESTOCK', 1, 0, :n, 0, :n, :source)"
                ),
                {"n": version, "source": source},
            )
    await asyncio.to_thread(command.upgrade, config, "head")

    async with engine.connect() as conn:
        actors = (
            await conn.execute(text("SELECT actor FROM audit_log ORDER BY version"))
        ).scalars().all()
    assert actors == ["shop-web", "api:unknown", "cli:unknown", "stock-service"]
    async with engine.connect() as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(text("UPDATE audit_log SET actor = 'someone'"))
