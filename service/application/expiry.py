"""The hold sweeper: releases reservations whose `expires_at` has passed (EXPIRED).

Several workers may sweep at once: each takes expired orders with
`FOR UPDATE SKIP LOCKED`, so an order is expired by exactly one of them, and the
ledger re-checks the phase under the lock.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters import stock_store
from service.adapters.database import retry_transient
from service.domain.ledger import StockLedger
from service.outbound import EventWriter
from service.settings import Settings

log = logging.getLogger(__name__)


class HoldSweeper:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.writer = EventWriter(settings)
        self.expired_total = 0

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Expire every hold due at `now`, a batch per transaction. Returns how many."""
        total = 0
        while True:
            expired = await retry_transient(
                lambda: self._sweep_batch(now or datetime.now(UTC)),
                what="expiry sweep",
                initial_backoff=self.settings.retry_initial_backoff_seconds,
                max_backoff=self.settings.retry_max_backoff_seconds,
            )
            total += expired
            if expired < self.settings.sweep_batch_size:
                break
        self.expired_total += total
        return total

    async def _sweep_batch(self, now: datetime) -> int:
        async with self.engine.begin() as conn:
            order_ids = await stock_store.lock_expired_orders(
                conn, now, self.settings.sweep_batch_size
            )
            if not order_ids:
                return 0
            state = stock_store.LoadedState()
            await stock_store.lock_orders(conn, order_ids, state, create=False)
            await stock_store.lock_variants(
                conn, {v for order in state.orders.values() for v in order.lines}, state
            )
            ledger = StockLedger(
                state.variants,
                state.orders,
                default_low_stock_threshold=self.settings.low_stock_threshold,
            )
            expired = sum(1 for order_id in order_ids if ledger.expire(order_id, now))
            await stock_store.write_ledger(conn, ledger, state)
            await stock_store.append_outbox(
                conn, self.writer.effects(ledger.changes, ledger.alerts, ledger.outcomes, now)
            )
        if expired:
            log.info("expired %d holds", expired)
        return expired

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("expiry sweep failed; trying again next interval")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
