"""Variant policies (CONTRACT.md, "Policies, reorder and suppliers"): read one, set
one, and the daily `policies` job that recomputes every variant's figures.

A policy is columns of the variant's row. Configured: `low_stock_threshold`,
`reorder_point`, `max_stock`, `lead_time_days`, `supplier_id`, `count_tolerance_percent`.
Computed (service/adapters/policy_store.py, set-based over the audit log):
`avg_daily_demand`, `demand_stdev`, `measured_lead_time_days` (the supplier's) and
`computed_reorder_point`. The ledger triggers `stock.reorder` on the effective reorder
point, the configured one else the computed one (docs/design.md, "Policies, back in
stock and reorder").

Setting a policy is not a stock change: no version, no audit row, no event. It locks
the variant's row (as a stock change would, so the two queue), writes the fields the
request names (null clears one), and recomputes that variant's figures at once so the
answer, and the next change's reorder check, use them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters import policy_store
from service.adapters.database import retry_transient
from service.domain.errors import UnknownVariant
from service.domain.replenishment import (
    Demand,
    check_policy,
    days_of_cover,
    effective_lead_time,
    suggested_quantity,
)
from service.settings import Settings

#: Variants per transaction of the daily job.
REFRESH_BATCH = 1000
#: The configured fields a policy request may set, by their names here.
POLICY_FIELDS = tuple(policy_store.CONFIGURED)

_NOW = text("SELECT now()")


@dataclass(frozen=True)
class PolicyView:
    """A variant's policy: as configured, and in effect with its figures."""

    variant_id: str
    product_id: str
    available: int
    #: Configured (None: unset).
    low_stock_threshold: int | None
    reorder_point: int | None
    max_stock: int | None
    lead_time_days: float | None
    supplier_id: str | None
    tolerance_percent: float | None
    #: In effect: the configured value, else the default or the computed one.
    effective_low_stock_threshold: int
    effective_tolerance_percent: float
    effective_reorder_point: int | None
    #: `configured`, `computed`, or None (no reorder point: no `stock.reorder`).
    reorder_point_source: str | None
    computed_reorder_point: int | None
    effective_lead_time_days: float | None
    measured_lead_time_days: float | None
    #: None until the `policies` job (or a policy request) has computed them.
    average_daily_demand: float | None
    demand_stdev: float | None
    days_of_cover: float | None
    #: What a `stock.reorder` would suggest at this `available` (None without a point).
    suggested_quantity: int | None
    out_of_stock_since: datetime | None


def policy_view(row: Mapping[str, Any], settings: Settings) -> PolicyView:
    configured_point = row["reorder_point"]
    computed_point = row["computed_reorder_point"]
    point = configured_point if configured_point is not None else computed_point
    source = "configured" if configured_point is not None else (
        "computed" if computed_point is not None else None
    )
    lead = effective_lead_time(row["lead_time_days"], row["measured_lead_time_days"])
    average = row["avg_daily_demand"]
    demand = None if average is None else Demand(average, row["demand_stdev"] or 0.0)
    available = row["on_hand"] - row["reserved"]
    threshold = row["low_stock_threshold"]
    tolerance = row["tolerance_percent"]
    return PolicyView(
        variant_id=row["variant_id"],
        product_id=row["product_id"],
        available=available,
        low_stock_threshold=threshold,
        reorder_point=configured_point,
        max_stock=row["max_stock"],
        lead_time_days=row["lead_time_days"],
        supplier_id=row["supplier_id"],
        tolerance_percent=tolerance,
        effective_low_stock_threshold=settings.low_stock_threshold
        if threshold is None
        else threshold,
        effective_tolerance_percent=settings.count_tolerance_percent
        if tolerance is None
        else tolerance,
        effective_reorder_point=point,
        reorder_point_source=source,
        computed_reorder_point=computed_point,
        effective_lead_time_days=lead,
        measured_lead_time_days=row["measured_lead_time_days"],
        average_daily_demand=average,
        demand_stdev=row["demand_stdev"],
        days_of_cover=days_of_cover(available, average),
        suggested_quantity=None
        if point is None
        else suggested_quantity(
            available=available,
            reorder_point=point,
            max_stock=row["max_stock"],
            demand=demand,
            lead_time_days=lead,
            review_days=settings.reorder_review_days,
        ),
        out_of_stock_since=row["out_of_stock_since"],
    )


