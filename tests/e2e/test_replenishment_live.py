"""stock.reorder and stock.replenished through the real worker, broker and database.

A checkout that takes `available` across the variant's reorder point puts exactly one
`stock.reorder` on its topic, and further sales below it none; a restock after the
variant sold out puts exactly one `stock.replenished` on its topic (CONTRACT.md,
"Events added"; issue 13's done-when).
"""

from __future__ import annotations

from typing import Any

import pytest
from stock_schemas import StockReorder, StockReplenished

from service.application.admin import StockAdmin
from service.application.policies import Policies
from tests.e2e.helpers import WAIT, outbox_drained, running_worker, send_events, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import checkout, paid

pytestmark = [pytest.mark.e2e]

TEE = "tee-green-s"


def _has(reader: TopicReader, topic: str, order_id: str, status: str) -> bool:
    return any(d["order_id"] == order_id and d["status"] == status for d in reader.data(topic))


async def test_one_reorder_at_the_point_and_one_replenished_after_a_stockout(
    kafka_settings: Any, engine: Any
) -> None:
    s = kafka_settings
    admin = StockAdmin(engine, s)
    await admin.restock(TEE, 12, product_id="prod-tee", reference="seed")
    await Policies(engine, s).put(TEE, {"reorder_point": 5, "supplier_id": "acme"})
    res, reorder_topic, back_topic = (
        s.topic_stock_reservation,
        s.topic_stock_reorder,
        s.topic_stock_replenished,
    )
    async with (
        running_worker(s),
        TopicReader(s.kafka_bootstrap_servers, s.published_topics) as reader,
    ):
        # 12 -> 6: above the point.
        await send_events(s, [checkout("A", {TEE: 6}), paid("A")])
        await reader.wait_for(lambda: _has(reader, res, "A", "CONFIRMED"), what="A sold")
        # 6 -> 3: the checkout crosses 5.
        await send_events(s, [checkout("B", {TEE: 3})])
        await reader.wait_for(
            lambda: len(reader.messages[reorder_topic]) >= 1, timeout=WAIT, what="stock.reorder"
        )
        # 3 -> 0, still below: no second reorder; sold out.
        await send_events(s, [paid("B"), checkout("C", {TEE: 3}), paid("C")])
        await reader.wait_for(lambda: _has(reader, res, "C", "CONFIRMED"), what="C sold")
        await admin.restock(TEE, 4, reference="delivery-1")
        await reader.wait_for(
            lambda: len(reader.messages[back_topic]) >= 1, timeout=WAIT, what="stock.replenished"
        )
        await wait_until(lambda: outbox_drained(engine), what="outbox drained")

        [reorder_message] = reader.messages[reorder_topic]
        assert reorder_message.key == TEE.encode()
        reorder = StockReorder.model_validate(reader.data(reorder_topic)[0])
        assert (reorder.available, reorder.reorder_point, reorder.supplier_id) == (3, 5, "acme")
        # No demand figures yet and no maxStock: enough to lift it above the point.
        assert reorder.suggested_quantity == 3
        [replenished_message] = reader.messages[back_topic]
        assert replenished_message.key == TEE.encode()
        back = StockReplenished.model_validate(reader.data(back_topic)[0])
        assert (back.variant_id, back.product_id, back.available) == (TEE, "prod-tee", 4)
        assert 0 <= back.out_of_stock_seconds < WAIT
