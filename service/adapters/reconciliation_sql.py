"""Reconciliation's SQL: every invariant of CONTRACT.md checked in one statement.

One statement, so one snapshot: a writer's transaction (variant row, audit rows,
order lines) is seen whole or not at all, and nothing is locked. The shape of the
plan is the point (docs/reconciliation.md has it measured at 1,000,000 variants and
20,000,000 audit rows):

* the audit log is read in variant order from its unique index
  `audit_log_variant_version (variant_id, version) INCLUDE (delta_on_hand)`, an
  index-only scan, and aggregated one variant at a time as it streams past (count,
  first and last version, sum of `delta_on_hand`): no hash table of every variant,
  no sort, no read of the table itself, never a correlated subquery per variant;
* that stream is merged with `variants` in key order; the lines of RESERVED orders
  (a small set: holds last minutes) are summed per variant in a hash table;
* the joins are FULL, so a variant row deleted behind the service's back (audit
  rows or held lines without a row) is found too: a missing row reads as zeros.

Only the variants with something wrong leave the join; each of them is then turned
into one row per broken check (`kind`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

#: Memory for each sort or hash of the statement, for its transaction only (`SET
#: LOCAL`). The audit log streams through in index order whatever this is; it is
#: for the hash of the held lines and the join with `variants`, which the planner
#: then keeps in memory at 1,000,000 variants (docs/reconciliation.md).
WORK_MEM = "64MB"

_SET_WORK_MEM = text(f"SET LOCAL work_mem = '{WORK_MEM}'")

#: Each variant's facts, then the variants with any broken check, then one row per
#: broken check. `expected` is what the other side of the invariant says, `actual` what
#: the variant row holds:
#:
#: * `bounds`: `on_hand < 0` (expected 0, actual on_hand), else `reserved < 0`
#:   (expected 0, actual reserved), else `reserved > on_hand` (expected on_hand, the
#:   most that may be reserved; actual reserved);
#: * `reserved_mismatch`: expected the sum of the lines of RESERVED orders, actual
#:   `reserved`;
#: * `ledger_mismatch`: expected 0 (every variant starts at zero: the service creates
#:   them at 0 and restocks them, in the same transaction) plus the sum of the audit
#:   log's `delta_on_hand`, actual `on_hand`;
#: * `version_gap`: expected N, the number of audit rows (versions must run 1..N and
#:   the row must be at N); actual the highest audit version when the log's versions
#:   do not run 1..N, else the row's `version`.
FIND_DISCREPANCIES = text(
    """
    WITH audit AS (
        SELECT variant_id,
               count(*) AS entries,
               min(version) AS first_version,
               max(version) AS last_version,
               sum(delta_on_hand) AS on_hand_moves
        -- In index order: the planner then streams the index-only scan into a
        -- GroupAggregate instead of building a hash table of every variant.
        FROM (SELECT variant_id, version, delta_on_hand FROM audit_log ORDER BY variant_id) AS log
        GROUP BY variant_id
    ),
    held AS (
        SELECT l.variant_id, sum(l.quantity) AS held
        FROM orders AS o
        JOIN order_lines AS l ON l.order_id = o.order_id
        WHERE o.phase = 'RESERVED'
        GROUP BY l.variant_id
    ),
    facts AS (
        SELECT coalesce(v.variant_id, a.variant_id, h.variant_id) AS variant_id,
               coalesce(v.product_id, a.variant_id, h.variant_id) AS product_id,
               coalesce(v.on_hand, 0) AS on_hand,
               coalesce(v.reserved, 0) AS reserved,
               coalesce(v.version, 0) AS version,
               coalesce(a.entries, 0) AS entries,
               coalesce(a.first_version, 1) AS first_version,
               coalesce(a.last_version, 0) AS last_version,
               coalesce(a.on_hand_moves, 0) AS on_hand_moves,
               coalesce(h.held, 0) AS held
        FROM variants AS v
        FULL JOIN audit AS a ON a.variant_id = v.variant_id
        FULL JOIN held AS h ON h.variant_id = coalesce(v.variant_id, a.variant_id)
    ),
    suspects AS (
        SELECT *,
               (first_version <> 1 OR last_version <> entries) AS log_gap
        FROM facts
        WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand
           OR reserved <> held
           OR on_hand <> on_hand_moves
           OR first_version <> 1 OR last_version <> entries OR version <> entries
    )
    SELECT (SELECT count(*) FROM variants) AS checked_variants,
           coalesce(
               jsonb_agg(
                   jsonb_build_object(
                       'variant_id', s.variant_id, 'product_id', s.product_id,
                       'kind', d.kind, 'expected', d.expected, 'actual', d.actual
                   )
                   ORDER BY s.variant_id, d.kind
               ),
               '[]'::jsonb
           ) AS found
    FROM suspects AS s
    CROSS JOIN LATERAL (
        VALUES
            ('bounds',
             CASE WHEN s.on_hand < 0 OR s.reserved < 0 THEN 0 ELSE s.on_hand END,
             CASE WHEN s.on_hand < 0 THEN s.on_hand ELSE s.reserved END,
             s.on_hand < 0 OR s.reserved < 0 OR s.reserved > s.on_hand),
            ('reserved_mismatch', s.held, s.reserved, s.reserved <> s.held),
            ('ledger_mismatch', s.on_hand_moves, s.on_hand, s.on_hand <> s.on_hand_moves),
            ('version_gap',
             s.entries,
             CASE WHEN s.log_gap THEN s.last_version ELSE s.version END,
             s.log_gap OR s.version <> s.entries)
    ) AS d(kind, expected, actual, broken)
    WHERE d.broken
    """
)

#: What each variant's audit log adds up to (invariant 3's right-hand side).
BOOKED_ON_HAND = text(
    """
    SELECT variant_id, sum(delta_on_hand) AS booked
    FROM audit_log WHERE variant_id = ANY(CAST(:ids AS text[]))
    GROUP BY variant_id
    """
)

INSERT_RUN = text(
    """
    INSERT INTO reconciliation_runs (
        run_id, actor, started_at, finished_at, checked_variants, discrepancies
    )
    VALUES (
        :run_id, :actor, :started_at, :finished_at, :checked_variants,
        CAST(CAST(:discrepancies AS text) AS jsonb)
    )
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
    """
)

_RUN_COLUMNS = "run_id, actor, started_at, finished_at, checked_variants, discrepancies"

SELECT_RUN = text(f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs WHERE run_id = :run_id")

#: From the `reconciliation_runs_latest` index: the newest entry, read backwards.
SELECT_LATEST_RUN = text(
    f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs ORDER BY finished_at DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class FoundRow:
    variant_id: str
    product_id: str
    kind: str
    expected: int
    actual: int


async def find_discrepancies(conn: AsyncConnection) -> tuple[int, list[FoundRow]]:
    """(variants checked, one row per broken check, by variant and kind), from one
    statement: one snapshot, so the count and the checks describe the same moment."""
    await conn.execute(_SET_WORK_MEM)
    checked, found = (await conn.execute(FIND_DISCREPANCIES)).one()
    return int(checked), [
        FoundRow(
            str(f["variant_id"]), str(f["product_id"]), str(f["kind"]),
            int(f["expected"]), int(f["actual"]),
        )
        for f in found
    ]
