"""The worker starts only on a schema it can use: at head, or newer (a rolling deploy)."""

import pytest
from sqlalchemy import text

from service.entrypoints.worker import Worker

pytestmark = pytest.mark.integration


async def _check(settings) -> None:
    worker = Worker(settings)
    try:
        await worker._check_schema()
    finally:
        await worker.engine.dispose()


async def test_a_schema_at_head_is_accepted(settings) -> None:
    await _check(settings)


async def test_a_schema_from_a_newer_release_is_accepted(engine, settings) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    await _check(settings)


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(engine, settings) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))
    with pytest.raises(SystemExit, match="stock migrate"):
        await _check(settings)
