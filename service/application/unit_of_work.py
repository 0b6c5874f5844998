"""The one transaction path of every stock change.

A consumed Kafka batch, an HTTP or CLI command and the expiry sweep each describe
what they decide in a `step`; this module runs it:

1. opens one PostgreSQL transaction;
2. `StockTransaction.lock` creates and locks the orders, then the variants, each in
   key order (two writers on the same rows queue, never deadlock), and hands back a
   `StockLedger` loaded with them;
3. the step lets the ledger (the pure domain) decide;
4. the ledger's changes, order states and audit rows are written back with set-based
   SQL, and its events (plus any the step adds, such as dead letters) are appended to
   the outbox, in the same transaction;
5. commits, or rolls everything back if anything raised.

A transient database error (connection lost, serialization failure, deadlock,
pool timeout) retries the whole step with a doubling backoff; any other error is
the caller's to handle. One policy, one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import tracing
from service.adapters import fast_publish, policy_store, stock_store
from service.adapters.database import retry_transient
from service.domain.ledger import StockLedger
from service.domain.model import Anomaly, EventRef, actor_of
from service.domain.replenishment import Reorder, reorder
from service.outbound import EventWriter, OutboxMessage
from service.settings import Settings

T = TypeVar("T")


class StockTransaction:
    """One attempt of a step: the open connection, and what the step locked."""

    def __init__(
        self, conn: AsyncConnection, settings: Settings, now: datetime, actor: str | None
    ) -> None:
        self.conn = conn
        #: The time this attempt decides at (holds that end before it are over).
        self.now = now
        #: Who asked, for the audit rows (None: each change's cause names its actor).
        self.actor = actor
        self._settings = settings
        self._state: stock_store.LoadedState | None = None
        self._ledger: StockLedger | None = None
        self._extra: list[OutboxMessage] = []
        self._anomalies: list[Anomaly] = []
        #: How many outbox messages the write-back appended (known once it has run).
        self.appended = 0
        #: Whether this process has a fast-path publisher for the reservation rows.
        self.fast = False
        #: The rows the write-back appended for it, handed over once the commit is done.
        self.fast_rows: list[fast_publish.FastRow] = []

    async def claim(self, refs: Collection[EventRef]) -> set[EventRef]:
        """Record these event ids as processed; returns the ones not seen before.

        In the same transaction as their effects, so an event is applied exactly once
        however often it is delivered or a step is retried."""
        with tracing.span("claim"):
            return await stock_store.claim_events(self.conn, refs)

    async def lock(
        self,
        order_ids: Collection[str] = (),
        variant_ids: Collection[str] = (),
        *,
        create_orders: bool = True,
    ) -> StockLedger:
        """Lock the orders (created PENDING if new and `create_orders`), then the
        variants they hold plus `variant_ids`, in key order; the ledger over them.

        Once per transaction: locking more later could break the key order."""
        if self._ledger is not None:
            raise RuntimeError("a stock transaction locks its rows once")
        state = stock_store.LoadedState()
        with tracing.span("lock"):
            await stock_store.lock_orders(
                self.conn, order_ids, state, create_missing=create_orders
            )
            held = {v for order in state.orders.values() for v in order.lines}
            await stock_store.lock_variants(self.conn, held.union(variant_ids), state)
        self._state = state
        self._ledger = StockLedger(
            state.variants,
            state.orders,
            default_low_stock_threshold=self._settings.low_stock_threshold,
            now=self.now,
        )
        return self._ledger

    def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Outbox messages the ledger does not make (dead letters)."""
        self._extra.extend(messages)

    def raise_anomalies(self, anomalies: Sequence[Anomaly]) -> None:
        """Anomalies found outside the ledger (reconciliation, the shrinkage job): kept
        in `anomalies` and published as `stock.anomaly`, like the ledger's own."""
        self._anomalies.extend(anomalies)

    async def _reorders(self, ledger: StockLedger) -> list[Reorder]:
        """The ledger's reorder crossings, with what their variants' policies suggest:
        one query, only in a transaction that crossed a reorder point."""
        if not ledger.reorders:
            return []
        policies = await policy_store.reorder_policies(
            self.conn, {alert.variant_id for alert in ledger.reorders}
        )
        return [
            reorder(
                alert.variant_id,
                alert.product_id,
                alert.available,
                alert.reorder_point,
                policies[alert.variant_id],
                self._settings.reorder_review_days,
            )
            for alert in ledger.reorders
        ]

    async def _write_back(self, writer: EventWriter) -> None:
        """The ledger's state and effects, and the extra messages, into the transaction."""
        messages: list[OutboxMessage] = []
        anomalies = list(self._anomalies)
        if self._ledger is not None and self._state is not None:
            await stock_store.write_ledger(self.conn, self._ledger, self._state, self.actor)
            ledger = self._ledger
            anomalies[:0] = ledger.anomalies
            messages = writer.effects(
                ledger.changes,
                ledger.alerts,
                ledger.outcomes,
                self.now,
                replenished=ledger.replenished,
                reorders=await self._reorders(ledger),
            )
        if anomalies:
            await stock_store.record_anomalies(
                self.conn, anomalies, self.actor or actor_of(None), self.now
            )
            messages.extend(writer.stock_anomaly(anomaly, self.now) for anomaly in anomalies)
        messages.extend(self._extra)
        self.fast_rows = await fast_publish.append_outbox(
            self.conn, messages, self._settings, fast=self.fast
        )
        self.appended = len(messages)


