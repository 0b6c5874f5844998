"""The analytics statements: every figure of docs/analytics.md, set-based over the audit
log, and the daily rollup of units sold that abcClass reads.

How a window is read from the log (docs/analytics.md, "The window"): for each variant,

* `v_to` is the highest version whose `created_at` is before `to`, `v_from` the highest
  before `from` (NULL: none, the level 0): the states at the two ends. The window's
  changes are the versions after `v_from` up to `v_to`, so their `delta_on_hand` add
  up to the level at `to` minus the level at `from`, exactly.
* A change takes effect at the earliest `created_at` of itself and the versions after
  it (up to `v_to`): `created_at` is the transaction's start, and a transaction that
  waited for another's lock writes the later version with the earlier time. Without
  such a wait that is its own `created_at`.
* Each level holds from its change's time to the next one's, or to `to`; the level
  before the first change is the state at `v_from`.

Each bound is one backward scan of the unique index (variant_id, version) from the
top (`v_to`) or from `v_to` (`v_from`, `v_cover`), and the rows between are one range
of it: no other index of the log is needed per variant.
"""

from __future__ import annotations

from sqlalchemy import text

#: The rollup whose row in `rollups` says how far `variant_daily_sales` is complete.
DAILY_SALES = "variant_daily_sales"
#: The row of `rollups` whose `complete_before` is the hour H of `abc_tiers`: the
#: ranking over [H - 90 days, H).
ABC_TIERS = "abc_tiers"


def within_tolerance_sql(variance: str, expected: str, tolerance_percent: str) -> str:
    """service.domain.counts.within_tolerance as an SQL condition on these expressions:
    `|variance| * 100 <= tolerance_percent * expected`, exactly (numeric, no rounding).
    tests/integration/test_analytics.py checks both on the same cases."""
    return f"abs({variance}) * 100 <= {tolerance_percent} * {expected}"


#: The variants of a call, in variant_id order from `after`, one more than `limit` (so
#: the caller knows whether a next page exists): every variant, or those named or of a
#: named product.
SCOPE = text(
    """
    SELECT variant_id, product_id FROM variants
    WHERE (CAST(:everything AS boolean)
           OR variant_id = ANY(CAST(:variant_ids AS text[]))
           OR product_id = ANY(CAST(:product_ids AS text[])))
      AND variant_id > CAST(:after AS text)
    ORDER BY variant_id
    LIMIT :limit
    """
)

#: Which of the named variants and products are not known.
UNKNOWN = text(
    """
    SELECT 'variant' AS kind, id FROM unnest(CAST(:variant_ids AS text[])) AS id
    WHERE NOT EXISTS (SELECT 1 FROM variants AS v WHERE v.variant_id = id)
    UNION ALL
    SELECT 'product', id FROM unnest(CAST(:product_ids AS text[])) AS id
    WHERE NOT EXISTS (SELECT 1 FROM variants AS v WHERE v.product_id = id)
    """
)

#: The database's time, and how far the daily rollup is complete (NULL: never run).
CLOCK = text(
    f"""
    SELECT now() AS now,
           (SELECT complete_before FROM rollups WHERE name = '{DAILY_SALES}')
               AS rollup_complete_before,
           (SELECT complete_before FROM rollups WHERE name = '{ABC_TIERS}') AS tiers_at
    """
)

_WITHIN = within_tolerance_sql("l.counted - l.expected", "l.expected", "l.tolerance_percent")

