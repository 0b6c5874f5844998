"""The baseline: a consumer written the way the seed's NestJS service works.

One message, one transaction: read each variant row, check, write it, write the
order and an audit row, commit; then commit the Kafka offset for that message. No
batching, no outbox. Fair to it: asyncpg without an ORM, rows locked `FOR UPDATE`
(so it does not oversell either), the same schema and indexes.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.adapters.database import asyncpg_dsn
from service.settings import Settings


async def measure_naive(settings: Settings, seconds: float) -> tuple[int, float]:
    """Consume for `seconds` after the first message. Returns (events, elapsed)."""
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    consumer = AIOKafkaConsumer(
        *settings.consumed_topics,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_group_id}-naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    handled = 0
    started: float | None = None
    try:
        while started is None or time.monotonic() - started < seconds:
            try:  # the group join comes first; then a pause means the stream is drained
                record = await asyncio.wait_for(consumer.getone(), 60 if started is None else 2)
            except TimeoutError:
                break
            started = started or time.monotonic()
            await _handle(conn, json.loads(record.value))
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: record.offset + 1})
            handled += 1
        if started is None:
            raise RuntimeError("the naive consumer received nothing")
        return handled, time.monotonic() - started
    finally:
        await consumer.stop()
        await conn.close()


async def _handle(conn: asyncpg.Connection, event: dict[str, object]) -> None:
    data = event["data"]
    assert isinstance(data, dict)
    order_id = data["order_id"]
    async with conn.transaction():
        if event["type"] == "order.checkout":
            await _checkout(conn, order_id, data["lines"])
            return
        order = await conn.fetchrow(
            "SELECT phase FROM orders WHERE order_id = $1 FOR UPDATE", order_id
        )
        if order is None or order["phase"] != "RESERVED":
            return
        lines = await conn.fetch(
            "SELECT variant_id, quantity FROM order_lines WHERE order_id = $1", order_id
        )
        sold = event["type"] == "payment.succeeded"
        for line in lines:
            await _change(
                conn,
                line["variant_id"],
                -line["quantity"] if sold else 0,
                -line["quantity"],
                "SALE" if sold else "RELEASE",
                order_id,
            )
        await conn.execute(
            "UPDATE orders SET phase = $2, updated_at = now() WHERE order_id = $1",
            order_id,
            "CONFIRMED" if sold else "RELEASED",
        )


async def _checkout(conn: asyncpg.Connection, order_id: object, lines: object) -> None:
    assert isinstance(lines, list)
    for line in lines:
        row = await conn.fetchrow(
            "SELECT on_hand, reserved FROM variants WHERE variant_id = $1 FOR UPDATE",
            line["variant_id"],
        )
        if row is None or row["on_hand"] - row["reserved"] < line["quantity"]:
            await conn.execute(
                "INSERT INTO orders (order_id, phase, reason) VALUES ($1, 'REJECTED', "
                "'insufficient_stock') ON CONFLICT DO NOTHING",
                order_id,
            )
            return
    await conn.execute(
        "INSERT INTO orders (order_id, phase) VALUES ($1, 'RESERVED') ON CONFLICT DO NOTHING",
        order_id,
    )
    for line in lines:
        await _change(conn, line["variant_id"], 0, line["quantity"], "RESERVE", order_id)
        await conn.execute(
            "INSERT INTO order_lines (order_id, variant_id, quantity) VALUES ($1, $2, $3)",
            order_id,
            line["variant_id"],
            line["quantity"],
        )


async def _change(
    conn: asyncpg.Connection,
    variant_id: str,
    delta_on_hand: int,
    delta_reserved: int,
    change_type: str,
    order_id: object,
) -> None:
    row = await conn.fetchrow(
        """
        UPDATE variants SET on_hand = on_hand + $2, reserved = reserved + $3,
               version = version + 1, updated_at = now()
        WHERE variant_id = $1
        RETURNING on_hand, reserved, version
        """,
        variant_id,
        delta_on_hand,
        delta_reserved,
    )
    await conn.execute(
        """
        INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                               on_hand_after, reserved_after, version, reference, actor)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'naive-consumer')
        """,
        variant_id,
        change_type,
        delta_on_hand,
        delta_reserved,
        row["on_hand"],
        row["reserved"],
        row["version"],
        order_id,
    )
