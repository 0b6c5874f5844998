"""An admin change claimed by its key is applied once, however often it is retried."""

import pytest
from sqlalchemy import text

from service.application.admin import StockAdmin
from tests.support.invariants import invariant_violations
from tests.support.records import FakeRecord

pytestmark = pytest.mark.integration


async def test_restock_with_the_same_key_applies_once_and_returns_the_same_change(
    engine, settings
) -> None:
    admin = StockAdmin(engine, settings)
    first = await admin.restock("v1", 10, product_id="p1", idempotency_key="delivery-4711")
    again = await admin.restock("v1", 10, product_id="p1", idempotency_key="delivery-4711")
    assert again == first
    assert (await admin.stock_level("v1")).on_hand == 10
    other = await admin.restock("v1", 10, idempotency_key="delivery-4712")
    assert (other.on_hand, other.version) == (20, 2)


async def test_adjust_with_the_same_key_applies_once(engine, settings) -> None:
    admin = StockAdmin(engine, settings)
    await admin.restock("v1", 10)
    first = await admin.adjust("v1", 7, reason="count", idempotency_key="count-1")
    await admin.restock("v1", 5)
    again = await admin.adjust("v1", 7, reason="count", idempotency_key="count-1")
    assert again == first
    assert (await admin.stock_level("v1")).on_hand == 12
    assert await invariant_violations(engine) == []


async def test_a_refused_change_leaves_its_key_free(engine, settings) -> None:
    admin = StockAdmin(engine, settings)
    with pytest.raises(Exception, match="unknown variant"):
        await admin.adjust("nope", 1, reason="count", idempotency_key="k")
    await admin.restock("nope", 3)
    change = await admin.adjust("nope", 1, reason="count", idempotency_key="k")
    assert change.on_hand == 1


async def test_a_header_name_with_nul_is_dead_lettered_intact(engine, settings) -> None:
    from service.application.consume import BatchConsumer

    record = FakeRecord(topic=settings.topic_order_checkout, value=b"garbage",
                        headers=(("bad\x00name", b"\xff"),))
    report = await BatchConsumer(engine, settings).handle([record])
    assert report.dead_lettered == 1
    async with engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM dead_letters"))).scalar()
    assert count == 1
