"""The SQL of the anomaly rules (`service/domain/anomaly_rules.py`): each question one
set-based statement over the audit log, answered with a handful of numbers per variant
(never a variant's history row by row in Python).

* `ADJUSTMENT_HISTORY`: for the variants one adjust request changes, their age and the
  net non-sale change of each of the 90 days before it.
* `WEEKLY_LOSSES`: for every variant that lost at least `min_units` in the judged week,
  its losses of that week and of the 8 weeks before.

The first reads the audit log through its `(variant_id, version)` index, the second
through `audit_log_losses` (the negative ADJUSTMENT rows by time); docs/design.md,
"Anomaly rules", says what they cost.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.anomaly_rules import BASELINE_WEEKS, HISTORY_DAYS, AdjustmentHistory

#: The change types whose moves are a variant's "non-sale changes": deliveries, returns
#: and corrections. SALE takes units out; RESERVE, RELEASE and EXPIRE move `reserved`
#: only (their `delta_on_hand` is 0).
NON_SALE_CHANGES = ("RESTOCK", "RETURN", "ADJUSTMENT")

#: Per wanted variant: days since its first audit row (version 1's time; NULL without
#: one), and its net non-sale change per day for the last `:days` days (fewer for a
#: younger variant), newest first. Day k is the 24 hours ending k days before the
#: transaction's `now()`, i.e. counted back from the adjustment, not calendar days.
#: Rows of the transaction itself (`created_at = now()`) are not history.
ADJUSTMENT_HISTORY = text(
    f"""
    WITH wanted AS (
        SELECT DISTINCT variant_id FROM unnest(CAST(:ids AS text[])) AS t(variant_id)
    ),
    born AS (
        SELECT w.variant_id,
               (SELECT a.created_at FROM audit_log AS a
                WHERE a.variant_id = w.variant_id ORDER BY a.version LIMIT 1) AS first_at
        FROM wanted AS w
    ),
    spans AS (
        SELECT variant_id,
               extract(epoch FROM now() - first_at) / 86400.0 AS history_days,
               least(CAST(:days AS int),
                     ceil(extract(epoch FROM now() - first_at) / 86400.0))::int AS days
        FROM born
    ),
    moves AS (
        SELECT a.variant_id,
               floor(extract(epoch FROM now() - a.created_at) / 86400.0)::int AS day,
               sum(a.delta_on_hand)::bigint AS moved
        FROM audit_log AS a
        JOIN wanted AS w ON w.variant_id = a.variant_id
        WHERE a.change_type IN ({", ".join(f"'{c}'" for c in NON_SALE_CHANGES)})
          AND a.created_at > now() - make_interval(days => CAST(:days AS int))
          AND a.created_at < now()
        GROUP BY 1, 2
    )
    SELECT s.variant_id,
           coalesce(s.history_days, 0)::float8 AS history_days,
           coalesce(
               array_agg(coalesce(m.moved, 0) ORDER BY d.day) FILTER (WHERE d.day IS NOT NULL),
               '{{}}'
           ) AS daily
    FROM spans AS s
    LEFT JOIN LATERAL generate_series(0, s.days - 1) AS d(day) ON true
    LEFT JOIN moves AS m ON m.variant_id = s.variant_id AND m.day = d.day
    GROUP BY s.variant_id, s.history_days
    """
)


async def adjustment_histories(
    conn: AsyncConnection, variant_ids: Collection[str]
) -> dict[str, AdjustmentHistory]:
    """The history of each of `variant_ids`, as of the transaction's start."""
    if not variant_ids:
        return {}
    rows = await conn.execute(
        ADJUSTMENT_HISTORY, {"ids": sorted(set(variant_ids)), "days": HISTORY_DAYS}
    )
    return {
        row.variant_id: AdjustmentHistory(float(row.history_days), tuple(row.daily))
        for row in rows
    }


