"""Group commit on the real database: concurrent reserves share transactions, and each
keeps its own all-or-nothing answer (service/application/group_commit.py).

Through the ASGI app where the answer's shape matters, through StockCommands where a
test needs a group of exactly these requests (one group in flight at a time: the
first request runs alone and the ones sent with it queue behind it, together).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import asyncpg_dsn
from service.application.commands import StockCommands
from service.domain.errors import InsufficientStock, ReservationMismatch
from service.domain.model import Order, OrderPhase
from service.domain.requests import ReservationRequest
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def grouped_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "api_tokens": SecretStr(TOKEN),
            "group_commit_groups": 1,
            # Short backoff: the transient-failure test retries once.
            "retry_initial_backoff_seconds": 0.05,
        }
    )


@pytest.fixture
async def stocked(engine: AsyncEngine, grouped_settings: Settings) -> Scenario:
    s = Scenario(engine, grouped_settings)
    await s.restock(("hot", 10), ("cold", 100))
    return s


@pytest.fixture
def group_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group StockCommands runs (the real method, only watched)."""
    sizes: list[int] = []
    original = StockCommands._run_group

    async def watched(self: StockCommands, what: str, group: Sequence[Any], actor: Any) -> Any:
        sizes.append(len(group))
        return await original(self, what, group, actor)

    monkeypatch.setattr(StockCommands, "_run_group", watched)
    return sizes


@pytest.fixture
async def http(engine: AsyncEngine, grouped_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiServices.build(grouped_settings, engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stock") as client:
        yield client


def _hold(reservation_id: str, variant_id: str, quantity: int) -> ReservationRequest:
    return ReservationRequest(
        reservation_id, {variant_id: quantity}, datetime.now(UTC) + timedelta(minutes=10)
    )


async def _order_rows(s: Scenario) -> set[str]:
    async with s.engine.connect() as conn:
        result = await conn.exec_driver_sql("SELECT order_id FROM orders")
        return {row[0] for row in result}


async def test_concurrent_reserves_each_get_their_own_answer(
    http: httpx.AsyncClient, stocked: Scenario, group_sizes: list[int]
) -> None:
    """30 shoppers want 1 of the 10 `hot` units, 10 want `cold`, all at once: exactly
    10 hot ones hold, 20 are refused with the shortage, every cold one holds."""

    async def reserve(reservation_id: str, variant_id: str) -> httpx.Response:
        line = {"reservationId": reservation_id, "variantId": variant_id, "quantity": 1}
        return await http.post(
            "/api/inventory/reserve", json={"reservations": [line]}, headers=AUTH
        )

    wanted = [(f"h{n}", "hot") for n in range(30)] + [(f"c{n}", "cold") for n in range(10)]
    answers = await asyncio.gather(*(reserve(r, v) for r, v in wanted))

    held = {r for (r, _), a in zip(wanted, answers, strict=True) if a.status_code == 200}
    refused = [a for a in answers if a.status_code != 200]
    assert {r for r in held if r.startswith("c")} == {f"c{n}" for n in range(10)}
    assert len([r for r in held if r.startswith("h")]) == 10
    assert len(refused) == 20
    for answer in refused:
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["code"] == "insufficient_stock"
        assert body["details"]["shortages"] == [
            {"variantId": "hot", "requested": 1, "available": 0}
        ]
    for (reservation_id, variant_id), answer in zip(wanted, answers, strict=True):
        if answer.status_code == 200:
            [reservation] = answer.json()["reservations"]
            assert reservation["reservationId"] == reservation_id
            assert reservation["status"] == "RESERVED"
            assert reservation["lines"] == [{"variantId": variant_id, "quantity": 1}]

    assert max(group_sizes) > 1 and sum(group_sizes) == len(wanted)  # they did share
    assert await stocked.stock("hot") == (10, 10)
    assert await stocked.stock("cold") == (100, 10)
    # A refused reservation leaves nothing behind, as it would alone.
    assert await _order_rows(stocked) == held
    assert await invariant_violations(stocked.engine) == []
    assert len(await stocked.audit("hot")) == 1 + 10  # the restock and 10 holds


async def test_the_same_reservation_twice_in_one_group(
    engine: AsyncEngine, grouped_settings: Settings, stocked: Scenario, group_sizes: list[int]
) -> None:
    """Idempotent within a group as across groups: the same lines again are answered
    as they stand (held once), other lines under the same id are a mismatch."""
    commands = StockCommands(engine, grouped_settings)
    _, first, again, changed = await asyncio.gather(
        commands.reserve([_hold("pacer", "cold", 1)]),
        commands.reserve([_hold("dup", "hot", 2)]),
        commands.reserve([_hold("dup", "hot", 2)]),
        commands.reserve([_hold("dup", "hot", 3)]),
        return_exceptions=True,
    )
    assert group_sizes == [1, 3]  # the three went together, behind the pacer
    assert isinstance(first, list) and isinstance(again, list)
    assert [(o.order_id, o.phase, o.lines) for o in first + again] == [
        ("dup", OrderPhase.RESERVED, {"hot": 2}),
        ("dup", OrderPhase.RESERVED, {"hot": 2}),
    ]
    assert isinstance(changed, ReservationMismatch)
    assert await stocked.stock("hot") == (10, 2)  # held once
    assert await stocked.order_lines("dup") == {"hot": 2}
    assert await invariant_violations(engine) == []


async def test_a_group_of_reserves_costs_four_statements_whatever_its_size(
    engine: AsyncEngine, grouped_settings: Settings, stocked: Scenario, group_sizes: list[int]
) -> None:
    """Between BEGIN and COMMIT a group sends: the orders' create-and-lock, the variants'
    lock, the write-back (orders, lines, variants and audit in one statement) and the
    outbox append (with the fast path's check and the NOTIFY). Round trips, not rows,
    are what a group waits for (docs/design.md, "Group commit of synchronous requests")."""
    commands = StockCommands(engine, grouped_settings)
    await commands.reserve([_hold("pacer", "cold", 1)])  # settle the engine's own queries
    sent: list[str] = []

    def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split())[:60])

    event.listen(engine.sync_engine, "before_cursor_execute", watch)
    try:
        await asyncio.gather(
            commands.reserve([_hold("pacer2", "cold", 1)]),
            *(commands.reserve([_hold(f"g{n}", "hot" if n % 2 else "cold", 1)]) for n in range(6)),
        )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", watch)
    assert group_sizes[-2:] == [1, 6]
    group = sent[-4:]
    assert [statement.split()[0:3] for statement in group] == [
        ["INSERT", "INTO", "orders"],
        ["SELECT", "variant_id,", "product_id,"],
        ["WITH", "w0", "AS"],
        ["WITH", "earlier", "AS"],
    ], sent
    assert len(sent) == 8  # the pacer alone, then the group: four each


