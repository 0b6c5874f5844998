"""Reads of stock: levels, availability, low-stock lists, products, the audit trail.

Plain reads without locks: each answer is one consistent snapshot (one statement),
possibly a moment old by the time the caller acts on it. The checks that matter
are made again, under lock, when a reservation is requested.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.tables import audit_log, variants
from service.domain.errors import InvalidCursor, UnknownProduct, UnknownVariant
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class StockLevel:
    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    available: int
    version: int
    low_stock_threshold: int
    updated_at: datetime | None = None

    @property
    def is_low(self) -> bool:
        return self.available <= self.low_stock_threshold


@dataclass(frozen=True, slots=True)
class ProductStock:
    product_id: str
    on_hand: int
    reserved: int
    available: int
    low_stock_count: int
    variants: list[StockLevel]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    #: Pass back to get the next page; None on the last one.
    next_cursor: str | None


class StockQueries:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    async def stock_level(self, variant_id: str) -> StockLevel:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(variants).where(variants.c.variant_id == variant_id))
            ).first()
        if row is None:
            raise UnknownVariant(variant_id)
        return self._level(row)

    async def product(self, product_id: str) -> ProductStock:
        """Totals over the product's variants, and how many of them are low."""
        query = (
            select(variants)
            .where(variants.c.product_id == product_id)
            .order_by(variants.c.variant_id)
        )
        async with self.engine.connect() as conn:
            levels = [self._level(row) for row in await conn.execute(query)]
        if not levels:
            raise UnknownProduct(product_id)
        return ProductStock(
            product_id=product_id,
            on_hand=sum(v.on_hand for v in levels),
            reserved=sum(v.reserved for v in levels),
            available=sum(v.available for v in levels),
            low_stock_count=sum(1 for v in levels if v.is_low),
            variants=levels,
        )

    async def low_stock(self, threshold: int | None, limit: int, cursor: str | None = None) -> Page:
        """Variants with `available <= threshold` (each variant's own threshold when
        None), least available first, paged by keyset (available, variant_id)."""
        available = variants.c.on_hand - variants.c.reserved
        bound = (
            func.coalesce(variants.c.low_stock_threshold, self.settings.low_stock_threshold)
            if threshold is None
            else threshold
        )
        query = select(variants).where(available <= bound)
        if cursor is not None:
            after_available, after_variant = _split_cursor(cursor)
            query = query.where(
                tuple_(available, variants.c.variant_id) > tuple_(after_available, after_variant)
            )
        query = query.order_by(available, variants.c.variant_id).limit(limit + 1)
        async with self.engine.connect() as conn:
            levels = [self._level(row) for row in await conn.execute(query)]
        more = len(levels) > limit
        levels = levels[:limit]
        last = levels[-1] if more else None
        return Page(levels, f"{last.available}:{last.variant_id}" if last else None)

    async def audit_trail(
        self, variant_id: str, limit: int = 20, cursor: str | None = None
    ) -> Page:
        """Newest first; the cursor is the version below which the next page starts."""
        query = select(audit_log).where(audit_log.c.variant_id == variant_id)
        if cursor is not None:
            query = query.where(audit_log.c.version < _version_cursor(cursor))
        query = query.order_by(audit_log.c.version.desc()).limit(limit + 1)
        exists = select(variants.c.variant_id).where(variants.c.variant_id == variant_id)
        async with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in await conn.execute(query)]
            if not rows and (await conn.execute(exists)).first() is None:
                raise UnknownVariant(variant_id)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1]["version"]) if more else None)

    def _level(self, row: Any) -> StockLevel:
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
            updated_at=row.updated_at,
        )


_BIGINT = range(-(2**63), 2**63)


def _split_cursor(cursor: str) -> tuple[int, str]:
    """`available:variant_id`, as `low_stock` hands it out."""
    available, _, variant_id = cursor.partition(":")
    if not 0 < len(variant_id) <= 200 or "\x00" in variant_id:
        raise InvalidCursor(f"invalid cursor {cursor[:50]!r}")
    return _bigint(available, cursor), variant_id


def _version_cursor(cursor: str) -> int:
    return _bigint(cursor, cursor)


def _bigint(number: str, cursor: str) -> int:
    try:
        value = int(number)
    except ValueError:
        value = None
    if value is None or value not in _BIGINT:
        raise InvalidCursor(f"invalid cursor {cursor[:50]!r}")
    return value