#: Every figure but abcClass, per variant of `:ids` (in that order). Parameters:
#: :ids, :from_ts, :to_ts, :cover_from (`to` - 30 days).
FIGURES = text(
    f"""
    WITH scope AS (
        SELECT variant_id, ord
        FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS s(variant_id, ord)
    ),
    top AS (
        SELECT s.variant_id, s.ord,
               (SELECT a.version FROM audit_log AS a
                WHERE a.variant_id = s.variant_id AND a.created_at < :to_ts
                ORDER BY a.version DESC LIMIT 1) AS v_to
        FROM scope AS s
    ),
    bounds AS (
        SELECT t.variant_id, t.ord, t.v_to,
               (SELECT a.version FROM audit_log AS a
                WHERE a.variant_id = t.variant_id AND a.version <= t.v_to
                  AND a.created_at < :from_ts
                ORDER BY a.version DESC LIMIT 1) AS v_from,
               (SELECT a.version FROM audit_log AS a
                WHERE a.variant_id = t.variant_id AND a.version <= t.v_to
                  AND a.created_at < :cover_from
                ORDER BY a.version DESC LIMIT 1) AS v_cover
        FROM top AS t
    ),
    log AS (
        SELECT b.variant_id, a.version, a.change_type, a.delta_on_hand,
               a.on_hand_after AS on_hand,
               a.on_hand_after - a.reserved_after AS available,
               a.version > coalesce(b.v_from, 0) AS in_window,
               a.version > coalesce(b.v_cover, 0) AS in_cover,
               min(a.created_at) OVER (
                   PARTITION BY b.variant_id ORDER BY a.version DESC
               ) AS takes_effect
        FROM bounds AS b
        JOIN audit_log AS a ON a.variant_id = b.variant_id
         AND a.version >= least(coalesce(b.v_from, 0), coalesce(b.v_cover, 0))
         AND a.version <= b.v_to
    ),
    steps AS (
        -- The level at `from` (the state at v_from, or 0), then each change of the window.
        SELECT b.variant_id, coalesce(b.v_from, 0) AS version,
               coalesce(l.on_hand, 0) AS on_hand, coalesce(l.available, 0) AS available,
               CAST(:from_ts AS timestamptz) AS starts, false AS is_change
        FROM bounds AS b
        LEFT JOIN log AS l ON l.variant_id = b.variant_id AND l.version = b.v_from
        UNION ALL
        SELECT variant_id, version, on_hand, available, takes_effect, true
        FROM log WHERE in_window
    ),
    spans AS (
        SELECT variant_id, version, on_hand, available, is_change,
               lag(available) OVER w AS available_before,
               extract(epoch FROM lead(starts, 1, CAST(:to_ts AS timestamptz)) OVER w - starts)
                   AS seconds
        FROM steps
        WINDOW w AS (PARTITION BY variant_id ORDER BY version)
    ),
    levels AS (
        SELECT variant_id,
               sum(on_hand * seconds) AS on_hand_seconds,
               sum(available * seconds) AS available_seconds,
               coalesce(sum(seconds) FILTER (WHERE available <= 0), 0) AS out_of_stock_seconds,
               count(*) FILTER (
                   WHERE is_change AND available <= 0 AND available_before > 0
               ) AS stockouts,
               (array_agg(on_hand ORDER BY version))[1] AS on_hand_at_from,
               (array_agg(on_hand ORDER BY version DESC))[1] AS on_hand_at_to,
               (array_agg(available ORDER BY version DESC))[1] AS available_at_to
        FROM spans GROUP BY variant_id
    ),
    moves AS (
        SELECT variant_id,
               -sum(delta_on_hand) FILTER (WHERE in_window AND change_type = 'SALE')
                   AS units_sold,
               sum(delta_on_hand) FILTER (WHERE in_window AND change_type = 'RETURN')
                   AS units_returned,
               sum(delta_on_hand) FILTER (WHERE in_window AND change_type = 'RESTOCK')
                   AS units_restocked,
               sum(delta_on_hand) FILTER (WHERE in_window AND change_type = 'ADJUSTMENT')
                   AS net_adjusted,
               count(*) FILTER (WHERE in_window) AS changes,
               -sum(delta_on_hand) FILTER (WHERE in_cover AND change_type = 'SALE')
                   AS sold_last_30_days
        FROM log GROUP BY variant_id
    ),
    counted AS (
        SELECT l.variant_id, count(*) AS lines, count(*) FILTER (WHERE {_WITHIN}) AS within
        FROM stock_count_lines AS l
        JOIN stock_counts AS c ON c.count_id = l.count_id
        WHERE l.variant_id = ANY(CAST(:ids AS text[])) AND l.counted IS NOT NULL
          AND c.status = 'APPLIED' AND c.closed_at >= :from_ts AND c.closed_at < :to_ts
        GROUP BY l.variant_id
    )
    SELECT b.variant_id,
           coalesce(m.units_sold, 0) AS units_sold,
           coalesce(m.units_returned, 0) AS units_returned,
           coalesce(m.units_restocked, 0) AS units_restocked,
           coalesce(m.net_adjusted, 0) AS net_adjusted,
           coalesce(m.changes, 0) AS changes,
           coalesce(m.sold_last_30_days, 0) AS sold_last_30_days,
           lv.on_hand_seconds, lv.available_seconds, lv.out_of_stock_seconds, lv.stockouts,
           lv.on_hand_at_from, lv.on_hand_at_to, lv.available_at_to,
           coalesce(c.lines, 0) AS count_lines, coalesce(c.within, 0) AS count_lines_within
    FROM bounds AS b
    JOIN levels AS lv ON lv.variant_id = b.variant_id
    LEFT JOIN moves AS m ON m.variant_id = b.variant_id
    LEFT JOIN counted AS c ON c.variant_id = b.variant_id
    ORDER BY b.ord
    """
)

