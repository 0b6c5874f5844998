"""Retention: `stock prune` and the daily `prune` job delete what no rule needs any more.

Every table is pruned the same way: in batches of `STOCK_RETENTION_BATCH_SIZE` rows,
oldest first from an index, each batch its own short transaction (a lock wait of
more than a few seconds is given up and the batch retried), the next batch starting
where the last one ended (keyset), so no statement scans what earlier batches deleted
and nothing holds a lock for longer than one batch. After each batch the prune rests
`STOCK_RETENTION_SLEEP_COEFFICIENT` times as long as the batch took, so workers go on
consuming meanwhile at their usual pace, not only between batches.
The cut-off is taken from the database's clock, so every worker agrees on it.

What is kept, and why (the defaults; docs/design.md, "Retention", says more):

- `processed_events` (consumed event ids, and HTTP idempotency keys): 8 days, longer
  than the input topics' Kafka retention (7 days by default). Every event Kafka can
  still redeliver (a rebalance, a crash before the offset commit, a rewound group)
  is then still known, so its redelivery is a no-op. An event older than the
  retention is applied again if it ever comes back: the state table absorbs most such
  repeats (a repeated checkout or payment of an order that still exists changes
  nothing), but not all (a repeated payment of a RETURNED order answers
  CONFIRM_FAILED once more; for an order pruned as well, it is a new order).
- `dead_letters` (the claim of a bad record by its Kafka position): 30 days. Past it,
  a redelivered bad record would be dead-lettered a second time; by then Kafka has
  long dropped it. The copies on the DLQ topic are Kafka's to keep.
- `orders` and their `order_lines`, counted from the order's last change:
  - RESERVED and PENDING: never. A RESERVED order holds stock (the sweeper ends it);
    a PENDING one remembers a payment or a cancellation until its checkout arrives.
  - REJECTED, CONFIRM_FAILED, RETURNED: 30 days. No event moves their stock any more;
    a late payment is answered CONFIRM_FAILED while they are kept.
  - RELEASED, EXPIRED: 30 days. A late `payment.succeeded` takes their stock again
    (CONFIRMED) while they are kept. A payment that succeeds that long after the hold
    ended is past any card authorisation window (7 days at most for most schemes) and
    any consumer lag (the Kafka retention); once the order is gone such a payment is
    remembered as a PENDING order and not answered.
  - CONFIRMED: 365 days, its own setting. A cancellation returns the stock of a sale
    (RETURNED) for as long as the order is kept; a year covers the return windows of
    most shops. After that a cancellation is remembered (PENDING) and returns nothing:
    the goods, if they come back, are restocked by hand.
  All of them stay longer than the Kafka retention, so an order's own events can
  never outlive it on the topic.
- `outbox`: published rows after `STOCK_OUTBOX_RETENTION_HOURS` (the relay purges them
  too; prune does it in batches and reports it). Unpublished rows are never deleted.
- `audit_log`: never. It is append-only (the database refuses deletes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics
from service.adapters.database import retry_transient
from service.adapters.tables import FINISHED_PHASES
from service.settings import Settings

log = logging.getLogger(__name__)

#: A finished phase -> the setting (days) that keeps its orders.
ORDER_RETENTION_SETTINGS: dict[str, str] = {
    "REJECTED": "retention_orders_days",
    "CONFIRM_FAILED": "retention_orders_days",
    "RETURNED": "retention_orders_days",
    "RELEASED": "retention_orders_days",
    "EXPIRED": "retention_orders_days",
    "CONFIRMED": "retention_confirmed_orders_days",
}
assert set(ORDER_RETENTION_SETTINGS) == set(FINISHED_PHASES)

#: No batch waits long for a lock, nor runs away: either is a transient error, retried.
_BATCH_LIMITS = ("SET LOCAL lock_timeout = '5s'", "SET LOCAL statement_timeout = '60s'")
#: How long a batch waits out a database outage before the prune gives up (and fails).
_GIVE_UP_AFTER_SECONDS = 60.0
#: The keyset's start: before any row.
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)

# The oldest rows first from the timestamp's index, from where the last batch ended;
# deleted by their physical address (ctid) in the same statement: one round trip.
_DELETE_PROCESSED_EVENTS = text(
    """
    WITH gone AS (
        DELETE FROM processed_events
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM processed_events
            WHERE processed_at >= :after AND processed_at < :cutoff
            ORDER BY processed_at LIMIT :limit
        )) AND processed_at < :cutoff
        RETURNING processed_at
    )
    SELECT count(*) AS deleted, max(processed_at) AS last FROM gone
    """
)
_DELETE_DEAD_LETTERS = text(
    """
    WITH gone AS (
        DELETE FROM dead_letters
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM dead_letters
            WHERE dead_lettered_at >= :after AND dead_lettered_at < :cutoff
            ORDER BY dead_lettered_at LIMIT :limit
        )) AND dead_lettered_at < :cutoff
        RETURNING dead_lettered_at
    )
    SELECT count(*) AS deleted, max(dead_lettered_at) AS last FROM gone
    """
)


def _lock_finished_orders(phase: str) -> Any:
    """Orders of one finished phase, oldest first, locked. SKIP LOCKED: an order a
    worker is changing right now is left for the next prune, and this never waits
    (nor deadlocks) on the hot path. The phase is written into the statement (it is
    one of ours) so the planner can use the partial index `orders_finished_updated_at`."""
    if phase not in ORDER_RETENTION_SETTINGS:
        raise ValueError(f"not a finished phase: {phase!r}")
    return text(
        f"""
        SELECT order_id, updated_at FROM orders
        WHERE phase = '{phase}' AND updated_at >= :after AND updated_at < :cutoff
        ORDER BY updated_at LIMIT :limit
        FOR UPDATE SKIP LOCKED
        """
    )


_DELETE_ORDER_LINES = text("DELETE FROM order_lines WHERE order_id = ANY(CAST(:ids AS text[]))")
_DELETE_ORDERS = text("DELETE FROM orders WHERE order_id = ANY(CAST(:ids AS text[]))")

# The outbox by id, a window at a time: the relay publishes in id order, so published
# rows lead. The scan stops at the first window created wholly after the cut-off
# (nothing beyond it can have been published before it).
_DELETE_OUTBOX = text(
    """
    WITH scanned AS (
        SELECT id, created_at, published_at FROM outbox
        WHERE id > :after ORDER BY id LIMIT :limit
    ), gone AS (
        DELETE FROM outbox AS o USING scanned AS s
        WHERE o.id = s.id AND s.published_at < :cutoff
        RETURNING o.id
    )
    SELECT (SELECT count(*) FROM gone) AS deleted,
           (SELECT count(*) FROM scanned) AS scanned,
           (SELECT max(id) FROM scanned) AS last,
           (SELECT coalesce(bool_and(created_at >= :cutoff), true) FROM scanned) AS past
    """
)

_COUNT_PROCESSED_EVENTS = text(
    "SELECT count(*) FROM processed_events WHERE processed_at < :cutoff"
)
_COUNT_DEAD_LETTERS = text("SELECT count(*) FROM dead_letters WHERE dead_lettered_at < :cutoff")
_COUNT_OUTBOX = text("SELECT count(*) FROM outbox WHERE published_at < :cutoff")


def _count_finished_orders(phase: str) -> Any:
    if phase not in ORDER_RETENTION_SETTINGS:
        raise ValueError(f"not a finished phase: {phase!r}")
    return text(
        f"""
        SELECT count(*) AS orders, coalesce(sum(
            (SELECT count(*) FROM order_lines AS l WHERE l.order_id = o.order_id)
        ), 0) AS lines
        FROM orders AS o WHERE phase = '{phase}' AND updated_at < :cutoff
        """
    )


@dataclass
class TablePrune:
    """What one table lost (or would lose, in a dry run)."""

    table: str
    #: None: kept for ever (its setting is 0).
    retention: timedelta | None
    cutoff: datetime | None
    deleted: int = 0
    #: Transactions it took (a dry run takes none).
    batches: int = 0
    #: Orders only: per finished phase, its retention, cut-off and rows.
    phases: dict[str, TablePrune] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "retentionDays": None
            if self.retention is None
            else round(self.retention / timedelta(days=1), 6),
            "cutoff": None if self.cutoff is None else self.cutoff.isoformat(),
            "deleted": self.deleted,
            "batches": self.batches,
        }
        if self.phases:
            answer["phases"] = {
                phase: {k: v for k, v in part.as_json().items() if k != "batches"}
                for phase, part in self.phases.items()
            }
        return answer


@dataclass
class PruneReport:
    dry_run: bool
    batch_size: int
    started_at: datetime
    finished_at: datetime | None = None
    tables: dict[str, TablePrune] = field(default_factory=dict)

    @property
    def deleted(self) -> int:
        return sum(table.deleted for table in self.tables.values())

    @property
    def batches(self) -> int:
        return sum(table.batches for table in self.tables.values())

    def as_json(self) -> dict[str, Any]:
        """`stock prune --json`, and the `prune` job's detail in job_runs."""
        return {
            "dryRun": self.dry_run,
            "batchSize": self.batch_size,
            "startedAt": self.started_at.isoformat(),
            "finishedAt": None if self.finished_at is None else self.finished_at.isoformat(),
            "deleted": self.deleted,
            "batches": self.batches,
            "tables": {name: table.as_json() for name, table in self.tables.items()},
        }

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        parts = ", ".join(f"{table.deleted} {name}" for name, table in self.tables.items())
        return f"{verb} {parts}"


