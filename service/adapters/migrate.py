"""`stock migrate`: Alembic upgrade to head, configured in code (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import retry_transient

#: service/migrations, shipped inside the wheel as package data (a checkout and an
#: installed wheel find it at the same place).
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Synchronous on purpose: Alembic's env.py runs its own event loop."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def is_known_revision(revision: str) -> bool:
    try:
        return ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(revision) is not None
    except CommandError:
        return False


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def schema_problem(engine: AsyncEngine) -> str | None:
    """Why this code cannot run on the database's schema, or None if it can.

    A schema migrated by a newer release (a rolling deploy, or a rollback of this
    one) is fine: migrations only ever add, so older code runs on a newer schema.
    """
    current = await current_revision(engine)
    head = head_revision()
    if current == head or (current is not None and not is_known_revision(current)):
        return None
    return (
        f"database schema is at {current or 'nothing'}, this release needs {head}: "
        "run `stock migrate` first"
    )


async def refuse_outdated_schema(engine: AsyncEngine, *, max_backoff: float = 5.0) -> None:
    """Exit if the schema is too old. A database that is down is waited for, so a
    worker restarted during an outage starts when it returns instead of crash-looping."""
    problem = await retry_transient(
        lambda: schema_problem(engine),
        what="schema check at start",
        max_backoff=max_backoff,
    )
    if problem is not None:
        raise SystemExit(problem)