def _stored(name: str, value: Any) -> Any:
    """Numeric columns take exact decimals: 2.5 days is stored as 2.5, not 2.4999..."""
    if name in ("lead_time_days", "tolerance_percent") and value is not None:
        return Decimal(str(value))
    return value


class Policies:
    def __init__(
        self, engine: AsyncEngine, settings: Settings, *, give_up_after: float | None = None
    ) -> None:
        """`give_up_after`: seconds to wait out a database outage (HTTP answers 503)."""
        self.engine = engine
        self.settings = settings
        self.give_up_after = give_up_after

    async def _retrying(self, what: str, attempt: Any) -> PolicyView:
        view: PolicyView = await retry_transient(
            attempt,
            what=what,
            initial_backoff=self.settings.retry_initial_backoff_seconds,
            max_backoff=self.settings.retry_max_backoff_seconds,
            give_up_after=self.give_up_after,
        )
        return view

    async def get(self, variant_id: str) -> PolicyView:
        async def attempt() -> PolicyView:
            async with self.engine.connect() as conn:
                row = await policy_store.read_policy(conn, variant_id)
            if row is None:
                raise UnknownVariant(variant_id)
            return policy_view(row, self.settings)

        return await self._retrying("policy", attempt)

    async def put(self, variant_id: str, values: Mapping[str, Any]) -> PolicyView:
        """Set the fields in `values` (None clears one; those not named stay as they
        are), check the policy they make, and recompute the variant's figures."""
        unknown = set(values) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"not policy fields: {sorted(unknown)}")

        async def attempt() -> PolicyView:
            async with self.engine.begin() as conn:
                row = await policy_store.read_policy(conn, variant_id, lock=True)
                if row is None:
                    raise UnknownVariant(variant_id)
                merged = {**row, **values}
                check_policy(merged["reorder_point"], merged["max_stock"])
                await policy_store.write_policy(
                    conn, variant_id, {name: _stored(name, v) for name, v in values.items()}
                )
                now: datetime = (await conn.execute(_NOW)).scalar_one()
                await policy_store.refresh_variants(conn, [variant_id], now)
                row = await policy_store.read_policy(conn, variant_id)
            assert row is not None
            return policy_view(row, self.settings)

        return await self._retrying("policy update", attempt)


@dataclass(frozen=True)
class PolicyRefresh:
    """What a run of the `policies` job did."""

    now: datetime
    variants: int
    changed: int

    def as_json(self) -> dict[str, Any]:
        return {"at": self.now.isoformat(), "variants": self.variants, "changed": self.changed}


async def refresh_policies(
    engine: AsyncEngine,
    settings: Settings,
    *,
    now: datetime | None = None,
    batch_size: int = REFRESH_BATCH,
) -> PolicyRefresh:
    """Every variant's demand figures, measured lead time and computed reorder point,
    as of `now` (default: the database's clock). The sales and lead times are read
    once; the variants are written in key-ordered batches, each its own transaction,
    and only those whose figures changed."""
    seen = changed = 0
    async with engine.connect() as conn:
        try:
            if now is None:
                now = (await conn.execute(_NOW)).scalar_one()
            assert now is not None
            await policy_store.prepare_refresh(conn, now)
            await conn.commit()
            after = ""
            while True:
                last, counts = await policy_store.refresh_batch(conn, after, batch_size)
                await conn.commit()
                seen += counts.variants
                changed += counts.changed
                if last is None:
                    break
                after = last
        finally:
            # The temporary tables go with the session anyway if it is broken.
            with contextlib.suppress(Exception):
                await conn.rollback()
                await policy_store.finish_refresh(conn)
                await conn.commit()
    return PolicyRefresh(now, seen, changed)