def _retention(days: float) -> timedelta | None:
    return None if days <= 0 else timedelta(days=days)


def _table(name: str, retention: timedelta | None, now: datetime) -> TablePrune:
    return TablePrune(name, retention, None if retention is None else now - retention)


class Pruner:
    """One prune over the database of `engine`, with `settings`' retentions."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        batch_size: int | None = None,
        rest: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.batch_size = batch_size or settings.retention_batch_size
        self.sleep_coefficient = settings.retention_sleep_coefficient
        #: How the prune rests between batches (a test records the rests instead).
        self.rest = rest

    async def run(self, *, dry_run: bool = False) -> PruneReport:
        clock = time.monotonic()
        now = await self._database_now()
        report = PruneReport(dry_run=dry_run, batch_size=self.batch_size, started_at=now)
        s = self.settings
        outbox_hours = s.outbox_retention_hours
        simple: dict[str, tuple[timedelta | None, Any]] = {
            "processed_events": (
                _retention(s.retention_processed_events_days),
                _DELETE_PROCESSED_EVENTS,
            ),
            "dead_letters": (_retention(s.retention_dead_letters_days), _DELETE_DEAD_LETTERS),
        }
        for name, (retention, statement) in simple.items():
            table = report.tables[name] = _table(name, retention, now)
            if table.cutoff is not None:
                await (self._count(table) if dry_run else self._by_timestamp(table, statement))
        orders = report.tables["orders"] = TablePrune("orders", None, None)
        lines = report.tables["order_lines"] = TablePrune("order_lines", None, None)
        await self._orders(orders, lines, now, dry_run)
        outbox = report.tables["outbox"] = _table(
            "outbox", None if outbox_hours <= 0 else timedelta(hours=outbox_hours), now
        )
        if outbox.cutoff is not None:
            await (self._count(outbox) if dry_run else self._outbox(outbox))
        report.finished_at = await self._database_now()
        log.info(
            "prune: %s (%d batches, %.1fs)",
            report.summary(),
            report.batches,
            time.monotonic() - clock,
        )
        return report

    # ------------------------------------------------------------------ tables

    async def _by_timestamp(self, table: TablePrune, statement: Any) -> None:
        after = _BEGINNING
        while True:
            params = {"after": after, "cutoff": table.cutoff, "limit": self.batch_size}

            async def batch(conn: AsyncConnection, params: dict[str, Any] = params) -> Any:
                return (await conn.execute(statement, params)).one()

            row = await self._batch(table.table, batch)
            self._count_batch(table, row.deleted)
            if row.deleted < self.batch_size:
                return
            after = row.last

    async def _orders(
        self, table: TablePrune, lines: TablePrune, now: datetime, dry_run: bool
    ) -> None:
        for phase in FINISHED_PHASES:
            retention = _retention(getattr(self.settings, ORDER_RETENTION_SETTINGS[phase]))
            part = table.phases[phase] = _table(phase, retention, now)
            if part.cutoff is None:
                continue
            if dry_run:
                async with self.engine.connect() as conn:
                    row = (
                        await conn.execute(_count_finished_orders(phase), {"cutoff": part.cutoff})
                    ).one()
                part.deleted = row.orders
                lines.deleted += row.lines
            else:
                await self._orders_of_phase(phase, part, lines)
            table.deleted += part.deleted
            table.batches += part.batches

    async def _orders_of_phase(self, phase: str, part: TablePrune, lines: TablePrune) -> None:
        lock = _lock_finished_orders(phase)
        after = _BEGINNING
        while True:
            params = {"after": after, "cutoff": part.cutoff, "limit": self.batch_size}

            async def batch(
                conn: AsyncConnection, params: dict[str, Any] = params
            ) -> tuple[int, int, datetime | None]:
                rows = (await conn.execute(lock, params)).all()
                if not rows:
                    return 0, 0, None
                ids = [row.order_id for row in rows]
                gone_lines = (await conn.execute(_DELETE_ORDER_LINES, {"ids": ids})).rowcount
                gone = (await conn.execute(_DELETE_ORDERS, {"ids": ids})).rowcount
                return gone, gone_lines, max(row.updated_at for row in rows)

            gone, gone_lines, last = await self._batch("orders", batch)
            part.batches += 1
            part.deleted += gone
            lines.deleted += gone_lines
            metrics.PRUNED_ROWS.labels("orders").inc(gone)
            metrics.PRUNED_ROWS.labels("order_lines").inc(gone_lines)
            if last is None or gone < self.batch_size:
                return
            after = last

    async def _outbox(self, table: TablePrune) -> None:
        after = 0
        while True:
            params = {"after": after, "cutoff": table.cutoff, "limit": self.batch_size}

            async def batch(conn: AsyncConnection, params: dict[str, Any] = params) -> Any:
                return (await conn.execute(_DELETE_OUTBOX, params)).one()

            row = await self._batch("outbox", batch)
            self._count_batch(table, row.deleted)
            if row.scanned < self.batch_size or row.past:
                return
            after = row.last

    async def _count(self, table: TablePrune) -> None:
        statement = {
            "processed_events": _COUNT_PROCESSED_EVENTS,
            "dead_letters": _COUNT_DEAD_LETTERS,
            "outbox": _COUNT_OUTBOX,
        }[table.table]
        async with self.engine.connect() as conn:
            table.deleted = int(
                (await conn.execute(statement, {"cutoff": table.cutoff})).scalar_one()
            )

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _count_batch(table: TablePrune, deleted: int) -> None:
        table.batches += 1
        table.deleted += deleted
        metrics.PRUNED_ROWS.labels(table.table).inc(deleted)

    async def _batch(self, what: str, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
        """`work` in a transaction of its own, retried whole on a transient error."""

        async def attempt() -> Any:
            async with self.engine.begin() as conn:
                for limit in _BATCH_LIMITS:
                    await conn.execute(text(limit))
                return await work(conn)

        started = time.monotonic()
        result = await retry_transient(
            attempt,
            what=f"prune {what}",
            initial_backoff=self.settings.retry_initial_backoff_seconds,
            max_backoff=self.settings.retry_max_backoff_seconds,
            give_up_after=_GIVE_UP_AFTER_SECONDS,
        )
        # Rest in proportion to the batch's own time: a prune then takes at most its
        # share of the database (and of the worker's event loop), however many rows
        # are due, and the hot path keeps up meanwhile (docs/design.md, "Retention").
        await self.rest(self.pause_after(time.monotonic() - started))
        return result

    def pause_after(self, batch_seconds: float) -> float:
        """How long to rest after a batch that took `batch_seconds`."""
        return max(batch_seconds, 0.0) * self.sleep_coefficient

    async def _database_now(self) -> datetime:
        async def attempt() -> datetime:
            async with self.engine.connect() as conn:
                now: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
                return now

        return await retry_transient(
            attempt,
            what="prune",
            initial_backoff=self.settings.retry_initial_backoff_seconds,
            max_backoff=self.settings.retry_max_backoff_seconds,
            give_up_after=_GIVE_UP_AFTER_SECONDS,
        )


async def prune(
    engine: AsyncEngine,
    settings: Settings,
    *,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> PruneReport:
    """Delete (or, with `dry_run`, count) every row past its retention."""
    return await Pruner(engine, settings, batch_size=batch_size).run(dry_run=dry_run)
