"""The reorder arithmetic of service/domain/replenishment.py, against hand computations."""

from __future__ import annotations

import math
import statistics

import pytest

from service.domain.replenishment import (
    Demand,
    ReorderPolicy,
    daily_demand,
    days_of_cover,
    effective_lead_time,
    reorder,
    reorder_point,
    safety_stock,
    suggested_quantity,
)


def test_daily_demand_counts_the_days_without_sales_as_zero() -> None:
    # 30 days: 10 days of 3 units, 20 days of none. Mean 1; sample stdev by hand:
    # sum of squared deviations = 10 * (3-1)^2 + 20 * (0-1)^2 = 60; 60 / 29.
    demand = daily_demand([3] * 10)
    assert demand.average == pytest.approx(1.0)
    assert demand.stdev == pytest.approx(math.sqrt(60 / 29))
    assert demand.stdev == pytest.approx(statistics.stdev([3] * 10 + [0] * 20))


def test_no_sales_is_no_demand() -> None:
    assert daily_demand([]) == Demand(0.0, 0.0)


def test_more_daily_totals_than_days_is_a_mistake() -> None:
    with pytest.raises(ValueError):
        daily_demand([1] * 31)


def test_reorder_point_is_lead_time_demand_plus_safety_stock_rounded_up() -> None:
    demand = Demand(average=2.0, stdev=1.5)
    # 2 * 4 + 1.65 * 1.5 * sqrt(4) = 8 + 4.95 = 12.95 -> 13
    assert safety_stock(1.5, 4) == pytest.approx(4.95)
    assert reorder_point(demand, 4) == 13
    assert reorder_point(Demand(2.0, 0.0), 3) == 6  # exact: no rounding up past it
    assert reorder_point(demand, None) is None
    assert reorder_point(demand, 0) == 0


def test_the_configured_lead_time_wins_over_the_measured_one() -> None:
    assert effective_lead_time(5, 2.5) == 5
    assert effective_lead_time(None, 2.5) == 2.5
    assert effective_lead_time(None, None) is None
    assert effective_lead_time(0, 2.5) == 0


def test_days_of_cover() -> None:
    assert days_of_cover(10, 4.0) == 2.5
    assert days_of_cover(10, 3.0) == 3.33
    assert days_of_cover(10, 0.0) is None
    assert days_of_cover(10, None) is None


def test_suggested_quantity_orders_up_to_max_stock() -> None:
    quantity = suggested_quantity(
        available=8, reorder_point=10, max_stock=50, demand=Demand(2, 1), lead_time_days=4,
        review_days=7,
    )
    assert quantity == 42
    assert suggested_quantity(
        available=60, reorder_point=10, max_stock=50, demand=None, lead_time_days=None,
        review_days=7,
    ) == 0


def test_suggested_quantity_covers_lead_time_and_review_days_plus_safety_stock() -> None:
    # 2 * (4 + 7) + 1.65 * 1.5 * 2 = 22 + 4.95 = 26.95; minus 8 available = 18.95 -> 19
    quantity = suggested_quantity(
        available=8, reorder_point=13, max_stock=None, demand=Demand(2, 1.5), lead_time_days=4,
        review_days=7,
    )
    assert quantity == 19


def test_suggested_quantity_lifts_available_above_the_point_at_least() -> None:
    # Without demand figures (the job has not run) or with too little demand.
    assert suggested_quantity(
        available=3, reorder_point=10, max_stock=None, demand=None, lead_time_days=None,
        review_days=7,
    ) == 8
    assert suggested_quantity(
        available=3, reorder_point=10, max_stock=None, demand=Demand(0.1, 0), lead_time_days=2,
        review_days=7,
    ) == 8


def test_a_reorder_carries_the_policy_and_the_figures() -> None:
    policy = ReorderPolicy(
        supplier_id="acme",
        max_stock=None,
        lead_time_days=None,
        measured_lead_time_days=4.0,
        avg_daily_demand=2.0,
        demand_stdev=1.5,
    )
    event = reorder("tee", "p-tee", 8, 13, policy, review_days=7)
    assert event.supplier_id == "acme"
    assert event.lead_time_days == 4.0
    assert event.suggested_quantity == 19
    assert event.days_of_cover == 4.0
    bare = reorder("tee", "p-tee", 8, 10, ReorderPolicy(None, None, None, None, None, None), 7)
    assert (bare.supplier_id, bare.lead_time_days, bare.days_of_cover) == (None, None, None)
    assert bare.suggested_quantity == 3
