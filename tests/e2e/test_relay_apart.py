"""`stock run --no-relay` beside `stock relay`: the worker commits, the relay publishes."""

from __future__ import annotations

import pytest

from service.application.admin import StockAdmin
from service.entrypoints.process import StockProcess
from service.entrypoints.relay import RelayProcess
from tests.e2e.helpers import outbox_pending, phases, send_events, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import checkout

pytestmark = [pytest.mark.e2e]


async def test_a_worker_without_relay_and_a_relay_process_publish_everything(
    engine, kafka_settings
) -> None:
    # Without the fast path, which would publish stock.reservation from the worker.
    kafka_settings = kafka_settings.model_copy(update={"outbox_fast_path": False})
    await StockAdmin(engine, kafka_settings).restock("v1", 5, product_id="p1")
    worker = StockProcess(kafka_settings, api=False, relay=False)
    await worker.start()
    try:
        topic = kafka_settings.topic_stock_reservation
        async with TopicReader(kafka_settings.kafka_bootstrap_servers, [topic]) as reader:
            await send_events(kafka_settings, [checkout("o1", {"v1": 2})])

            async def reserved() -> bool:
                return (await phases(engine)).get("o1") == "RESERVED"

            await wait_until(reserved, what="o1 RESERVED by the worker")
            # Nothing in this worker publishes: its rows wait in the outbox.
            assert await outbox_pending(engine) > 0
            assert reader.data(topic) == []
            relay = RelayProcess(kafka_settings)
            await relay.start()
            try:
                await reader.wait_for(
                    lambda: any(d["order_id"] == "o1" for d in reader.data(topic)),
                    what="o1 published by the relay process",
                )
            finally:
                await relay.stop()
        assert [d["status"] for d in reader.data(topic)] == ["RESERVED"]
    finally:
        await worker.stop()
