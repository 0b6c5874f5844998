"""A Hypothesis state machine of the reservation life, run against the real database.

Rules publish checkouts, payments, failures, cancellations and restocks; hold events
back and deliver them shuffled and in random batch cuts (reordering); deliver again
events already applied (duplicates); and expire holds. After every step, CONTRACT.md's
invariants hold (checked with plain SQL), and a duplicate changes nothing at all.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.adapters.database import asyncpg_dsn, create_engine
from service.application.expiry import HoldSweeper
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.records import cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDERS = [f"o{n}" for n in range(6)]
VARIANTS = ["A", "B", "C"]


def _snapshot_sql() -> str:
    return """
        SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM outbox),
               (SELECT coalesce(sum(on_hand), 0) FROM variants),
               (SELECT coalesce(sum(reserved), 0) FROM variants),
               (SELECT string_agg(order_id || phase, ',' ORDER BY order_id) FROM orders)
    """


def test_reservation_life_keeps_every_invariant(
    postgres_admin_url: str, template_database_url: str
) -> None:
    template = make_url(template_database_url).database

    class ReservationLife(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            name = f"stock_sm_{uuid.uuid4().hex[:10]}"
            self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            self.database = name
            url = make_url(postgres_admin_url).set(database=name)
            self.settings = Settings(database_url=url.render_as_string(hide_password=False))
            self.engine = create_engine(self.settings.database_url, pool_size=2)
            self.scenario = Scenario(self.engine, self.settings)
            self.sent: list[dict[str, Any]] = []
            self.held_back: list[dict[str, Any]] = []
            self.run(self.scenario.restock(*((v, 5) for v in VARIANTS)))

        def run(self, coroutine: Any) -> Any:
            return self.loop.run_until_complete(coroutine)

        def _admin(self, statement: str) -> None:
            async def go() -> None:
                conn = await asyncpg.connect(asyncpg_dsn(postgres_admin_url))
                try:
                    await conn.execute(statement)
                finally:
                    await conn.close()

            self.run(go())

        def teardown(self) -> None:
            self.run(self.engine.dispose())
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.loop.close()

        def _deliver(self, *events: dict[str, Any]) -> None:
            self.run(self.scenario.deliver(*events))
            self.sent.extend(events)

        def _snapshot(self) -> tuple[Any, ...]:
            async def read() -> tuple[Any, ...]:
                async with self.engine.connect() as conn:
                    return tuple((await conn.execute(text(_snapshot_sql()))).one())

            return self.run(read())

        # ---------------------------------------------------------------- input

        @rule(
            order=st.sampled_from(ORDERS),
            lines=st.dictionaries(
                st.sampled_from(VARIANTS), st.integers(1, 3), min_size=1, max_size=3
            ),
            hold_back=st.booleans(),
        )
        def check_out(self, order: str, lines: dict[str, int], hold_back: bool) -> None:
            self._send(checkout(order, lines), hold_back)

        @rule(
            order=st.sampled_from(ORDERS),
            kind=st.sampled_from(["paid", "failed", "cancelled"]),
            hold_back=st.booleans(),
        )
        def follow_up(self, order: str, kind: str, hold_back: bool) -> None:
            event = {"paid": paid, "failed": payment_failed, "cancelled": cancelled}[kind](order)
            self._send(event, hold_back)

        def _send(self, event: dict[str, Any], hold_back: bool) -> None:
            if hold_back:
                self.held_back.append(event)
            else:
                self._deliver(event)

        @precondition(lambda self: bool(self.held_back))
        @rule(data=st.data())
        def deliver_held_back_shuffled(self, data: st.DataObject) -> None:
            """Events that were held back arrive in any order, in any batch cuts."""
            events = data.draw(st.permutations(self.held_back))
            cuts = data.draw(st.lists(st.integers(1, max(len(events) - 1, 1)), max_size=3))
            self.held_back.clear()
            self.run(self.scenario.deliver_split(events, cuts))
            self.sent.extend(events)

        @precondition(lambda self: bool(self.sent))
        @rule(data=st.data())
        def deliver_again(self, data: st.DataObject) -> None:
            """A duplicate (same source and id) changes nothing and publishes nothing."""
            before = self._snapshot()
            events = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=4))
            self.run(self.scenario.deliver(*events))
            assert self._snapshot() == before

        @rule(variant=st.sampled_from(VARIANTS), quantity=st.integers(1, 4))
        def restock(self, variant: str, quantity: int) -> None:
            self.run(self.scenario.admin.restock(variant, quantity))

        @rule()
        def holds_expire(self) -> None:
            from datetime import UTC, datetime, timedelta

            later = datetime.now(UTC) + timedelta(days=1)
            self.run(HoldSweeper(self.engine, self.settings).sweep_once(later))

        # ------------------------------------------------------------ checks

        @invariant()
        def contract_invariants_hold(self) -> None:
            assert self.run(invariant_violations(self.engine)) == []

    run_state_machine_as_test(
        ReservationLife,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