#: The judged week: the last complete ISO week (Monday 00:00 UTC to the next Monday)
#: before the database's `now()`, and its label (`2026-W47`).
LAST_COMPLETE_WEEK = text(
    """
    SELECT start, to_char(start AT TIME ZONE 'UTC', 'IYYY-"W"IW') AS label
    FROM (SELECT (date_trunc('week', now() AT TIME ZONE 'UTC') - interval '7 days')
                 AT TIME ZONE 'UTC' AS start) AS w
    """
)

#: Every variant whose losses in the week starting `:week_start` are at least
#: `:min_units`: its product, its losses per week (index 0 the judged week, 1..8 the
#: weeks before it, weeks without any loss as 0), and whether an `unusual_shrinkage`
#: of this week (`:label`) was raised for it already. A loss is a negative ADJUSTMENT:
#: a manual adjust, or a count apply (reason `cycle_count`); its units are `-delta`.
WEEKLY_LOSSES = text(
    f"""
    WITH losses AS (
        SELECT a.variant_id,
               floor(extract(epoch FROM CAST(:week_start AS timestamptz) + interval '7 days'
                                        - a.created_at) / 604800.0)::int AS weeks_ago,
               sum(-a.delta_on_hand)::bigint AS lost
        FROM audit_log AS a
        WHERE a.change_type = 'ADJUSTMENT' AND a.delta_on_hand < 0
          AND a.created_at >= CAST(:week_start AS timestamptz)
                              - make_interval(days => 7 * {BASELINE_WEEKS})
          AND a.created_at < CAST(:week_start AS timestamptz) + interval '7 days'
        GROUP BY 1, 2
    ),
    judged AS (
        SELECT variant_id FROM losses WHERE weeks_ago = 0 AND lost >= :min_units
    )
    SELECT j.variant_id,
           coalesce(v.product_id, j.variant_id) AS product_id,
           array_agg(coalesce(l.lost, 0) ORDER BY w.n) AS weekly,
           EXISTS (
               SELECT 1 FROM anomalies AS an
               WHERE an.variant_id = j.variant_id AND an.rule = 'unusual_shrinkage'
                 AND an.reference = :label
           ) AS raised
    FROM judged AS j
    CROSS JOIN generate_series(0, {BASELINE_WEEKS}) AS w(n)
    LEFT JOIN losses AS l ON l.variant_id = j.variant_id AND l.weeks_ago = w.n
    LEFT JOIN variants AS v ON v.variant_id = j.variant_id
    GROUP BY j.variant_id, v.product_id
    ORDER BY j.variant_id
    """
)

#: Serialises shrinkage checks (a scheduled run and `stock jobs run shrinkage` at once),
#: so a week is raised once per variant: the second waits, then finds it raised.
SHRINKAGE_LOCK = text("SELECT pg_advisory_xact_lock(hashtext('stock-anomaly-shrinkage'))")


@dataclass(frozen=True, slots=True)
class WeekLosses:
    variant_id: str
    product_id: str
    #: Units lost in the judged week.
    week: int
    #: Units lost in each of the 8 weeks before it, the most recent first.
    baseline: tuple[int, ...]
    #: An `unusual_shrinkage` of this week was raised for the variant already.
    raised: bool


async def last_complete_week(conn: AsyncConnection) -> tuple[datetime, str]:
    row = (await conn.execute(LAST_COMPLETE_WEEK)).one()
    return row.start, row.label


async def weekly_losses(
    conn: AsyncConnection, week_start: datetime, label: str, min_units: int
) -> list[WeekLosses]:
    rows = await conn.execute(
        WEEKLY_LOSSES, {"week_start": week_start, "label": label, "min_units": min_units}
    )
    return [
        WeekLosses(
            row.variant_id,
            row.product_id,
            int(row.weekly[0]),
            tuple(int(x) for x in row.weekly[1:]),
            bool(row.raised),
        )
        for row in rows
    ]
