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

from service import metrics
from service.adapters import stock_store
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.settings import Settings

log = logging.getLogger(__name__)


class HoldSweeper:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.unit_of_work = UnitOfWork(engine, settings)
        self.expired_total = 0

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Expire every hold due at `now`, a batch per transaction. Returns how many."""
        now = now or datetime.now(UTC)
        limit = self.settings.sweep_batch_size
        total = 0
        broken: set[str] = set()
        while True:
            try:
                taken, expired = await self._sweep_batch(now, limit, broken)
            except Exception:
                # One order we cannot expire must not keep every other hold in place.
                log.exception("expiry batch failed; expiring its orders one at a time")
                taken, expired = await self._sweep_one_at_a_time(now, limit, broken)
            total += expired
            if taken < limit:
                break
        self.expired_total += total
        metrics.HOLDS_EXPIRED.inc(total)
        return total

    async def _sweep_one_at_a_time(
        self, now: datetime, limit: int, broken: set[str]
    ) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            candidates = await stock_store.lock_expired_orders(conn, now, limit, broken)
            await conn.rollback()
        expired = 0
        for order_id in candidates:
            others = broken | (set(candidates) - {order_id})
            try:
                _, one = await self._sweep_batch(now, 1, others)
            except Exception:
                log.exception("cannot expire order %s; leaving it for an operator", order_id)
                broken.add(order_id)
            else:
                expired += one
        return len(candidates), expired

    async def _sweep_batch(self, now: datetime, limit: int, skip: set[str]) -> tuple[int, int]:
        """Expire up to `limit` due holds in one transaction: (orders taken, expired)."""

        async def step(tx: StockTransaction) -> tuple[int, int]:
            order_ids = await stock_store.lock_expired_orders(tx.conn, now, limit, skip)
            if not order_ids:
                return 0, 0
            ledger = await tx.lock(order_ids, create_orders=False)
            return len(order_ids), sum(1 for order_id in order_ids if ledger.expire(order_id, now))

        taken, expired = await self.unit_of_work.run(step, what="expiry sweep", now=now)
        if expired:
            log.info("expired %d holds", expired)
        return taken, expired

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("expiry sweep failed; trying again next interval")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
