"""The outbox's fast path (service/adapters/fast_publish.py) against PostgreSQL and tansu.

A process publishes the stock.reservation rows it has just committed itself and
deletes them once Kafka acknowledged them; the relay sweeps only what the fast path
did not settle; one order's answers go out in commit order whoever sends them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from service.adapters import fast_publish
from service.adapters.kafka import ensure_topics
from service.adapters.outbox_relay import OutboxRelay
from service.application.expiry import HoldSweeper
from service.entrypoints.worker import Worker
from service.settings import Settings
from tests.e2e.helpers import caught_up, send_events, wait_until
from tests.support.kafka import TopicReader
from tests.support.records import cancelled, checkout, paid
from tests.support.scenario import Scenario

pytestmark = [pytest.mark.e2e]


async def _rows(engine, topic: str) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, key, sweep_after, sweep_after <= now() AS due FROM outbox"
                " WHERE topic = :t ORDER BY id"
            ),
            {"t": topic},
        )
        return [dict(row._mapping) for row in result]


@asynccontextmanager
async def _producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def _relay(settings: Settings) -> AsyncIterator[OutboxRelay]:
    async with _producer(settings) as producer:
        relay = OutboxRelay(settings, producer)
        task = asyncio.create_task(relay.run_forever())
        try:
            yield relay
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _closed_producer(settings: Settings) -> AIOKafkaProducer:
    """A real producer that knows the topics and then was stopped: every send fails
    (ProducerClosed), as a broker that refuses or does not answer would make it."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    await producer.partitions_for(settings.topic_stock_reservation)
    await producer.stop()
    return producer


def _statuses(reader: TopicReader, topic: str, order_id: str) -> list[str]:
    return [d["status"] for d in reader.data(topic) if d["order_id"] == order_id]


async def test_the_answer_is_published_by_the_fast_path_with_the_relay_off(
    engine, kafka_settings
) -> None:
    s = kafka_settings
    scenario = Scenario(engine, s)
    await scenario.restock(("v1", 5))
    worker = Worker(s, sweep=False, relay=False)
    await worker.start()
    try:
        topic = s.topic_stock_reservation
        async with TopicReader(s.kafka_bootstrap_servers, [topic]) as reader:
            await send_events(s, [checkout("o1", {"v1": 2})])
            await reader.wait_for(lambda: bool(reader.data(topic)), what="o1's answer")
            assert _statuses(reader, topic, "o1") == ["RESERVED"]
            publisher = worker.fast_publisher
            assert publisher is not None
            await wait_until(lambda: publisher.sent_total == 1, what="the row settled")
            # Settled: deleted. stock.changed waits for the relay, which is off.
            await wait_until(
                lambda: _rows_empty(engine, topic), what="the reservation row deleted"
            )
            assert await _rows(engine, s.topic_stock_changed) != []
    finally:
        await worker.stop()


async def _rows_empty(engine, topic: str) -> bool:
    return await _rows(engine, topic) == []


async def test_a_failed_fast_send_is_swept_by_the_relay_in_order(engine, kafka_settings) -> None:
    """The first answer of an order fails on the fast path; the second, committed while
    the first is still in the outbox, is left to the relay: the relay sends both, the
    first first, each once."""
    s = kafka_settings.model_copy(update={"outbox_fast_path_grace_ms": 60_000})
    await ensure_topics(s)
    scenario = Scenario(engine, s)
    await scenario.restock(("v1", 5))
    publisher = fast_publish.FastPublisher(engine, await _closed_producer(s), s)
    publisher.start()
    scenario.consumer.unit_of_work.publisher = publisher
    try:
        await scenario.deliver(checkout("o1", {"v1": 2}))
        await wait_until(lambda: publisher.left_total == 1, what="the fast send failed")
        [first] = await _rows(engine, s.topic_stock_reservation)
        assert first["due"]  # released to the relay at once, not after the long grace
        await scenario.deliver(cancelled("o1"))
        first_again, second = await _rows(engine, s.topic_stock_reservation)
        assert first_again == first
        assert second["sweep_after"] >= first["sweep_after"]  # never before the first
        assert publisher.left_total == 1  # the second was not handed to the fast path
        topic = s.topic_stock_reservation
        async with TopicReader(s.kafka_bootstrap_servers, [topic]) as reader, _relay(s):
            await wait_until(lambda: _rows_empty(engine, topic), what="the relay swept both")
            await reader.wait_for(lambda: len(reader.data(topic)) >= 2, what="two answers")
            await asyncio.sleep(0.5)  # a duplicate, if any, would arrive with them
            assert _statuses(reader, topic, "o1") == ["RESERVED", "RELEASED"]
    finally:
        await publisher.stop(1.0)


