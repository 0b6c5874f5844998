"""Restock, adjust and read stock: the operations an admin (CLI, later HTTP) performs.

They go through the same ledger and the same transaction shape as consumed events:
the change, its audit row and its `stock.changed` commit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.events import ChangeType
from service.adapters import stock_store
from service.adapters.database import retry_transient
from service.adapters.tables import audit_log, variants
from service.domain.errors import UnknownVariant
from service.domain.ledger import StockLedger
from service.domain.model import EventRef, StockChange
from service.outbound import EventWriter
from service.settings import Settings

#: `source` of the claims and audit causes of admin changes.
ADMIN_SOURCE = "stock-admin"

_ENSURE_VARIANT = text(
    """
    INSERT INTO variants (variant_id, product_id, on_hand) VALUES (:variant_id, :product_id, 0)
    ON CONFLICT DO NOTHING
    """
)


@dataclass(frozen=True)
class StockLevel:
    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    available: int
    version: int
    low_stock_threshold: int


class StockAdmin:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.writer = EventWriter(settings)

    async def restock(
        self,
        variant_id: str,
        quantity: int,
        *,
        product_id: str | None = None,
        reason: str | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> StockChange:
        """Add received units. An unknown variant is created (at zero, then restocked)."""
        return await self._apply_once(
            "restock",
            variant_id,
            idempotency_key,
            lambda ledger, cause: ledger.restock(
                variant_id,
                quantity,
                product_id=product_id,
                reason=reason,
                reference=reference,
                cause=cause,
            ),
            create_as_product=product_id or variant_id,
        )

    async def adjust(
        self,
        variant_id: str,
        counted: int,
        *,
        reason: str,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> StockChange:
        """Set `on_hand` to a physical count, with the reason recorded in the audit log."""
        return await self._apply_once(
            "adjust",
            variant_id,
            idempotency_key,
            lambda ledger, cause: ledger.adjust(
                variant_id, counted, reason=reason, reference=reference, cause=cause
            ),
        )

    async def _apply_once(
        self,
        what: str,
        variant_id: str,
        idempotency_key: str | None,
        decide: Callable[[StockLedger, EventRef], StockChange],
        *,
        create_as_product: str | None = None,
    ) -> StockChange:
        """One admin change in one transaction, claimed like a consumed event.

        The claim makes the retry safe: if a COMMIT succeeded but its answer was lost
        with the connection, the retry finds the key taken and returns the change that
        committed instead of applying it twice. Callers that retry on their own (an
        HTTP client) pass their own key; otherwise each call gets a fresh one.
        """
        cause = EventRef(ADMIN_SOURCE, idempotency_key or str(uuid.uuid4()))

        async def attempt() -> StockChange:
            async with self.engine.begin() as conn:
                if not await stock_store.claim_events(conn, [cause]):
                    return await _change_caused_by(conn, cause)
                if create_as_product is not None:
                    await conn.execute(
                        _ENSURE_VARIANT,
                        {"variant_id": variant_id, "product_id": create_as_product},
                    )
                state = stock_store.LoadedState()
                await stock_store.lock_variants(conn, [variant_id], state)
                ledger = self._ledger(state)
                change = decide(ledger, cause)
                await self._write(conn, ledger, state)
                return change

        return await retry_transient(attempt, what=what)

    async def stock_level(self, variant_id: str) -> StockLevel:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(variants).where(variants.c.variant_id == variant_id))
            ).first()
        if row is None:
            raise UnknownVariant(variant_id)
        threshold = row.low_stock_threshold
        return StockLevel(
            variant_id=row.variant_id,
            product_id=row.product_id,
            on_hand=row.on_hand,
            reserved=row.reserved,
            available=row.on_hand - row.reserved,
            version=row.version,
            low_stock_threshold=self.settings.low_stock_threshold
            if threshold is None
            else threshold,
        )

    async def audit_trail(self, variant_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        query = (
            select(audit_log)
            .where(audit_log.c.variant_id == variant_id)
            .order_by(audit_log.c.version.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    def _ledger(self, state: stock_store.LoadedState) -> StockLedger:
        return StockLedger(
            state.variants, {}, default_low_stock_threshold=self.settings.low_stock_threshold
        )

    async def _write(self, conn: Any, ledger: StockLedger, state: stock_store.LoadedState) -> None:
        await stock_store.write_ledger(conn, ledger, state)
        await stock_store.append_outbox(
            conn,
            self.writer.effects(ledger.changes, ledger.alerts, ledger.outcomes, datetime.now(UTC)),
        )


async def _change_caused_by(conn: AsyncConnection, cause: EventRef) -> StockChange:
    """The change an earlier, committed call with this idempotency key made."""
    row = (
        await conn.execute(
            select(audit_log, variants.c.product_id)
            .join(variants, variants.c.variant_id == audit_log.c.variant_id)
            .where(
                audit_log.c.source_event_source == cause.source,
                audit_log.c.source_event_id == cause.id,
            )
        )
    ).one()
    return StockChange(
        variant_id=row.variant_id,
        product_id=row.product_id,
        change_type=ChangeType(row.change_type),
        delta_on_hand=row.delta_on_hand,
        delta_reserved=row.delta_reserved,
        on_hand=row.on_hand_after,
        reserved=row.reserved_after,
        version=row.version,
        reference=row.reference,
        reason=row.reason,
        cause=cause,
    )
