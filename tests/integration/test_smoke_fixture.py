"""The fixtures themselves: a migrated database per test, with the schema's guards."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

pytestmark = pytest.mark.integration


async def test_database_is_migrated_and_empty(engine) -> None:
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM variants"))).scalar() == 0
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()


async def test_check_constraint_refuses_an_oversell_even_without_the_worker(engine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO variants (variant_id, product_id, on_hand) VALUES ('v', 'p', 3)")
        )
    with pytest.raises(DBAPIError, match="reserved_within_on_hand"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE variants SET reserved = 4 WHERE variant_id = 'v'"))
    with pytest.raises(DBAPIError, match=r"on_hand_not_negative|reserved_within_on_hand"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE variants SET on_hand = -1 WHERE variant_id = 'v'"))


async def test_audit_log_is_append_only(engine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                   on_hand_after, reserved_after, version, actor)
                   VALUES ('v','RESTOCK',1,0,1,0,1,'test')"""
            )
        )
    for statement in ("UPDATE audit_log SET delta_on_hand = 5", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
