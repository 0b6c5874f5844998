"""CONTRACT.md, "Staleness", through the real broker and database: a checkout the worker
reaches after its hold has ended (a backlog after an outage) never holds stock, so it
cannot make live shoppers' checkouts fail; a payment for it then takes the stock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.application.admin import StockAdmin
from tests.e2e.helpers import WAIT, phases, running_worker, send_events, stock, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import checkout, paid

pytestmark = [pytest.mark.e2e]

HOT = "hot-sneaker"


def _statuses(reader: TopicReader, topic: str, order_id: str) -> list[str]:
    return [d["status"] for d in reader.data(topic) if d["order_id"] == order_id]


async def test_a_stale_checkout_holds_nothing_and_a_live_one_gets_the_stock(
    kafka_settings, engine
) -> None:
    s = kafka_settings
    await StockAdmin(engine, s).restock(HOT, 1, product_id="sneakers")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    stale_by_time = checkout("stale-1", {HOT: 1}, time=an_hour_ago)  # time + 15 min hold
    stale_by_expiry = checkout(
        "stale-2", {HOT: 1}, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    live = checkout("live", {HOT: 1})

    async with (
        running_worker(s),
        TopicReader(s.kafka_bootstrap_servers, [s.topic_stock_reservation]) as reader,
    ):
        await send_events(s, [stale_by_time, stale_by_expiry, live])
        await wait_until(
            lambda: _statuses(reader, s.topic_stock_reservation, "live") == ["RESERVED"],
            what="the live checkout reserved",
        )
        # Both stale orders were answered EXPIRED at once, and took nothing: the one
        # unit went to the live shopper.
        for order_id in ("stale-1", "stale-2"):
            assert _statuses(reader, s.topic_stock_reservation, order_id) == ["EXPIRED"]
        assert (await stock(engine))[HOT][:2] == (1, 1)

        # A payment for a stale order takes the stock if it is there: here it is not.
        await send_events(s, [paid("stale-1")])
        await wait_until(
            lambda: _statuses(reader, s.topic_stock_reservation, "stale-1")
            == ["EXPIRED", "CONFIRM_FAILED"],
            timeout=WAIT,
            what="the stale order's payment answered",
        )
        refusal = [
            d for d in reader.data(s.topic_stock_reservation) if d["order_id"] == "stale-1"
        ][-1]
        assert refusal["reason"] == "insufficient_stock"
        assert refusal["shortages"] == [{"variant_id": HOT, "requested": 1, "available": 0}]

        # With stock back, the other stale order's payment sells it.
        await StockAdmin(engine, s).restock(HOT, 1)
        await send_events(s, [paid("stale-2")])
        await wait_until(
            lambda: _statuses(reader, s.topic_stock_reservation, "stale-2")
            == ["EXPIRED", "CONFIRMED"],
            what="the second stale order sold",
        )
    assert (await phases(engine)) == {
        "stale-1": "CONFIRM_FAILED",
        "stale-2": "CONFIRMED",
        "live": "RESERVED",
    }
    assert (await stock(engine))[HOT][:2] == (1, 1)