#: The end of both ABC statements: for each variant of :ids (`mine`: its units), the
#: units of the variants that sold more than it and the total (from `tiers`: how many
#: variants sold each number of units), and its class: A while the variants that sold
#: more make less than 80% of the total, B less than 95%, else C (no sales: C).
#: Variants that sold the same share a class.
_RANK = """
    ranked AS (
        SELECT m.variant_id, m.ord, m.units,
               (SELECT coalesce(sum(t.units * t.variants), 0) FROM tiers AS t
                WHERE t.units > m.units) AS sold_by_better,
               (SELECT coalesce(sum(t.units * t.variants), 0) FROM tiers AS t) AS total
        FROM mine AS m
    )
    SELECT variant_id, units, sold_by_better, total,
           CASE WHEN units <= 0 OR total <= 0 THEN 'C'
                WHEN sold_by_better * 100 < 80 * total THEN 'A'
                WHEN sold_by_better * 100 < 95 * total THEN 'B'
                ELSE 'C' END AS abc_class
    FROM ranked
    ORDER BY ord
"""

#: Every variant's units sold over [:abc_from, :abc_to): the rollup's whole days
#: [:day_lo, :day_hi) and the raw SALE rows of the rest ([:abc_from, :raw_lo_end) and
#: [:raw_hi_start, :abc_to)). A row per variant and day with sales: seconds at a million
#: variants (docs/analytics.md, "Scale").
_SOLD = """
    sold AS MATERIALIZED (
        SELECT variant_id, sum(units) AS units
        FROM (
            SELECT variant_id, units_sold AS units FROM variant_daily_sales
            WHERE day >= :day_lo AND day < :day_hi
            UNION ALL
            SELECT variant_id, -delta_on_hand FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :abc_from AND created_at < :raw_lo_end
            UNION ALL
            SELECT variant_id, -delta_on_hand FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :raw_hi_start AND created_at < :abc_to
        ) AS u
        GROUP BY variant_id
    )
"""

#: abcClass from every variant's units (`_SOLD`).
ABC = text(
    f"""
    WITH {_SOLD},
    tiers AS (
        SELECT units, count(*) AS variants FROM sold WHERE units > 0 GROUP BY units
    ),
    mine AS (
        SELECT s.variant_id, s.ord, coalesce(d.units, 0) AS units
        FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS s(variant_id, ord)
        LEFT JOIN sold AS d ON d.variant_id = s.variant_id
    ),
    {_RANK}
    """
)