class UnitOfWork:
    """Runs steps in transactions on one engine, with the one retry policy."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.writer = EventWriter(settings)
        #: Where committed stock.reservation rows go at once (service/adapters/
        #: fast_publish.py); None: the process's installed one, if any.
        self.publisher: fast_publish.FastPublisher | None = None

    async def run(
        self,
        step: Callable[[StockTransaction], Awaitable[T]],
        *,
        what: str,
        now: datetime | None = None,
        give_up_after: float | None = None,
        before_commit: Callable[[], None] | None = None,
        actor: str | None = None,
    ) -> T:
        """Run `step` in one transaction, then write back and commit.

        `give_up_after`: seconds to wait out a database outage before raising
        `TransientDatabaseError` (an HTTP caller owes an answer); None waits as long as
        it takes (a Kafka batch must not be skipped). `before_commit` runs after the
        write-back, inside the transaction (the fault suite's crash point). `actor`:
        who asked (`api:<token name>`, `cli:<user>`), written on every audit row; None
        for Kafka events (their `source`) and the service's own jobs.
        """

        publisher = self._publisher()
        committed: list[StockTransaction] = []

        async def attempt() -> T:
            committed.clear()
            # tracing.transaction() exits after the commit: it ends the `commit` span.
            async with tracing.transaction() as traced, self.engine.begin() as conn:
                transaction = StockTransaction(
                    conn, self.settings, now or datetime.now(UTC), actor
                )
                transaction.fast = publisher is not None
                result = await step(transaction)
                with tracing.span("write"):
                    await transaction._write_back(self.writer)
                if before_commit is not None:
                    before_commit()
                traced.commit()
                committed.append(transaction)
            return result

        result = await retry_transient(
            attempt,
            what=what,
            initial_backoff=self.settings.retry_initial_backoff_seconds,
            max_backoff=self.settings.retry_max_backoff_seconds,
            give_up_after=give_up_after,
        )
        if publisher is not None and committed:
            publisher.hand_over(committed[0].fast_rows)  # committed: send them now
        return result

    def _publisher(self) -> fast_publish.FastPublisher | None:
        if not self.settings.outbox_fast_path:
            return None
        publisher = self.publisher or fast_publish.installed()
        return publisher if publisher is not None and publisher.accepting else None
