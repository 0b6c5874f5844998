"""Reorder arithmetic (CONTRACT.md, "Policies, reorder and suppliers"), pure.

The daily `policies` job computes a variant's demand figures and its reorder point in
SQL (service/adapters/policies_sql.py), set-based over the audit log; the functions
here are the same formulas on values already in hand: the definitions the tests hold
the SQL to, and the suggestion a `stock.reorder` carries.

- **Daily demand**: the units sold (`SALE` rows) each day of the last 30 (a day is 24
  hours counted back from the computation, so no time zone is involved); a day without
  sales is 0. Returns are not netted out: a return puts units back on the shelf, which
  `available` already shows, and demand is what customers bought (the same units sold
  as analytics' `daysOfCover`). The average is the sum over 30; the standard deviation
  is the sample one (n - 1) of the 30 daily totals.
- **Lead time**: the configured one, else the supplier's measured average (every
  delivery of that supplier that said when it was ordered: its `created_at` minus its
  `ordered_at`, in days). None: no computed reorder point.
- **Reorder point** = `average * lead time + 1.65 * stdev * sqrt(lead time)`, rounded
  up to a whole unit (one unit early is cheaper than one late); 1.65 is the z-score of
  a 95% cycle service level. A configured reorder point wins over it.
- **Suggested quantity**: with `max_stock`, up to it: `max_stock - available`.
  Without, enough to cover the lead time plus the review period of demand plus the
  safety stock, `ceil(average * (lead time + review days) + safety - available)`, and
  at least enough to lift `available` above the reorder point (so the next fall
  alerts again). Never negative. `available`, not `on_hand`: units reserved for
  customers are already gone from what can be sold.
- **Days of cover** = `available / average`; None without demand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.domain.errors import InvalidPolicy

#: The z-score of a 95% cycle service level: the safety stock's multiplier.
SERVICE_LEVEL_Z = 1.65
#: The days of demand averaged.
DEMAND_WINDOW_DAYS = 30


@dataclass(frozen=True, slots=True)
class Demand:
    """A variant's daily demand over the window: average and standard deviation."""

    average: float
    stdev: float


def daily_demand(daily_units: Sequence[float], days: int = DEMAND_WINDOW_DAYS) -> Demand:
    """From the net units of the days that had any (the others are 0), at most `days`."""
    if len(daily_units) > days:
        raise ValueError(f"{len(daily_units)} daily totals for a window of {days} days")
    total = sum(daily_units)
    squares = sum(units * units for units in daily_units)
    mean = total / days
    variance = (squares - total * total / days) / (days - 1)
    return Demand(max(mean, 0.0), math.sqrt(max(variance, 0.0)))


def safety_stock(stdev: float, lead_time_days: float) -> float:
    return SERVICE_LEVEL_Z * stdev * math.sqrt(lead_time_days)


def reorder_point(demand: Demand, lead_time_days: float | None) -> int | None:
    """The computed reorder point; None without a lead time."""
    if lead_time_days is None:
        return None
    point = demand.average * lead_time_days + safety_stock(demand.stdev, lead_time_days)
    return math.ceil(round(point, 9))  # 6.0000000000001 from float noise is 6


def effective_lead_time(configured: float | None, measured: float | None) -> float | None:
    return configured if configured is not None else measured


def days_of_cover(available: int, average_daily_demand: float | None) -> float | None:
    if not average_daily_demand:
        return None
    return round(available / average_daily_demand, 2)


def suggested_quantity(
    *,
    available: int,
    reorder_point: int,
    max_stock: int | None,
    demand: Demand | None,
    lead_time_days: float | None,
    review_days: float,
) -> int:
    """Units to order now (see the module's docstring); never negative."""
    if max_stock is not None:
        return max(max_stock - available, 0)
    lead = lead_time_days or 0.0
    wanted = reorder_point + 1 - available
    if demand is not None:
        target = demand.average * (lead + review_days) + safety_stock(demand.stdev, lead)
        wanted = max(wanted, math.ceil(round(target - available, 9)))
    return max(wanted, 0)


@dataclass(frozen=True, slots=True)
class ReorderPolicy:
    """What a `stock.reorder` needs beyond the crossing: a variant's policy and figures
    as stored (`avg_daily_demand` and `demand_stdev` None until the job has run)."""

    supplier_id: str | None
    max_stock: int | None
    lead_time_days: float | None
    measured_lead_time_days: float | None
    avg_daily_demand: float | None
    demand_stdev: float | None

    @property
    def lead_time(self) -> float | None:
        return effective_lead_time(self.lead_time_days, self.measured_lead_time_days)

    @property
    def demand(self) -> Demand | None:
        if self.avg_daily_demand is None:
            return None
        return Demand(self.avg_daily_demand, self.demand_stdev or 0.0)


@dataclass(frozen=True, slots=True)
class Reorder:
    """A `stock.reorder`, as published."""

    variant_id: str
    product_id: str
    supplier_id: str | None
    available: int
    reorder_point: int
    suggested_quantity: int
    days_of_cover: float | None
    lead_time_days: float | None


def reorder(
    variant_id: str,
    product_id: str,
    available: int,
    point: int,
    policy: ReorderPolicy,
    review_days: float,
) -> Reorder:
    """The `stock.reorder` of a variant whose `available` just fell to `point` or below."""
    demand = policy.demand
    lead = policy.lead_time
    return Reorder(
        variant_id=variant_id,
        product_id=product_id,
        supplier_id=policy.supplier_id,
        available=available,
        reorder_point=point,
        suggested_quantity=suggested_quantity(
            available=available,
            reorder_point=point,
            max_stock=policy.max_stock,
            demand=demand,
            lead_time_days=lead,
            review_days=review_days,
        ),
        days_of_cover=days_of_cover(available, demand.average if demand else None),
        lead_time_days=lead,
    )


def check_policy(reorder_point: int | None, max_stock: int | None) -> None:
    """A configured `max_stock` must be above the configured reorder point: ordering up
    to a level at or below it would never lift `available` above the point."""
    if reorder_point is not None and max_stock is not None and max_stock <= reorder_point:
        raise InvalidPolicy(
            f"maxStock {max_stock} must be above reorderPoint {reorder_point}: ordering up "
            "to it would never lift the stock above the reorder point"
        )
