"""Every stock.anomaly is also kept in `anomalies`, in the transaction that raised it,
whoever raised it (the ledger, reconciliation): the outbox forgets published rows."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.application.admin import StockAdmin
from service.application.reconciliation import reconcile

pytestmark = pytest.mark.integration


async def test_an_anomaly_is_kept_and_published_once(engine, settings) -> None:
    await StockAdmin(engine, settings).restock("lamp", 4, product_id="lamps")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE variants SET on_hand = 9 WHERE variant_id = 'lamp'"))

    report = await reconcile(engine, settings, "cli:ana")

    async with engine.connect() as conn:
        kept = (await conn.execute(text("SELECT * FROM anomalies"))).mappings().all()
        published = (
            await conn.execute(
                text("SELECT count(*) FROM outbox WHERE topic = :t"),
                {"t": settings.topic_stock_anomaly},
            )
        ).scalar_one()
    assert [(a["variant_id"], a["rule"], a["observed"], a["expected"]) for a in kept] == [
        ("lamp", "ledger_mismatch", 9, 4)
    ]
    assert kept[0]["reference"] == report.run_id and kept[0]["actor"] == "cli:ana"
    assert published == 1
