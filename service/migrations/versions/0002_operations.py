"""Operations: who did it (audit actor), stock counts, reconciliation runs, job runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


UPGRADE = [
    # Who did it. Rows written before this release get the best name their cause
    # allows: the event's source for Kafka events, `stock-service` for the service's
    # own work (expiry had no cause), `api:unknown` for requests (tokens had no names
    # then; the CLI wrote `stock-api` too). The one rewrite of the append-only log
    # happens here, with its guard lifted for this transaction only.
    """
    ALTER TABLE audit_log ADD COLUMN actor text
    """,
    """
    ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only
    """,
    """
    UPDATE audit_log SET actor = CASE
        WHEN source_event_source IS NULL THEN 'stock-service'
        WHEN source_event_source = 'stock-api' THEN 'api:unknown'
        WHEN source_event_source = 'stock-cli' THEN 'cli:unknown'
        ELSE source_event_source
    END
    """,
    """
    ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only
    """,
    """
    ALTER TABLE audit_log ALTER COLUMN actor SET NOT NULL
    """,
    # Reconciliation sums each variant's delta_on_hand from this index alone (an
    # index-only scan in variant order, no hash table of every variant): the same
    # unique key, delta_on_hand carried in its leaves. docs/reconciliation.md.
    """
    DROP INDEX audit_log_variant_version
    """,
    """
    CREATE UNIQUE INDEX audit_log_variant_version ON audit_log (variant_id, version)
        INCLUDE (delta_on_hand)
    """,
    # A variant's own count tolerance (percent of the expected quantity); NULL means
    # STOCK_COUNT_TOLERANCE_PERCENT. See docs/design.md, "Stock counts".
    """
    ALTER TABLE variants ADD COLUMN count_tolerance_percent numeric,
        ADD CONSTRAINT count_tolerance_ok CHECK (
            count_tolerance_percent IS NULL
            OR (count_tolerance_percent >= 0 AND count_tolerance_percent <= 100)
        )
    """,
    # Stock counts (stocktakes): a count and its lines. See docs/design.md.
    """
    CREATE TABLE stock_counts (
        count_id text PRIMARY KEY,
        status text NOT NULL,
        blind boolean NOT NULL DEFAULT false,
        reason text,
        product_id text,
        opened_by text NOT NULL,
        opened_at timestamptz NOT NULL DEFAULT now(),
        closed_by text,
        closed_at timestamptz,
        approved_by text,
        CONSTRAINT count_status_known CHECK (status IN ('OPEN', 'APPLIED', 'CANCELLED'))
    )
    """,
    """
    CREATE INDEX stock_counts_open ON stock_counts (opened_at) WHERE status = 'OPEN'
    """,
    """
    CREATE TABLE stock_count_lines (
        count_id text NOT NULL REFERENCES stock_counts (count_id),
        variant_id text NOT NULL REFERENCES variants (variant_id),
        snapshot_on_hand bigint NOT NULL,
        snapshot_version bigint NOT NULL,
        counted bigint,
        counted_at timestamptz,
        counted_by text,
        expected bigint,
        tolerance_percent numeric,
        applied_version bigint,
        PRIMARY KEY (count_id, variant_id),
        CONSTRAINT counted_not_negative CHECK (counted IS NULL OR counted >= 0)
    )
    """,
    # Which open count holds a variant (a variant is in one open count at a time).
    """
    CREATE INDEX stock_count_lines_variant ON stock_count_lines (variant_id)
    """,
    # Reconciliation: every run kept, the latest shown.
    """
    CREATE TABLE reconciliation_runs (
        run_id text PRIMARY KEY,
        actor text NOT NULL,
        started_at timestamptz NOT NULL,
        finished_at timestamptz NOT NULL,
        checked_variants bigint NOT NULL,
        discrepancies jsonb NOT NULL DEFAULT '[]'::jsonb
    )
    """,
    """
    CREATE INDEX reconciliation_runs_latest ON reconciliation_runs (finished_at)
    """,
    # Scheduled jobs: the last run of each, whichever worker ran it.
    """
    CREATE TABLE job_runs (
        job text PRIMARY KEY,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        outcome text NOT NULL,
        detail jsonb NOT NULL DEFAULT '{}'::jsonb,
        runner text NOT NULL,
        last_succeeded_at timestamptz,
        CONSTRAINT job_outcome_known CHECK (outcome IN ('running', 'succeeded', 'failed'))
    )
    """,
    # Retention (service/application/retention.py): each prune batch finds its oldest
    # rows from an index instead of a scan. Finished orders only, by phase: the hot
    # path's RESERVED and PENDING rows are not in it.
    """
    CREATE INDEX processed_events_processed_at ON processed_events (processed_at)
    """,
    """
    CREATE INDEX dead_letters_dead_lettered_at ON dead_letters (dead_lettered_at)
    """,
    """
    CREATE INDEX orders_finished_updated_at ON orders (phase, updated_at)
        WHERE phase IN ('REJECTED', 'CONFIRMED', 'RELEASED', 'EXPIRED', 'RETURNED',
                        'CONFIRM_FAILED')
    """,
]

DOWNGRADE = [
    """
    DROP INDEX orders_finished_updated_at
    """,
    """
    DROP INDEX dead_letters_dead_lettered_at
    """,
    """
    DROP INDEX processed_events_processed_at
    """,
    """
    DROP TABLE job_runs
    """,
    """
    DROP TABLE reconciliation_runs
    """,
    """
    DROP TABLE stock_count_lines
    """,
    """
    DROP TABLE stock_counts
    """,
    """
    ALTER TABLE variants DROP COLUMN count_tolerance_percent
    """,
    """
    DROP INDEX audit_log_variant_version
    """,
    """
    CREATE UNIQUE INDEX audit_log_variant_version ON audit_log (variant_id, version)
    """,
    """
    ALTER TABLE audit_log DROP COLUMN actor
    """,
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