async def test_an_answer_behind_an_unsent_one_waits_for_it(engine, kafka_settings) -> None:
    """A process that dies between its commit and the fast send (here: a publisher that
    takes rows and never sends). The order's next answer is relay-only and held as long
    as the first; another order's answer is not held back."""
    s = kafka_settings.model_copy(update={"outbox_fast_path_grace_ms": 1500})
    await ensure_topics(s)
    scenario = Scenario(engine, s)
    await scenario.restock(("v1", 5))
    async with _producer(s) as producer:
        stalled = fast_publish.FastPublisher(engine, producer, s)
        stalled.accepting = True  # takes rows, never started: nothing is sent
        scenario.consumer.unit_of_work.publisher = stalled
        await scenario.deliver(checkout("o1", {"v1": 2}))
        await scenario.deliver(paid("o1"), checkout("o2", {"v1": 1}))
        topic = s.topic_stock_reservation
        rows = await _rows(engine, topic)
        assert [bytes(r["key"]) for r in rows] == [b"o1", b"o1", b"o2"]
        first, second, other = rows
        assert not first["due"] and second["sweep_after"] >= first["sweep_after"]
        # Taken by the fast path: o1's first answer and o2's, not o1's second.
        assert [row.id for row, _ in stalled._waiting] == [first["id"], other["id"]]
        async with TopicReader(s.kafka_bootstrap_servers, [topic]) as reader, _relay(s):
            await wait_until(lambda: _rows_empty(engine, topic), what="swept after the hold")
            await reader.wait_for(lambda: len(reader.data(topic)) >= 3, what="three answers")
            assert _statuses(reader, topic, "o1") == ["RESERVED", "CONFIRMED"]
            assert _statuses(reader, topic, "o2") == ["RESERVED"]


async def test_every_unit_of_work_of_the_process_uses_the_installed_publisher(
    engine, kafka_settings
) -> None:
    """The hold sweeper (like HTTP and CLI commands) has no publisher of its own: its
    committed answers go to the one the worker installed for the process."""
    s = kafka_settings
    await ensure_topics(s)
    scenario = Scenario(engine, s)
    await scenario.restock(("v1", 5))
    now = datetime.now(UTC)
    await scenario.deliver(checkout("o1", {"v1": 2}, expires_at=now + timedelta(seconds=1)))
    async with engine.begin() as conn:  # as if the relay had sent the checkout's rows
        await conn.execute(text("DELETE FROM outbox"))
    async with _producer(s) as producer:
        publisher = fast_publish.FastPublisher(engine, producer, s)
        publisher.start()
        fast_publish.install(publisher)
        try:
            topic = s.topic_stock_reservation
            async with TopicReader(s.kafka_bootstrap_servers, [topic]) as reader:
                assert await HoldSweeper(engine, s).sweep_once(now=now + timedelta(seconds=2)) == 1
                await reader.wait_for(lambda: bool(reader.data(topic)), what="EXPIRED")
                assert _statuses(reader, topic, "o1") == ["EXPIRED"]
                assert publisher.sent_total == 1
        finally:
            fast_publish.uninstall(publisher)
            await publisher.stop(1.0)


async def test_nothing_is_published_twice_when_nothing_fails(engine, kafka_settings) -> None:
    s = kafka_settings
    scenario = Scenario(engine, s)
    await scenario.restock(("v1", 100), ("v2", 3))
    events = [checkout(f"o{i}", {"v1": 1, "v2": 1} if i < 5 else {"v1": 2}) for i in range(20)]
    events += [paid(f"o{i}") for i in range(0, 20, 2)]
    worker = Worker(s, sweep=False)
    await worker.start()
    try:
        async with TopicReader(s.kafka_bootstrap_servers, s.published_topics) as reader:
            await send_events(s, events)
            await wait_until(
                lambda: _processed(engine, len(events)), what=f"{len(events)} events applied"
            )
            counts = await caught_up(engine, reader)  # every row appended read back once
            reservation = reader.messages[s.topic_stock_reservation]
            ids = Counter(json.loads(m.value)["id"] for m in reservation)
            assert len(reservation) == counts[s.topic_stock_reservation] == len(events)
            assert max(ids.values()) == 1
            publisher = worker.fast_publisher
            assert publisher is not None
            # The relay swept none of them (an answer behind its order's unsettled
            # first one is the relay's: a payment right behind its checkout).
            assert publisher.sent_total + publisher.left_total <= len(events)
            assert publisher.sent_total >= 20
    finally:
        await worker.stop()


async def _processed(engine, count: int) -> bool:
    async with engine.connect() as conn:
        done = (await conn.execute(text("SELECT count(*) FROM processed_events"))).scalar()
    return done == count
