"""Two workers in one consumer group on a hot variant, and the outbox relay's leader election."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from service.adapters import stock_store
from service.adapters.kafka import ensure_topics
from service.adapters.outbox_relay import OutboxRelay
from service.application.admin import StockAdmin
from service.entrypoints.worker import Worker
from service.outbound import OutboxMessage
from tests.e2e.helpers import (
    WAIT,
    as_message,
    assignment,
    caught_up,
    phases,
    processed_count,
    scalar,
    spy_on_consumer,
    statuses_by_order,
    stock,
    versions,
    wait_until,
)
from tests.support.invariants import invariant_violations, published_change_violations
from tests.support.kafka import TopicReader
from tests.support.records import cancelled, checkout, paid, payment_failed

pytestmark = [pytest.mark.e2e]

HOT, TEE, SOCKS = "hot-sneaker-42", "tee-white-l", "socks-black"
HOT_STOCK = 50
ORDERS = 400

#: What each order's stock.reservation statuses may be, given the events it got.
#: Events for one order travel on different topics, so their relative order is free.
ALLOWED = {
    "paid": {("RESERVED", "CONFIRMED"), ("REJECTED", "CONFIRM_FAILED")},
    "failed": {("RESERVED", "RELEASED"), ("RELEASED",), ("REJECTED",)},
    "cancelled": {("RESERVED", "RELEASED"), ("REJECTED",)},
    "none": {("RESERVED",), ("REJECTED",)},
}


async def _send_pipelined(bootstrap: str, messages: list[Any]) -> None:
    """Many messages quickly: one producer, per-partition order kept, all acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers or [])
            for topic, key, value, headers in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _orders(rng: random.Random) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    fates = (
        ["paid"] * int(ORDERS * 0.6)
        + ["failed"] * int(ORDERS * 0.2)
        + ["cancelled"] * int(ORDERS * 0.1)
    )
    fates += ["none"] * (ORDERS - len(fates))
    rng.shuffle(fates)
    lines: dict[str, dict[str, int]] = {}
    fate: dict[str, str] = {}
    for i in range(ORDERS):
        order_id = f"o{i:03d}"
        variants = [HOT, *rng.sample([TEE, SOCKS], rng.randint(0, 2))]
        rng.shuffle(variants)
        lines[order_id] = {v: rng.randint(1, 3) for v in variants}
        fate[order_id] = fates[i]
    return lines, fate