async def test_a_refused_request_does_not_fail_its_group(
    engine: AsyncEngine, grouped_settings: Settings, stocked: Scenario, group_sizes: list[int]
) -> None:
    """Two reservations that each fit but not together, in one group: the first holds,
    the second is refused with what is left; requests after it still hold."""
    commands = StockCommands(engine, grouped_settings)
    answers = await asyncio.gather(
        commands.reserve([_hold("pacer", "cold", 1)]),
        commands.reserve([_hold("a", "hot", 7)]),
        commands.reserve([_hold("b", "hot", 7)]),
        commands.reserve([_hold("c", "hot", 3), _hold("c2", "cold", 5)]),
        return_exceptions=True,
    )
    assert group_sizes == [1, 3]
    _, a, b, c = answers
    assert isinstance(a, list) and a[0].phase is OrderPhase.RESERVED
    assert isinstance(b, InsufficientStock)
    assert [(s.variant_id, s.requested, s.available) for s in b.shortages] == [("hot", 7, 3)]
    assert isinstance(c, list) and [o.phase for o in c] == [OrderPhase.RESERVED] * 2
    assert await stocked.stock("hot") == (10, 10)
    assert await stocked.phase("b") is None  # nothing of it written
    assert await invariant_violations(engine) == []


async def test_a_bad_request_does_not_poison_its_group(
    engine: AsyncEngine, grouped_settings: Settings, stocked: Scenario, group_sizes: list[int]
) -> None:
    """A reservation id PostgreSQL cannot store (a NUL; HTTP refuses it before, the
    command does not) fails the group's transaction: each request then runs alone, so
    only the bad one fails, with its own error."""
    commands = StockCommands(engine, grouped_settings)
    answers = await asyncio.gather(
        commands.reserve([_hold("pacer", "cold", 1)]),
        commands.reserve([_hold("good-1", "hot", 1)]),
        commands.reserve([_hold("bad\x00id", "hot", 1)]),
        commands.reserve([_hold("good-2", "hot", 1)]),
        return_exceptions=True,
    )
    assert group_sizes == [1, 3]
    _, good_1, bad, good_2 = answers
    assert isinstance(good_1, list) and good_1[0].phase is OrderPhase.RESERVED
    assert isinstance(good_2, list) and good_2[0].phase is OrderPhase.RESERVED
    assert isinstance(bad, Exception) and not isinstance(bad, list)
    assert await stocked.stock("hot") == (10, 2)
    assert await _order_rows(stocked) == {"pacer", "good-1", "good-2"}
    assert await invariant_violations(engine) == []


async def test_a_group_whose_transaction_fails_transiently_is_retried(
    engine: AsyncEngine,
    database_url: str,
    grouped_settings: Settings,
    stocked: Scenario,
    group_sizes: list[int],
) -> None:
    """The group's connection is cut while it waits for a lock: the unit of work retries
    the whole group on a new connection, and each request is held exactly once."""
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    watcher = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM variants WHERE variant_id = 'hot' FOR UPDATE")
        commands = StockCommands(engine, grouped_settings)
        requests = [
            asyncio.ensure_future(commands.reserve([_hold(f"r{n}", "hot", 1)])) for n in range(5)
        ]
        cut = 0
        while not cut:  # the first group waits for the blocker's lock: cut its connection
            cut = await watcher.fetchval(
                """
                SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock'
                """
            )
            await asyncio.sleep(0.01)
        await blocking.rollback()
        answers: list[list[Order]] = await asyncio.gather(*requests)
    finally:
        await blocker.close()
        await watcher.close()
    assert [[o.phase for o in orders] for orders in answers] == [[OrderPhase.RESERVED]] * 5
    assert await stocked.stock("hot") == (10, 5)
    assert len(await stocked.audit("hot")) == 1 + 5  # each held once, not twice
    assert await invariant_violations(engine) == []
