"""Engine creation from plain `postgresql://` URLs, and the small error hierarchy.

Driver errors are mapped to two kinds: transient (the database is away, a
deadlock or serialization conflict: retry the whole transaction after a backoff)
and everything else (a bug or bad data: never retried blindly).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)
T = TypeVar("T")

#: SQLSTATE classes and codes worth retrying: connection loss, shutdown, conflicts.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53")
#: 57014: statement timeout or cancel (a batch queued behind a hot row's lock);
#: 25006: read-only transaction (connected to a standby during a failover).
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014", "25006"}


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` (any driver suffix) as SQLAlchemy's asyncpg URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """`postgresql://...` as asyncpg itself takes it (for LISTEN and raw connections)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(
    url: str, *, pool_size: int = 5, pool_timeout: float = 30.0
) -> AsyncEngine:
    """`pool_timeout`: how long to wait for a free connection; a wait that runs out
    is a transient error (the pool is busy, not broken)."""
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        # No pre-ping round trip per batch: a dead pooled connection fails as a
        # transient error, and the retry gets a fresh one.
    )


class TransientDatabaseError(Exception):
    """The database is unreachable or refused for a reason that passes: retry later."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TransientDatabaseError | OSError | asyncio.TimeoutError):
        return True
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(error, asyncpg.exceptions._base.DataError):
        return False  # a value the driver cannot encode: retrying never helps
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        original: BaseException | None = getattr(error.orig, "__cause__", None) or error.orig
        return original is not None and original is not error and is_transient(original)
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", "") or ""
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    return isinstance(
        error,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.CannotConnectNowError,
    )


async def retry_transient(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
    give_up_after: float | None = None,
) -> T:
    """Run `attempt` until it succeeds or fails for a non-transient reason.

    The database being down is waited for, not skipped: nothing is acknowledged
    to Kafka until the transaction that holds its effects has committed. A caller
    who must answer someone (HTTP) sets `give_up_after` seconds and then gets
    `TransientDatabaseError`.
    """
    backoff = initial_backoff
    failures = 0
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return await attempt()
        except Exception as error:
            if not is_transient(error):
                raise
            if deadline is not None and time.monotonic() + backoff > deadline:
                raise TransientDatabaseError(f"{what}: database unavailable") from error
            failures += 1
            log_fn = log.warning if failures == 1 or failures % 10 == 0 else log.debug
            log_fn(
                "%s failed (%s: %s); retry %d in %.1fs",
                what,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
                failures,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
