"""Jobs whose cost does not grow with the audit log: reconciliation's checkpoints, and
an index of the losses the shrinkage check reads.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`ledger_checkpoints` holds, per variant, the sum of `delta_on_hand` over its audit
versions 1..`through_version`, as a reconciliation read them from the log and found
them running without gaps. The log refuses UPDATE, DELETE and TRUNCATE (migration
0001), and the unique (variant_id, version) index refuses a second row at a version,
so that prefix can never change: the next run reads only the versions after it
(docs/reconciliation.md, "Only what is new"). `stock reconcile --full` reads the whole
log again and rewrites the checkpoints.

`audit_log_losses`: the negative ADJUSTMENT rows by time, with what the shrinkage
check sums (docs/design.md, "Unusual shrinkage"): its 9 weeks are then an index-only
range scan of the losses instead of a sequential scan of the whole log. Few rows
match, so the write path of sales and holds does not maintain it.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


UPGRADE = [
    """
    CREATE TABLE ledger_checkpoints (
        variant_id text PRIMARY KEY,
        through_version bigint NOT NULL,
        on_hand_moves bigint NOT NULL,
        checked_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT through_a_version CHECK (through_version > 0)
    )
    """,
    """
    CREATE INDEX audit_log_losses ON audit_log (created_at)
        INCLUDE (variant_id, delta_on_hand)
        WHERE change_type = 'ADJUSTMENT' AND delta_on_hand < 0
    """,
]

DOWNGRADE = ["DROP INDEX audit_log_losses", "DROP TABLE ledger_checkpoints"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