async def test_two_workers_share_the_group_and_never_oversell(kafka_settings, engine) -> None:
    # Small batches: many short transactions from both workers contend for the hot row.
    s = kafka_settings.model_copy(update={"batch_max_records": 25})
    assert s.kafka_topic_partitions == 3
    admin = StockAdmin(engine, s)
    await admin.restock(HOT, HOT_STOCK, product_id="sneaker", reference="seed")
    await admin.restock(TEE, 10_000, product_id="tee", reference="seed")
    await admin.restock(SOCKS, 10_000, product_id="socks", reference="seed")

    rng = random.Random(20240611)
    lines, fate = _orders(rng)
    checkouts = [checkout(order_id, order_lines) for order_id, order_lines in lines.items()]
    follow_ups = []
    for order_id, what in fate.items():
        if what == "paid":
            follow_ups.append(paid(order_id))
        elif what == "failed":
            follow_ups.append(payment_failed(order_id))
        elif what == "cancelled":
            follow_ups.append(cancelled(order_id))
    rng.shuffle(follow_ups)
    total_events = len(checkouts) + len(follow_ups)

    first, second = Worker(s), Worker(s)
    logs = [spy_on_consumer(first), spy_on_consumer(second)]
    await asyncio.gather(first.start(), second.start())
    try:
        every_partition = {
            TopicPartition(topic, p) for topic in s.consumed_topics for p in range(3)
        }

        async def shared() -> bool:
            a, b = assignment(first), assignment(second)
            return bool(a) and bool(b) and not a & b and a | b == every_partition

        await wait_until(shared, what="both workers holding partitions of the group")

        async with TopicReader(s.kafka_bootstrap_servers, s.published_topics) as reader:
            await _send_pipelined(
                s.kafka_bootstrap_servers,
                [as_message(s, e) for e in checkouts + follow_ups],
            )

            async def all_applied() -> bool:
                return await processed_count(engine, "test") == total_events

            await wait_until(all_applied, timeout=60, what=f"{total_events} events applied")
            await caught_up(engine, reader)

            # Both workers did part of the work.
            assert logs[0].records and logs[1].records
            assert sum(log.total("applied") for log in logs) == total_events
            assert sum(log.total("dead_lettered") for log in logs) == 0

            # Each order's outcomes agree with the events it was sent.
            statuses = statuses_by_order(reader.messages[s.topic_stock_reservation])
            assert set(statuses) == set(lines)
            wrong = {
                order_id: (fate[order_id], statuses[order_id])
                for order_id in lines
                if tuple(statuses[order_id]) not in ALLOWED[fate[order_id]]
            }
            assert wrong == {}
            db_phases = await phases(engine)
            assert {o: db_phases[o] for o in lines} == {o: st[-1] for o, st in statuses.items()}
            reasons = _rejection_reasons(reader.messages[s.topic_stock_reservation])
            for order_id, (reason, shortages) in reasons.items():
                if reason == "order_cancelled":
                    assert fate[order_id] == "cancelled"
                else:
                    assert reason == "insufficient_stock", (order_id, reason)
                    assert [sh["variant_id"] for sh in shortages] == [HOT]
            final = {o: st[-1] for o, st in statuses.items()}
            assert "RESERVED" in {st[0] for st in statuses.values()}
            assert "REJECTED" in final.values(), "the hot variant was never short"

            # No oversell, and the stock adds up from the orders' outcomes.
            on_hand, reserved, _ = (await stock(engine))[HOT]
            sold = sum(lines[o][HOT] for o, st in final.items() if st == "CONFIRMED")
            held = sum(lines[o][HOT] for o, st in final.items() if st == "RESERVED")
            assert 0 <= reserved <= on_hand
            assert sold <= HOT_STOCK
            assert on_hand == HOT_STOCK - sold
            assert reserved == held
            for variant in (TEE, SOCKS):
                v_on_hand, v_reserved, _ = (await stock(engine))[variant]
                v_sold = sum(
                    lines[o].get(variant, 0) for o, st in final.items() if st == "CONFIRMED"
                )
                v_held = sum(
                    lines[o].get(variant, 0) for o, st in final.items() if st == "RESERVED"
                )
                assert (v_on_hand, v_reserved) == (10_000 - v_sold, v_held)
            for data in reader.data(s.topic_stock_changed):
                assert 0 <= data["reserved"] <= data["on_hand"], data

            assert await invariant_violations(engine) == []
            assert (
                published_change_violations(
                    reader.messages[s.topic_stock_changed], await versions(engine)
                )
                == []
            )
            assert (
                await scalar(engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
            )
    finally:
        await asyncio.gather(first.stop(), second.stop())


def _rejection_reasons(records: list[Any]) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    found = {}
    for record in records:
        data = json.loads(record.value)["data"]
        if data["status"] == "REJECTED":
            found[data["order_id"]] = (data.get("reason"), data.get("shortages") or [])
    return found


# ------------------------------------------------------------------- relay leader election


async def _write_outbox(engine: Any, messages: list[OutboxMessage]) -> None:
    async with engine.begin() as conn:
        await stock_store.append_outbox(conn, messages)


async def _published(engine: Any, value: bytes) -> bool:
    # Sent rows are deleted.
    waiting = await scalar(engine, "SELECT count(*) FROM outbox WHERE value = :v", v=value)
    return waiting == 0


def _row(topic: str, label: str) -> OutboxMessage:
    return OutboxMessage(
        topic=topic,
        key=b"relay-test",
        value=json.dumps({"label": label}).encode(),
        headers=(("content-type", b"application/json"), ("x-binary", b"\xff\x00\xfe")),
    )


async def test_outbox_relay_has_one_leader_woken_by_notify_and_a_successor(
    kafka_settings, engine
) -> None:
    # The leader polls only every 30 s: anything published sooner was woken by NOTIFY.
    leader_settings = kafka_settings.model_copy(update={"outbox_poll_interval_seconds": 30.0})
    # The standby retries the lock at its poll interval: that bounds the takeover time.
    standby_settings = kafka_settings.model_copy(update={"outbox_poll_interval_seconds": 0.5})
    topic = kafka_settings.topic_stock_reservation
    await ensure_topics(kafka_settings)

    producers = [
        AIOKafkaProducer(
            bootstrap_servers=kafka_settings.kafka_bootstrap_servers, enable_idempotence=False
        )
        for _ in range(2)
    ]
    for producer in producers:
        await producer.start()
    relay_a = OutboxRelay(leader_settings, producers[0])
    relay_b = OutboxRelay(standby_settings, producers[1])
    both: list[float] = []
    samples: dict[tuple[bool, bool], int] = defaultdict(int)

    async def watch() -> None:
        while True:
            state = (relay_a.is_leader, relay_b.is_leader)
            samples[state] += 1
            if all(state):
                both.append(time.monotonic())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    task_a = asyncio.create_task(relay_a.run_forever())
    task_b: asyncio.Task[None] | None = None
    written: list[bytes] = []
    try:
        await wait_until(lambda: relay_a.is_leader, what="relay A leading")
        task_b = asyncio.create_task(relay_b.run_forever())
        await wait_until(lambda: _standby_tried(engine), what="relay B trying the lock")
        assert not relay_b.is_leader

        async with TopicReader(kafka_settings.kafka_bootstrap_servers, [topic]) as reader:
            for round_ in range(3):
                rows = [_row(topic, f"a-{round_}-{i}") for i in range(3)]
                started = time.monotonic()
                await _write_outbox(engine, rows)
                written += [r.value for r in rows]
                await wait_until(
                    lambda rows=rows: _all_published(engine, rows),
                    timeout=2.0,
                    what=f"round {round_} published by NOTIFY within 2 s",
                )
                assert time.monotonic() - started < 2.0
                await asyncio.sleep(0.2)
            assert relay_a.published_total == 9
            assert relay_b.published_total == 0
            assert relay_a.is_leader and not relay_b.is_leader

            task_a.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_a
            assert not relay_a.is_leader
            await wait_until(lambda: relay_b.is_leader, timeout=10, what="relay B taking over")
            rows = [_row(topic, f"b-{i}") for i in range(3)]
            await _write_outbox(engine, rows)
            written += [r.value for r in rows]
            await wait_until(
                lambda: _all_published(engine, rows), timeout=5, what="B publishing new rows"
            )
            assert relay_b.published_total == 3
            assert relay_a.published_total == 9

            await reader.wait_for(
                lambda: len(reader.messages[topic]) >= len(written),
                timeout=WAIT,
                what="every row read back",
            )
            got = reader.messages[topic]
            assert [m.value for m in got] == written  # one key: one partition, in id order
            for message in got:
                assert (b"x-binary", b"\xff\x00\xfe") in [
                    (name.encode(), value) for name, value in message.headers
                ]
    finally:
        watcher.cancel()
        for task in (task_a, task_b):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for producer in producers:
            await producer.stop()
    assert both == [], f"both relays led at once {len(both)} times"
    assert samples[(True, False)] > 0 and samples[(False, True)] > 0


async def _standby_tried(engine: Any) -> bool:
    """A session whose last statement was the lock attempt: the standby (the leader has
    moved on to LISTEN and the outbox)."""
    tried = await scalar(
        engine,
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND query LIKE '%pg_try_advisory_lock%'
             AND pid <> pg_backend_pid()""",
    )
    return bool(tried)


async def _all_published(engine: Any, rows: list[OutboxMessage]) -> bool:
    for row in rows:
        if not await _published(engine, row.value):
            return False
    return True
