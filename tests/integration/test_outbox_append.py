"""The outbox append on the real database: which rows the fast path takes and the holds
the relay waits for, decided in the one statement (service/adapters/fast_publish.py)."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.fast_publish import append_outbox
from service.outbound import OutboxMessage
from service.settings import Settings

pytestmark = pytest.mark.integration


def _message(topic: str, key: bytes | None, value: bytes) -> OutboxMessage:
    return OutboxMessage(topic, key, value, (("content-type", b"application/json"),))


async def _holds(engine: AsyncEngine) -> dict[bytes, tuple[int, datetime | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT value, id, sweep_after FROM outbox"))
        return {bytes(value): (row_id, after) for value, row_id, after in rows}


async def test_the_first_row_of_each_order_without_earlier_rows_takes_the_fast_path(
    engine: AsyncEngine, settings: Settings
) -> None:
    answers = settings.topic_stock_reservation
    messages = [
        _message(settings.topic_stock_changed, b"v1", b"changed"),
        _message(answers, b"o1", b"o1-first"),
        _message(answers, b"o1", b"o1-second"),
        _message(answers, None, b"no-key"),
        _message(answers, b"o2", b"o2-first"),
    ]
    async with engine.begin() as conn:
        fast = await append_outbox(conn, messages, settings, fast=True)

    holds = await _holds(engine)
    # Handed over in message order, each with the id of its own row.
    assert [row.message.value for row in fast] == [b"o1-first", b"o2-first"]
    assert [row.id for row in fast] == [holds[b"o1-first"][0], holds[b"o2-first"][0]]
    # Only reservation rows with a key are held, and a later row of an order never
    # before the first.
    assert holds[b"changed"][1] is None and holds[b"no-key"][1] is None
    first, second = holds[b"o1-first"][1], holds[b"o1-second"][1]
    assert first is not None and second is not None and second >= first

    # While o1's rows are in the outbox, a new row of o1 is the relay's, held behind
    # them; a new order still takes the fast path.
    async with engine.begin() as conn:
        later = await append_outbox(
            conn, [_message(answers, b"o1", b"o1-third"), _message(answers, b"o3", b"o3")],
            settings, fast=True,
        )  # fmt: skip
    holds = await _holds(engine)
    assert [row.message.value for row in later] == [b"o3"]
    third = holds[b"o1-third"][1]
    assert third is not None and third >= second


async def test_without_a_publisher_nothing_takes_the_fast_path(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.begin() as conn:
        fast = await append_outbox(
            conn, [_message(settings.topic_stock_reservation, b"o1", b"o1")], settings, fast=False
        )
    assert fast == []
    held = (await _holds(engine))[b"o1"][1]
    assert held is not None  # a reservation row still has its (zero) hold: the relay's