#: abcClass from `abc_tiers`, the ranking over S = [H - 90 days, H), moved to the 90
#: days before `to`: the SALE rows of [:r1_lo, :r1_hi) count :s1 times, those of
#: [:r2_lo, :r2_hi) :s2 times (for `to` after H: + [H, to) - [H - 90 days, to - 90
#: days)). Each variant they touch (and each of :ids) leaves the tier of its units over
#: S for the tier of its units over the 90 days. Its units over S: the rollup's days
#: [:s_day_lo, :s_day_hi) by its primary key, and the raw SALE rows of S's partial days
#: ([:s_from, :s_raw_lo_end) and [:s_raw_hi_start, :s_to)).
ABC_FROM_TIERS = text(
    f"""
    WITH delta AS (
        SELECT variant_id, sum(units) AS units
        FROM (
            SELECT variant_id, -delta_on_hand * :s1 AS units FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :r1_lo AND created_at < :r1_hi
            UNION ALL
            SELECT variant_id, -delta_on_hand * :s2 FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :r2_lo AND created_at < :r2_hi
        ) AS u
        GROUP BY variant_id
    ),
    edges AS (
        SELECT variant_id, sum(units) AS units
        FROM (
            SELECT variant_id, -delta_on_hand AS units FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :s_from AND created_at < :s_raw_lo_end
            UNION ALL
            SELECT variant_id, -delta_on_hand FROM audit_log
            WHERE change_type = 'SALE' AND created_at >= :s_raw_hi_start AND created_at < :s_to
        ) AS u
        GROUP BY variant_id
    ),
    touched AS (
        SELECT variant_id FROM delta
        UNION
        SELECT unnest(CAST(:ids AS text[]))
    ),
    moved AS MATERIALIZED (
        SELECT t.variant_id,
               coalesce((SELECT sum(r.units_sold) FROM variant_daily_sales AS r
                         WHERE r.variant_id = t.variant_id
                           AND r.day >= :s_day_lo AND r.day < :s_day_hi), 0)
               + coalesce(e.units, 0) AS before,
               coalesce(d.units, 0) AS change
        FROM touched AS t
        LEFT JOIN delta AS d ON d.variant_id = t.variant_id
        LEFT JOIN edges AS e ON e.variant_id = t.variant_id
    ),
    tiers AS MATERIALIZED (
        SELECT units, sum(variants) AS variants
        FROM (
            SELECT units, variants FROM abc_tiers
            UNION ALL
            SELECT before, -1 FROM moved WHERE before > 0
            UNION ALL
            SELECT before + change, 1 FROM moved WHERE before + change > 0
        ) AS t
        GROUP BY units
    ),
    mine AS (
        SELECT s.variant_id, s.ord, coalesce(m.before + m.change, 0) AS units
        FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS s(variant_id, ord)
        LEFT JOIN moved AS m ON m.variant_id = s.variant_id
    ),
    {_RANK}
    """
)

# ------------------------------------------------------------------ the daily rollup

#: The rollup's row, the first time: it starts at the first sale's day.
START_ROLLUP = text(
    f"""
    INSERT INTO rollups (name, complete_before) VALUES ('{DAILY_SALES}', :start)
    ON CONFLICT (name) DO NOTHING
    """
)
#: Locked: one run at a time.
ROLLUP_STATE = text(
    f"SELECT complete_before FROM rollups WHERE name = '{DAILY_SALES}' FOR UPDATE"
)

#: The last UTC midnight (and hour) before which no row can be written any more: before
#: now and before the start of every transaction still open on this database (an audit
#: row's created_at is its transaction's start). Another role's sessions must be
#: visible to this one (the same role, or pg_read_all_stats): docs/analytics.md.
HORIZON = text(
    """
    WITH settled AS (
        SELECT least(now(), coalesce((
            SELECT min(xact_start) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
        ), now())) AS at
    )
    SELECT date_trunc('day', at, 'UTC') AS horizon, date_trunc('hour', at, 'UTC') AS hour,
    (SELECT date_trunc('day', min(created_at), 'UTC') FROM audit_log
     WHERE change_type = 'SALE') AS first_sale_day
    FROM settled
    """
)

ROLL_UP = text(
    """
    INSERT INTO variant_daily_sales (variant_id, day, units_sold)
    SELECT variant_id, CAST(created_at AT TIME ZONE 'UTC' AS date), -sum(delta_on_hand)
    FROM audit_log
    WHERE change_type = 'SALE' AND created_at >= :lo AND created_at < :hi
    GROUP BY 1, 2
    """
)

MARK_ROLLED_UP = text(
    f"""
    UPDATE rollups SET complete_before = :hi, updated_at = now() WHERE name = '{DAILY_SALES}'
    """
)

#: The ranking over the 90 days before an hour (`_SOLD`), replacing the last one; one
#: at a time.
LOCK_TIERS = text(f"SELECT pg_advisory_xact_lock(hashtext('stock-{ABC_TIERS}'))")
TIERS_STATE = text(f"SELECT complete_before FROM rollups WHERE name = '{ABC_TIERS}'")
CLEAR_TIERS = text("DELETE FROM abc_tiers")
BUILD_TIERS = text(
    f"""
    INSERT INTO abc_tiers (units, variants)
    WITH {_SOLD}
    SELECT units, count(*) FROM sold WHERE units > 0 GROUP BY units
    """
)
MARK_TIERS = text(
    f"""
    INSERT INTO rollups (name, complete_before) VALUES ('{ABC_TIERS}', :at)
    ON CONFLICT (name) DO UPDATE SET
        complete_before = excluded.complete_before, updated_at = now()
    """
)
