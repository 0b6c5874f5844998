"""Policies in SQL: a variant's policy row, the reorder figures of a `stock.reorder`,
and the set-based refresh of the computed columns (service/application/policies.py).

The formulas are service/domain/replenishment.py's, written once here in SQL:

- daily demand: units sold (`SALE` rows, from the partial index `audit_log_sales`) per
  24-hour day counted back from `:now`, over 30 days; days without sales count as 0,
  so the average is the sum / 30 and the sample variance is
  `(sum of squares - sum^2 / 30) / 29`;
- a supplier's measured lead time: the average of `created_at - ordered_at` (days) of
  every restock that names it and its order time (index `audit_log_deliveries`);
- the computed reorder point: `ceil(average * L + 1.65 * stdev * sqrt(L))` with L the
  configured lead time, else the supplier's measured one; NULL without either.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.adapters.tables import variants
from service.domain.replenishment import DEMAND_WINDOW_DAYS, SERVICE_LEVEL_Z, ReorderPolicy

# ------------------------------------------------------------------ formulas

_DAYS = DEMAND_WINDOW_DAYS
#: Units sold per variant and day of the window, then the window's sums per variant.
_DEMAND_SUMS = f"""
    SELECT variant_id, sum(units) AS total, sum(units * units) AS squares
    FROM (
        SELECT variant_id,
               floor(extract(epoch FROM CAST(:now AS timestamptz) - created_at) / 86400),
               -sum(delta_on_hand) AS units
        FROM audit_log
        WHERE change_type = 'SALE'
          AND created_at > CAST(:now AS timestamptz) - interval '{_DAYS} days'
          AND created_at <= CAST(:now AS timestamptz)
          {{where}}
        GROUP BY 1, 2
    ) AS daily(variant_id, day, units)
    GROUP BY variant_id
"""
_SUPPLIER_LEAD_TIMES = """
    SELECT supplier_id, avg(extract(epoch FROM created_at - ordered_at)) / 86400 AS lead_days
    FROM audit_log
    WHERE supplier_id IS NOT NULL AND ordered_at IS NOT NULL {where}
    GROUP BY supplier_id
"""
_AVERAGE = f"COALESCE(d.total, 0) / {_DAYS}.0"
_STDEV = (
    f"sqrt(greatest((COALESCE(d.squares, 0) - COALESCE(d.total, 0) * COALESCE(d.total, 0)"
    f" / {_DAYS}.0) / {_DAYS - 1}.0, 0))"
)
#: Rounded to 9 places before `ceil`, as `replenishment.reorder_point`: sqrt's last
#: digit never pushes an exact point up a unit.
_POINT = (
    f"CASE WHEN f.lead IS NULL THEN NULL "
    f"ELSE ceil(round(f.average * f.lead + {SERVICE_LEVEL_Z} * f.stdev * sqrt(f.lead), 9)) END"
)


def _refresh(scope: str, demand: str, suppliers: str) -> Any:
    """Lock the `scope` variants in key order, compute their figures from `demand` and
    `suppliers`, and write those that changed. Answers the last variant id of the
    scope, how many it held, and how many changed."""
    return text(
        f"""
        WITH scope AS ({scope}),
        figures AS (
            SELECT s.variant_id, {_AVERAGE} AS average, {_STDEV} AS stdev,
                   l.lead_days AS measured, COALESCE(s.lead_time_days, l.lead_days) AS lead
            FROM scope AS s
            LEFT JOIN ({demand}) AS d ON d.variant_id = s.variant_id
            LEFT JOIN ({suppliers}) AS l ON l.supplier_id = s.supplier_id
        ),
        computed AS (
            SELECT f.variant_id, f.average, f.stdev, f.measured, {_POINT} AS point
            FROM figures AS f
        ),
        updated AS (
            UPDATE variants AS v SET
                avg_daily_demand = c.average, demand_stdev = c.stdev,
                measured_lead_time_days = c.measured, computed_reorder_point = c.point
            FROM computed AS c
            WHERE v.variant_id = c.variant_id
              AND (v.avg_daily_demand, v.demand_stdev, v.measured_lead_time_days,
                   v.computed_reorder_point)
                  IS DISTINCT FROM (c.average, c.stdev, c.measured, c.point)
            RETURNING v.variant_id
        )
        SELECT (SELECT max(variant_id) FROM scope), (SELECT count(*) FROM scope),
               (SELECT count(*) FROM updated)
        """
    )


# The daily job: the window's sales and the suppliers' lead times once, into temporary
# tables, then the variants in key-ordered batches, each its own short transaction (a
# batch locks its rows in key order, as every writer does, and only for a moment).
_CREATE_DEMAND = text(
    "CREATE TEMPORARY TABLE policy_demand "
    "(variant_id text PRIMARY KEY, total numeric NOT NULL, squares numeric NOT NULL)"
)
_FILL_DEMAND = text(f"INSERT INTO policy_demand {_DEMAND_SUMS.format(where='')}")
_CREATE_SUPPLIERS = text(
    "CREATE TEMPORARY TABLE policy_suppliers (supplier_id text PRIMARY KEY, lead_days numeric)"
)
_FILL_SUPPLIERS = text(
    f"INSERT INTO policy_suppliers {_SUPPLIER_LEAD_TIMES.format(where='')}"
)
_ANALYZE = text("ANALYZE policy_demand, policy_suppliers")
# The window's aggregation by variant and day fits in memory at a million variants.
_WORK_MEM = text("SET LOCAL work_mem = '64MB'")
_DROP = text("DROP TABLE IF EXISTS policy_demand, policy_suppliers")
_REFRESH_BATCH = _refresh(
    """
    SELECT variant_id, supplier_id, lead_time_days FROM variants
    WHERE variant_id > :after ORDER BY variant_id LIMIT :limit FOR UPDATE
    """,
    # The batch's key range of the table, from its primary key (not a scan of it all).
    """
    SELECT variant_id, total, squares FROM policy_demand
    WHERE variant_id > :after AND variant_id <= (SELECT max(variant_id) FROM scope)
    """,
    "SELECT supplier_id, lead_days FROM policy_suppliers",
)
# One or a few variants (a policy just set): straight from the audit log.
_REFRESH_SOME = _refresh(
    """
    SELECT variant_id, supplier_id, lead_time_days FROM variants
    WHERE variant_id = ANY(CAST(:ids AS text[])) ORDER BY variant_id FOR UPDATE
    """,
    _DEMAND_SUMS.format(where="AND variant_id = ANY(CAST(:ids AS text[]))"),
    _SUPPLIER_LEAD_TIMES.format(
        where="AND supplier_id IN (SELECT supplier_id FROM variants "
        "WHERE variant_id = ANY(CAST(:ids AS text[])))"
    ),
)


@dataclass(frozen=True)
class RefreshCounts:
    variants: int = 0
    changed: int = 0


async def prepare_refresh(conn: AsyncConnection, now: datetime) -> None:
    """The window's sales and the suppliers' lead times, into this session's temporary
    tables (kept across its transactions until `finish_refresh`)."""
    await conn.execute(_DROP)
    await conn.execute(_WORK_MEM)
    await conn.execute(_CREATE_DEMAND)
    await conn.execute(_FILL_DEMAND, {"now": now})
    await conn.execute(_CREATE_SUPPLIERS)
    await conn.execute(_FILL_SUPPLIERS)
    await conn.execute(_ANALYZE)


async def refresh_batch(
    conn: AsyncConnection, after: str, limit: int
) -> tuple[str | None, RefreshCounts]:
    """The next `limit` variants after `after`: the last id (None: no more), counts."""
    last, seen, changed = (
        await conn.execute(_REFRESH_BATCH, {"after": after, "limit": limit})
    ).one()
    return last, RefreshCounts(seen, changed)


async def finish_refresh(conn: AsyncConnection) -> None:
    await conn.execute(_DROP)


async def refresh_variants(
    conn: AsyncConnection, variant_ids: Collection[str], now: datetime
) -> RefreshCounts:
    """The computed columns of these variants, now, in the caller's transaction."""
    _, seen, changed = (
        await conn.execute(_REFRESH_SOME, {"ids": sorted(set(variant_ids)), "now": now})
    ).one()
    return RefreshCounts(seen, changed)


