"""Engine creation from plain `postgresql://` URLs, and the small error hierarchy.

Driver errors are mapped to two kinds: transient (the database is away, a
deadlock or serialization conflict: retry the whole transaction after a backoff)
and everything else (a bug or bad data: never retried blindly).

An outage (the database unreachable, as opposed to a conflict that passes) is
logged once for the whole process when it starts, at most every 30 s while it
lasts, and once when it ends, with its length (`OutageLog`, `database_outage`),
however many batches, sweeps and requests are waiting it out.
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
#: SQLSTATEs that mean the server is away, not busy: connection exceptions (class 08),
#: shutdown and start-up (57P01-57P03), too many connections.
_UNREACHABLE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")
#: How often a line says an outage still lasts.
OUTAGE_REPEAT_SECONDS = 30.0


class OutageLog:
    """What an operator reads about one dependency being away: one warning when it
    goes, at most one every `repeat_every` seconds while it stays away (with the count
    of failed attempts), and one when it is back, with how long it was away.

    A failure is an outage only once failures have gone on for `confirm_after`
    seconds without a success between them: a pooled connection that died with the
    last outage, failing once before its retry succeeds, is not news.

    Not tied to a loop or a thread: `failed` and `recovered` only log and count.
    """

    def __init__(
        self,
        subject: str,
        *,
        down: str = "unreachable",
        up: str = "reachable again",
        repeat_every: float = OUTAGE_REPEAT_SECONDS,
        confirm_after: float = 1.0,
        attempts: str = "failed attempts",
        logger: logging.Logger | None = None,
    ) -> None:
        self.subject = subject
        self.down = down
        self.up = up
        self.repeat_every = repeat_every
        self.confirm_after = confirm_after
        self.attempts = attempts
        self.logger = logger or log
        #: time.monotonic() of the first failure of the outage; None while all is well
        #: (the outage may not be confirmed yet: see `is_out`).
        self.first_failure: float | None = None
        self.failures = 0
        self._confirmed = False
        self._said_at = 0.0

    @property
    def is_out(self) -> bool:
        """An outage has been declared (and not ended)."""
        return self._confirmed

    @property
    def since(self) -> float | None:
        """When the declared outage began (its first failure); None if there is none."""
        return self.first_failure if self._confirmed else None

    def failed(self, detail: str) -> None:
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
            self.failures = 0
        self.failures += 1
        if not self._confirmed:
            if now - self.first_failure < self.confirm_after:
                return
            self._confirmed = True
            self._said_at = now
            self.logger.warning(
                "%s is %s (%s); waiting for it (said again every %.0f s while it lasts)",
                self.subject,
                self.down,
                detail,
                self.repeat_every,
            )
            return
        if now - self._said_at >= self.repeat_every:
            self._said_at = now
            self.logger.warning(
                "%s is still %s after %.0f s (%d %s; last: %s)",
                self.subject,
                self.down,
                now - self.first_failure,
                self.failures,
                self.attempts,
                detail,
            )

    def recovered(self) -> float | None:
        """A success: ends the outage (says so, with its length). None if there was none."""
        first, confirmed = self.first_failure, self._confirmed
        self.first_failure = None
        self._confirmed = False
        if first is None or not confirmed:
            return None
        lasted = time.monotonic() - first
        self.logger.warning(
            "%s is %s after %.1f s (%d %s)",
            self.subject,
            self.up,
            lasted,
            self.failures,
            self.attempts,
        )
        return lasted


#: The process's one database (every engine of a process points at the same one).
database_outage = OutageLog("the database")


def database_address(url: str) -> str:
    """Where a `postgresql://` URL points, without credentials: `host:port`, or the
    socket directory of the socket form."""
    try:
        parsed = make_url(url)
    except Exception:
        return "(an unreadable URL)"
    socket_dir = parsed.query.get("host")
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0] if socket_dir else None
    if socket_dir and str(socket_dir).startswith("/"):
        return str(socket_dir)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def watch_database(url: str) -> OutageLog:
    """Name the process's database in its outage lines."""
    database_outage.subject = f"the database at {database_address(url)}"
    return database_outage


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


def is_unreachable(error: BaseException) -> bool:
    """A transient error that says the database is away (not a conflict, a busy
    pool or a slow statement): it counts towards an outage."""
    if isinstance(error, OSError):  # refused, reset, timed out (TimeoutError is one)
        return True
    if isinstance(error, sa_exc.TimeoutError):  # the pool is busy, not the server away
        return False
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        original: BaseException | None = getattr(error.orig, "__cause__", None) or error.orig
        return original is not None and original is not error and is_unreachable(original)
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", "") or ""
        return sqlstate.startswith(_UNREACHABLE_SQLSTATE_PREFIXES)
    return isinstance(
        error,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.CannotConnectNowError,
    )


def describe(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line logs."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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

    The database being unreachable is reported through `database_outage` (one line
    for the process, not one per waiting caller); a conflict that passes (deadlock,
    serialization, lock or statement timeout) is logged at its first and every 10th
    retry.
    """
    backoff = initial_backoff
    failures = 0
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            result = await attempt()
        except Exception as error:
            if not is_transient(error):
                raise
            if deadline is not None and time.monotonic() + backoff > deadline:
                raise TransientDatabaseError(f"{what}: database unavailable") from error
            failures += 1
            if is_unreachable(error):
                database_outage.failed(f"{what}: {describe(error)}")
                log_fn = log.debug
            else:
                log_fn = log.warning if failures == 1 or failures % 10 == 0 else log.debug
            log_fn("%s failed (%s); retry %d in %.1fs", what, describe(error), failures, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        else:
            if database_outage.first_failure is not None:
                database_outage.recovered()
            return result
