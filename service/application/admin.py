"""One-variant restock, adjust and reads: the vocabulary of the `stock` CLI.

A thin layer over `StockCommands` and `StockQueries`, which HTTP uses directly.
From the command line, restocking a variant that does not exist creates it (as its
own product unless `product_id` says otherwise): that is how a catalogue is loaded.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.commands import StockCommands
from service.application.queries import StockLevel, StockQueries
from service.domain.model import StockChange
from service.domain.requests import CountRequest, RestockRequest
from service.settings import Settings

#: `source` of what the `stock` CLI changes (audit rows, idempotency claims).
CLI_SOURCE = "stock-cli"


class StockAdmin:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        source: str = CLI_SOURCE,
        actor: str | None = None,
    ) -> None:
        """`source`: the entrypoint, recorded on its audit rows; `actor`: the person
        (`cli:<user>`), None to let the source name itself."""
        self.engine = engine
        self.settings = settings
        self.actor = actor
        self.commands = StockCommands(engine, settings, source=source)
        self.queries = StockQueries(engine, settings)

    @property
    def source(self) -> str:
        return self.commands.source

    def acting_as(self, source: str) -> StockAdmin:
        """The same admin for another entrypoint (the dev catalogue)."""
        return StockAdmin(self.engine, self.settings, source=source, actor=self.actor)

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
        [change] = await self.commands.restock(
            [
                RestockRequest(
                    variant_id,
                    quantity,
                    product_id,
                    reason,
                    reference,
                    default_product_id=variant_id,
                )
            ],
            idempotency_key=idempotency_key,
            actor=self.actor,
        )
        return change

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
        [change] = await self.commands.adjust(
            [CountRequest(variant_id, counted, reason, reference)],
            idempotency_key=idempotency_key,
            actor=self.actor,
        )
        return change

    async def stock_level(self, variant_id: str) -> StockLevel:
        return await self.queries.stock_level(variant_id)

    async def audit_trail(self, variant_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first."""
        return (await self.queries.audit_trail(variant_id, limit)).items
