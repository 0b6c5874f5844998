"""Ledger checkpoints: what reconciliation has already read of each variant's audit log.

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
]

DOWNGRADE = ["DROP TABLE ledger_checkpoints"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
