"""Stock counts (stocktakes): open, record, apply, cancel, read; HTTP and CLI alike.

Every write is one step of the unit of work: the count's row is locked first, then
(through `StockTransaction.lock`) its variants in key order; `service.domain.counts`
decides; the ledger's adjustments, their audit rows (with the actor), `stock.changed`
and any `stock.anomaly` are written by the unit of work in the same transaction as
the count's own rows. A refusal raises inside the transaction: nothing is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters import count_store
from service.application.commands import API_SOURCE
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.domain import counts
from service.domain.counts import StockCount
from service.domain.errors import UnknownCount, UnknownProduct
from service.domain.model import EventRef
from service.settings import Settings

#: A count command's step in the unit of work.
Step = Callable[[StockTransaction], Awaitable[StockCount]]


def new_count_id() -> str:
    return f"cnt-{uuid.uuid4()}"


class StockCounts:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        source: str = API_SOURCE,
        give_up_after: float | None = None,
    ) -> None:
        """`source`: the entrypoint, the `source` of the audit rows an apply writes;
        `give_up_after`: as `StockCommands` (HTTP answers 503 after it, the CLI waits)."""
        self.engine = engine
        self.settings = settings
        self.source = source
        self.give_up_after = give_up_after
        self.unit_of_work = UnitOfWork(engine, settings)

    async def open(
        self,
        *,
        actor: str,
        variant_ids: Sequence[str] = (),
        product_id: str | None = None,
        blind: bool = False,
        reason: str | None = None,
    ) -> StockCount:
        """A new count of `variant_ids`, or of every variant of `product_id` (one or
        the other), each snapshotted under its row lock."""
        if bool(variant_ids) == (product_id is not None):
            raise ValueError("a count is opened for variant ids or for a product, not both")
        count_id = new_count_id()

        async def step(tx: StockTransaction) -> StockCount:
            wanted = list(variant_ids)
            if product_id is not None:
                wanted = await count_store.variants_of_product(tx.conn, product_id)
                if not wanted:
                    raise UnknownProduct(product_id)
            ledger = await tx.lock(variant_ids=wanted, create_orders=False)
            count = counts.open_count(
                count_id,
                ledger.variants,
                wanted,
                open_elsewhere=await count_store.open_counts_of(tx.conn, wanted),
                actor=actor,
                now=tx.now,
                blind=blind,
                reason=reason,
                product_id=product_id,
            )
            await count_store.insert_count(tx.conn, count)
            return count

        return await self._run(step, "count-open", actor)

    async def record(
        self, count_id: str, lines: Sequence[tuple[str, int]], *, actor: str
    ) -> StockCount:
        """Record `(variant, counted)` lines (a recount overwrites), each with the
        variant's `on_hand` of this moment as its `expected`."""

        async def step(tx: StockTransaction) -> StockCount:
            count = await self._locked(tx, count_id)
            recorded = counts.check_recordable(count, lines)
            ledger = await tx.lock(variant_ids=list(recorded), create_orders=False)
            changed = counts.record_lines(
                count,
                recorded,
                ledger.variants,
                tolerances=await count_store.tolerances(tx.conn, list(recorded)),
                default_tolerance=Decimal(str(self.settings.count_tolerance_percent)),
                actor=actor,
                now=tx.now,
            )
            await count_store.write_lines(tx.conn, count_id, changed)
            return count

        return await self._run(step, "count-record", actor)

    async def apply(self, count_id: str, *, actor: str, approve: bool = False) -> StockCount:
        """Apply the counted lines, all or nothing. `approve`: lines out of tolerance
        are approved (the caller has checked that `actor` may: an admin). Applying an
        applied count answers it as it is."""

        async def step(tx: StockTransaction) -> StockCount:
            count = await self._locked(tx, count_id)
            to_apply = counts.variants_to_apply(count)
            if not to_apply:
                return count
            ledger = await tx.lock(variant_ids=to_apply, create_orders=False)
            applied = counts.apply_count(
                count,
                ledger,
                approve=approve,
                actor=actor,
                now=tx.now,
                cause=EventRef(self.source, f"count:{count_id}"),
            )
            await count_store.write_lines(tx.conn, count_id, applied)
            await count_store.write_status(tx.conn, count)
            return count

        return await self._run(step, "count-apply", actor)

    async def cancel(self, count_id: str, *, actor: str) -> StockCount:
        async def step(tx: StockTransaction) -> StockCount:
            count = await self._locked(tx, count_id)
            if counts.cancel_count(count, actor=actor, now=tx.now):
                await count_store.write_status(tx.conn, count)
            return count

        return await self._run(step, "count-cancel", actor)

    async def get(self, count_id: str) -> StockCount:
        """The count as it stands; its row and lines read in one snapshot."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            count = await count_store.load_count(conn, count_id)
        if count is None:
            raise UnknownCount(count_id)
        return count

    async def _locked(self, tx: StockTransaction, count_id: str) -> StockCount:
        count = await count_store.load_count(tx.conn, count_id, lock=True)
        if count is None:
            raise UnknownCount(count_id)
        return count

    async def _run(self, step: Step, what: str, actor: str) -> StockCount:
        return await self.unit_of_work.run(
            step, what=what, give_up_after=self.give_up_after, actor=actor
        )

