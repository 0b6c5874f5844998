"""Reconciliation's SQL: every invariant of CONTRACT.md checked in one statement.

One statement, so one snapshot: a writer's transaction (variant row, audit rows,
order lines) is seen whole or not at all, and nothing is locked. The shape of the
plan is the point (docs/reconciliation.md has it measured at 1,000,000 variants and
20,000,000 audit rows):

* by default each variant's log is read from its checkpoint on (`ledger_checkpoints`:
  the sum of its versions 1..N as an earlier run read them), one index range scan per
  variant whose row moved since, so a run costs what changed since the last one, not
  the whole history;
* read whole (`--full`), the audit log streams in variant order from its unique index
  `audit_log_variant_version (variant_id, version) INCLUDE (delta_on_hand)`, an
  index-only scan aggregated one variant at a time as it streams past (count, first
  and last version, sum of `delta_on_hand`): no hash table of every variant, no sort,
  no read of the table itself;
* either is merged with `variants` in key order; the lines of RESERVED orders (a small
  set: holds last minutes) are summed per variant in a hash table;
* the joins are FULL, so a variant row deleted behind the service's back (audit
  rows or held lines without a row) is found too: a missing row reads as zeros.

Only the variants with something wrong leave the join; each of them is then turned
into one row per broken check (`kind`). The same statement moves the checkpoints of
the variants whose log ran without a gap up to where it read.
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
#: The planner cannot know how few variants moved, prices a range scan for each, and
#: on a server with JIT compiles the statement: 0.8 s of compiling for 0.5 s of work,
#: measured at 100,000 variants on PostgreSQL 15.
_NO_JIT = text("SET LOCAL jit = off")

#: Each variant's audit log read whole, in index order: the planner then streams the
#: index-only scan into a GroupAggregate instead of building a hash table of every
#: variant. `checkpointed`: the variant's checkpoint, so that only changed ones are
#: written back.
_WHOLE_LOG = """
    SELECT log.variant_id, log.entries, log.first_version, log.last_version,
           log.on_hand_moves, c.through_version AS checkpointed,
           c.on_hand_moves AS checkpointed_moves
    FROM (
        SELECT variant_id,
               count(*) AS entries,
               min(version) AS first_version,
               max(version) AS last_version,
               sum(delta_on_hand) AS on_hand_moves
        FROM (SELECT variant_id, version, delta_on_hand FROM audit_log ORDER BY variant_id) AS log
        GROUP BY variant_id
    ) AS log
    LEFT JOIN ledger_checkpoints AS c ON c.variant_id = log.variant_id
"""

#: Each variant's log from its checkpoint on: the checkpoint's sum over versions
#: 1..through_version (read gap-free by an earlier run; the log cannot change below
#: it), plus the versions after it. Only a variant whose row moved since (its version
#: is not the checkpoint's), or that has no checkpoint or no row, has its log read: one
#: index range scan each; the others cost a step of a merge of two primary keys (the
#: probe's `moved` condition is a one-time filter: its index is not touched). Found
#: only by a full run: audit rows appended by hand to a variant whose row did not move,
#: and the log of a variant whose row was deleted before any run checkpointed it.
_LOG_SINCE_CHECKPOINTS = """
    SELECT k.variant_id,
           coalesce(k.through_version, 0) + fresh.entries AS entries,
           CASE WHEN k.through_version IS NULL THEN fresh.first_version ELSE 1 END
               AS first_version,
           coalesce(fresh.last_version, k.through_version) AS last_version,
           coalesce(k.on_hand_moves, 0) + coalesce(fresh.on_hand_moves, 0) AS on_hand_moves,
           k.through_version AS checkpointed,
           k.on_hand_moves AS checkpointed_moves
    FROM (
        SELECT coalesce(v.variant_id, c.variant_id) AS variant_id,
               c.through_version, c.on_hand_moves,
               v.version IS DISTINCT FROM c.through_version AS moved
        FROM variants AS v
        FULL JOIN ledger_checkpoints AS c ON c.variant_id = v.variant_id
    ) AS k
    CROSS JOIN LATERAL (
        SELECT count(*) AS entries,
               min(a.version) AS first_version,
               max(a.version) AS last_version,
               sum(a.delta_on_hand) AS on_hand_moves
        FROM audit_log AS a
        WHERE k.moved
          AND a.variant_id = k.variant_id AND a.version > coalesce(k.through_version, 0)
    ) AS fresh
"""

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
#:
#: In the same statement (so from the same snapshot), each variant whose log ran 1..N
#: without a gap and has moved past its checkpoint gets its checkpoint moved to N: the
#: next run starts there. A log with a gap keeps its old checkpoint, so the gap is
#: read, and reported, again.
_FIND_DISCREPANCIES = """
    WITH audit AS ({log}),
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
               a.checkpointed,
               a.checkpointed_moves,
               coalesce(h.held, 0) AS held
        FROM variants AS v
        FULL JOIN audit AS a ON a.variant_id = v.variant_id
        FULL JOIN held AS h ON h.variant_id = coalesce(v.variant_id, a.variant_id)
    ),
    checkpoints AS (
        INSERT INTO ledger_checkpoints AS c (variant_id, through_version, on_hand_moves)
        SELECT variant_id, entries, on_hand_moves
        FROM facts
        WHERE entries > 0 AND first_version = 1 AND last_version = entries
          AND (checkpointed, checkpointed_moves) IS DISTINCT FROM (entries, on_hand_moves)
        ON CONFLICT (variant_id) DO UPDATE
            SET through_version = excluded.through_version,
                on_hand_moves = excluded.on_hand_moves,
                checked_at = now()
            -- a run that began earlier and committed later never moves one back
            WHERE c.through_version <= excluded.through_version
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

#: Every check, reading each variant's whole audit log (`stock reconcile --full`).
FIND_DISCREPANCIES = text(_FIND_DISCREPANCIES.format(log=_WHOLE_LOG))
#: Every check, reading each variant's log from its checkpoint on (the default).
FIND_DISCREPANCIES_SINCE_CHECKPOINTS = text(
    _FIND_DISCREPANCIES.format(log=_LOG_SINCE_CHECKPOINTS)
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


async def find_discrepancies(
    conn: AsyncConnection, *, whole_log: bool
) -> tuple[int, list[FoundRow]]:
    """(variants checked, one row per broken check, by variant and kind), from one
    statement: one snapshot, so the count and the checks describe the same moment.
    `whole_log`: read every audit row, not only those past the checkpoints."""
    await conn.execute(_SET_WORK_MEM)
    if not whole_log:
        await conn.execute(_NO_JIT)
    statement = FIND_DISCREPANCIES if whole_log else FIND_DISCREPANCIES_SINCE_CHECKPOINTS
    checked, found = (await conn.execute(statement)).one()
    return int(checked), [
        FoundRow(
            str(f["variant_id"]), str(f["product_id"]), str(f["kind"]),
            int(f["expected"]), int(f["actual"]),
        )
        for f in found
    ]
