"""The fault suite's reference model says what CONTRACT.md allows, no more, no less."""

from __future__ import annotations

from tests.faults.reference import allowed_statuses, expected_stock
from tests.faults.workload import OrderPlan

CATALOGUE = {"a": 1_000_000, "hot": 3}
SCARCE = {"hot"}


def allowed(**plan: object) -> set[str]:
    return set(allowed_statuses(OrderPlan("o", **plan), CATALOGUE, SCARCE))  # type: ignore[arg-type]


def test_on_plentiful_stock_each_history_has_exactly_one_outcome() -> None:
    assert allowed(lines={"a": 1}) == {"RESERVED"}
    assert allowed(lines={"a": 1}, paid=True) == {"CONFIRMED"}
    assert allowed(lines={"a": 1}, failed=True) == {"RELEASED"}
    assert allowed(lines={"a": 1}, failed=True, paid=True) == {"CONFIRMED"}  # success wins


def test_a_cancellation_wins_and_leaves_nothing_held_or_sold() -> None:
    assert allowed(lines={"a": 1}, cancelled=True) == {"REJECTED", "RELEASED"}
    assert allowed(lines={"a": 1}, cancelled=True, paid=True) == {"RETURNED", "CONFIRM_FAILED"}


def test_timing_opens_only_the_outcomes_the_table_can_reach() -> None:
    assert allowed(lines={"hot": 1}) == {"RESERVED", "REJECTED"}
    assert allowed(lines={"hot": 1}, paid=True) == {"CONFIRMED", "CONFIRM_FAILED"}
    # Abandoned: the run ends only once lapsed holds are swept.
    assert allowed(lines={"a": 1}, short_hold=True) == {"EXPIRED"}
    # A lapsed hold on plentiful stock is taken again by its payment.
    assert allowed(lines={"a": 1}, short_hold=True, paid=True) == {"CONFIRMED"}


def test_unknown_variants_and_orders_without_checkout() -> None:
    assert allowed(lines={"a": 1, "nope": 1}) == {"REJECTED"}
    assert allowed(lines={"a": 1, "nope": 1}, paid=True) == {"CONFIRM_FAILED"}
    # Found by `make faults`: a failure that arrives before the checkout leaves it
    # RELEASED (nothing held), whatever the lines.
    assert allowed(lines={"a": 1, "nope": 1}, failed=True) == {"REJECTED", "RELEASED"}
    assert allowed(paid=True) == {"PENDING"}


def test_stock_follows_from_the_statuses() -> None:
    orders = {
        "o1": OrderPlan("o1", {"a": 2, "hot": 1}),
        "o2": OrderPlan("o2", {"hot": 2}),
        "o3": OrderPlan("o3", {"a": 5}),
    }
    statuses = {"o1": "CONFIRMED", "o2": "RESERVED", "o3": "RELEASED"}
    stock = expected_stock(orders, statuses, CATALOGUE)
    assert (stock["a"].on_hand, stock["a"].reserved, stock["a"].sold) == (999_998, 0, 2)
    assert (stock["hot"].on_hand, stock["hot"].reserved, stock["hot"].sold) == (2, 2, 1)