# ------------------------------------------------------------------ one policy

#: Configured columns, by the name the application uses.
CONFIGURED = {
    "low_stock_threshold": variants.c.low_stock_threshold,
    "reorder_point": variants.c.reorder_point,
    "max_stock": variants.c.max_stock,
    "lead_time_days": variants.c.lead_time_days,
    "supplier_id": variants.c.supplier_id,
    "tolerance_percent": variants.c.count_tolerance_percent,
}

_POLICY = """
    SELECT variant_id, product_id, on_hand, reserved, low_stock_threshold, reorder_point,
           max_stock, lead_time_days, supplier_id, count_tolerance_percent AS tolerance_percent,
           avg_daily_demand, demand_stdev, measured_lead_time_days, computed_reorder_point,
           out_of_stock_since
    FROM variants WHERE variant_id = :id
"""
_READ_POLICY = text(_POLICY)
_LOCK_POLICY = text(_POLICY + " FOR UPDATE")


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


async def read_policy(
    conn: AsyncConnection, variant_id: str, *, lock: bool = False
) -> dict[str, Any] | None:
    """The variant's policy row (numbers as floats), or None if there is no variant."""
    row = (await conn.execute(_LOCK_POLICY if lock else _READ_POLICY, {"id": variant_id})).first()
    if row is None:
        return None
    return {name: _number(value) for name, value in row._mapping.items()}


async def write_policy(conn: AsyncConnection, variant_id: str, values: Mapping[str, Any]) -> None:
    """Set the configured columns named in `values` (None clears one)."""
    if values:
        await conn.execute(
            update(variants)
            .where(variants.c.variant_id == variant_id)
            .values({CONFIGURED[name]: value for name, value in values.items()})
        )


# ------------------------------------------------------------------ stock.reorder

_REORDER_POLICIES = text(
    """
    SELECT variant_id, supplier_id, max_stock, lead_time_days, measured_lead_time_days,
           avg_daily_demand, demand_stdev
    FROM variants WHERE variant_id = ANY(CAST(:ids AS text[]))
    """
)


async def reorder_policies(
    conn: AsyncConnection, variant_ids: Collection[str]
) -> dict[str, ReorderPolicy]:
    """What the `stock.reorder`s of these variants say beyond the crossing. Read only
    when the ledger found a crossing: rows this transaction has locked already."""
    found: dict[str, ReorderPolicy] = {}
    for row in await conn.execute(_REORDER_POLICIES, {"ids": sorted(set(variant_ids))}):
        found[row.variant_id] = ReorderPolicy(
            supplier_id=row.supplier_id,
            max_stock=row.max_stock,
            lead_time_days=_number(row.lead_time_days),
            measured_lead_time_days=_number(row.measured_lead_time_days),
            avg_daily_demand=_number(row.avg_daily_demand),
            demand_stdev=_number(row.demand_stdev),
        )
    return found
