"""Insight: anomalies kept, and what analytics, policies, alerts and reports need.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


UPGRADE = [
    # Every stock.anomaly raised, kept beside the event (the outbox forgets published
    # rows): what the weekly report and the dashboard list, and what an operator
    # queries. Written in the transaction that raises it, by the unit of work.
    """
    CREATE TABLE anomalies (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        variant_id text NOT NULL,
        product_id text NOT NULL,
        rule text NOT NULL,
        observed numeric NOT NULL,
        expected numeric NOT NULL,
        score numeric,
        reference text,
        actor text NOT NULL,
        raised_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT anomaly_rule_known CHECK (
            rule IN ('count_variance', 'large_adjustment', 'unusual_shrinkage', 'ledger_mismatch')
        )
    )
    """,
    """
    CREATE INDEX anomalies_raised_at ON anomalies (raised_at)
    """,
    """
    CREATE INDEX anomalies_variant ON anomalies (variant_id, raised_at)
    """,
]

DOWNGRADE = [
    """
    DROP TABLE anomalies
    """,
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
