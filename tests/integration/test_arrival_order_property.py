"""The final stock of an order does not depend on the order its events arrive in.

Hypothesis against the real database: one order of 1-3 lines, its checkout plus
0-2 each of payment.succeeded, payment.failed and order.cancelled (a repeat may be
the same event again, or a new event of the same kind), in any permutation, cut
into random batches. The final (on_hand, reserved) of every line's variant must be
what the rules give, whatever the arrival order:

    cancelled -> unchanged; else succeeded -> on_hand -= qty;
    else failed -> unchanged; else reserved += qty.

The database fixture lives for the whole test, so each example uses fresh order
and variant ids.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.invariants import invariant_violations
from tests.support.records import cancelled, checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

STOCK = 50
BUILDERS = {"checkout": None, "succeeded": paid, "failed": payment_failed, "cancelled": cancelled}


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    quantities = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    # kind -> list of "slot" numbers: equal slots are the same event (same id) again.
    occurrences: list[tuple[str, int]] = [("checkout", 0)]
    occurrences += [("checkout", 0)] * draw(st.integers(0, 1))  # a redelivered checkout
    for kind in ("succeeded", "failed", "cancelled"):
        for _ in range(draw(st.integers(0, 2))):
            occurrences.append((kind, draw(st.integers(0, 1))))
    arrival = draw(st.permutations(occurrences))
    cuts = draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=len(arrival)))
    return {"quantities": quantities, "arrival": arrival, "cuts": cuts}


def expected_stock(kinds: set[str], quantity: int) -> tuple[int, int]:
    if "cancelled" in kinds:
        return STOCK, 0
    if "succeeded" in kinds:
        return STOCK - quantity, 0
    if "failed" in kinds:
        return STOCK, 0
    return STOCK, quantity


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=histories())
async def test_final_stock_does_not_depend_on_arrival_order_or_batching(
    engine, settings, history: dict[str, Any]
) -> None:
    s = Scenario(engine, settings)
    tag = uuid.uuid4().hex[:10]
    order_id = f"order-{tag}"
    lines = {f"v{i}-{tag}": q for i, q in enumerate(history["quantities"])}
    await s.restock(*((v, STOCK) for v in lines))

    built: dict[tuple[str, int], dict[str, Any]] = {}
    events = []
    for kind, slot in history["arrival"]:
        if (kind, slot) not in built:
            builder = BUILDERS[kind]
            built[(kind, slot)] = (
                checkout(order_id, lines) if builder is None else builder(order_id)
            )
        events.append(built[(kind, slot)])
    reports = await s.deliver_split(events, history["cuts"])

    assert sum(r.applied for r in reports) == len(built)
    assert sum(r.dead_lettered for r in reports) == 0
    kinds = {kind for kind, _ in history["arrival"]}
    for variant_id, quantity in lines.items():
        assert await s.stock(variant_id) == expected_stock(kinds, quantity), (
            variant_id, history["arrival"], history["cuts"]
        )
    assert await invariant_violations(engine) == []
