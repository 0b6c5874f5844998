"""Driving the batch consumer against the real database, and reading what it decided.

Plain SQL over the tables and the outbox (no worker code on the read side), so a
test's expectations do not share a bug with the code under test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.admin import StockAdmin
from service.application.consume import BatchConsumer, BatchReport
from service.outbound import decode_headers
from service.settings import Settings
from tests.support.records import FakeRecord, record_of


@dataclass(frozen=True)
class Published:
    """One outbox row, decoded."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def event(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.value)
        return document

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data

    def header(self, name: str) -> bytes | None:
        found = [value for header, value in self.headers if header == name]
        return found[-1] if found else None


class Scenario:
    """One test's consumer, admin and read-side queries over one database."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.consumer = BatchConsumer(engine, settings)
        self.admin = StockAdmin(engine, settings)

    # ------------------------------------------------------------------ input

    def record(self, cloud_event: dict[str, Any], **kw: Any) -> FakeRecord:
        return record_of(self.settings, cloud_event, **kw)

    async def restock(self, *levels: tuple[str, int]) -> None:
        for variant_id, quantity in levels:
            await self.admin.restock(variant_id, quantity, product_id="p-" + variant_id)

    async def deliver(self, *items: dict[str, Any] | FakeRecord) -> BatchReport:
        """One batch. Dicts are CloudEvents, sent structured on their type's topic."""
        records = [item if isinstance(item, FakeRecord) else self.record(item) for item in items]
        return await self.consumer.handle(records)

    async def deliver_each(self, *items: dict[str, Any] | FakeRecord) -> list[BatchReport]:
        """One batch per item, in order."""
        return [await self.deliver(item) for item in items]

    async def deliver_split(
        self, items: Sequence[dict[str, Any] | FakeRecord], cuts: Iterable[int]
    ) -> list[BatchReport]:
        """`items` in order, cut into consecutive batches before each index in `cuts`."""
        bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(items))), len(items)]
        return [
            await self.deliver(*items[start:end])
            for start, end in itertools.pairwise(bounds)
            if end > start
        ]

    # ------------------------------------------------------------- read side

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(sql), params)

    async def stock(self, variant_id: str) -> tuple[int, int] | None:
        """(on_hand, reserved), or None for a variant that does not exist."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT on_hand, reserved FROM variants WHERE variant_id = :v"),
                    {"v": variant_id},
                )
            ).first()
        return None if row is None else (row.on_hand, row.reserved)

    async def version(self, variant_id: str) -> int:
        return int(
            await self.scalar("SELECT version FROM variants WHERE variant_id = :v", v=variant_id)
        )

    async def phase(self, order_id: str) -> str | None:
        return await self.scalar("SELECT phase FROM orders WHERE order_id = :o", o=order_id)

    async def phases(self) -> dict[str, str]:
        """Every order's phase."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT order_id, phase FROM orders"))
            return {order_id: phase for order_id, phase in rows}

    async def order(self, order_id: str) -> Any:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    text("SELECT * FROM orders WHERE order_id = :o"), {"o": order_id}
                )
            ).first()

    async def order_lines(self, order_id: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT variant_id, quantity FROM order_lines WHERE order_id = :o"),
                {"o": order_id},
            )
            return {variant_id: quantity for variant_id, quantity in rows}

    async def audit(self, variant_id: str | None = None) -> list[Any]:
        sql = "SELECT * FROM audit_log"
        if variant_id is not None:
            sql += " WHERE variant_id = :v"
        async with self.engine.connect() as conn:
            return list(await conn.execute(text(sql + " ORDER BY id"), {"v": variant_id}))

    async def outbox(self, topic: str | None = None) -> list[Published]:
        sql = "SELECT id, topic, key, value, headers FROM outbox"
        if topic is not None:
            sql += " WHERE topic = :t"
        async with self.engine.connect() as conn:
            rows = await conn.execute(text(sql + " ORDER BY id"), {"t": topic})
            return [
                Published(row.id, row.topic, row.key, row.value, decode_headers(row.headers))
                for row in rows
            ]

    async def outbox_count(self) -> int:
        return int(await self.scalar("SELECT count(*) FROM outbox"))

    async def reservations(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """`data` of every stock.reservation row (of one order), oldest first."""
        rows = await self.outbox(self.settings.topic_stock_reservation)
        return [r.data for r in rows if order_id is None or r.data["order_id"] == order_id]

    async def statuses(self, order_id: str) -> list[str]:
        return [r["status"] for r in await self.reservations(order_id)]

    async def changes(self, variant_id: str | None = None) -> list[dict[str, Any]]:
        """`data` of every stock.changed row (of one variant), oldest first."""
        rows = await self.outbox(self.settings.topic_stock_changed)
        return [r.data for r in rows if variant_id is None or r.data["variant_id"] == variant_id]

    async def change_types(self, variant_id: str) -> list[str]:
        return [c["change_type"] for c in await self.changes(variant_id)]

    async def lows(self, variant_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.outbox(self.settings.topic_stock_low)
        return [r.data for r in rows if variant_id is None or r.data["variant_id"] == variant_id]

    async def dead_letters(self) -> list[Published]:
        return await self.outbox(self.settings.topic_dlq)
