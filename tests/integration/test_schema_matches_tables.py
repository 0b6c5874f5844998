"""The migrations and service/adapters/tables.py describe the same schema.

The migrations are the truth in the database; tables.py is what the code reads. If
they drift, this fails with the difference (Alembic's autogenerate comparison).
"""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.adapters.tables import metadata

pytestmark = pytest.mark.integration


async def test_migrated_database_matches_the_table_definitions(engine) -> None:
    def differences(sync_conn):
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    async with engine.connect() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []
