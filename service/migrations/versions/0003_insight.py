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
    # Policies (CONTRACT.md, "Policies, reorder and suppliers"): what a person
    # configures per variant, and what the daily `policies` job computes from the audit
    # log (service/application/policies.py). The ledger reads only the effective reorder
    # point, COALESCE(reorder_point, computed_reorder_point), with the variant's lock.
    """
    ALTER TABLE variants
        ADD COLUMN reorder_point bigint,
        ADD COLUMN max_stock bigint,
        ADD COLUMN lead_time_days numeric,
        ADD COLUMN supplier_id text,
        ADD COLUMN avg_daily_demand numeric,
        ADD COLUMN demand_stdev numeric,
        ADD COLUMN measured_lead_time_days numeric,
        ADD COLUMN computed_reorder_point bigint,
        ADD COLUMN out_of_stock_since timestamptz,
        ADD CONSTRAINT reorder_point_ok CHECK (reorder_point IS NULL OR reorder_point >= 0),
        ADD CONSTRAINT max_stock_ok CHECK (max_stock IS NULL OR max_stock > 0),
        ADD CONSTRAINT lead_time_ok CHECK (
            lead_time_days IS NULL OR (lead_time_days >= 0 AND lead_time_days <= 365)
        )
    """,
    # stock.replenished needs when a variant ran out: for one out of stock now, the
    # first change after its last row with stock (a variant never in stock stays NULL).
    """
    UPDATE variants AS v SET out_of_stock_since = s.since
    FROM (
        SELECT a.variant_id, min(a.created_at) AS since
        FROM variants AS o
        JOIN audit_log AS a ON a.variant_id = o.variant_id
        WHERE o.on_hand = o.reserved
          AND a.version > (
              SELECT max(b.version) FROM audit_log AS b
              WHERE b.variant_id = o.variant_id AND b.on_hand_after > b.reserved_after
          )
        GROUP BY a.variant_id
    ) AS s
    WHERE v.variant_id = s.variant_id
    """,
    # A restock may name its supplier and when it was ordered: that delivery's lead time.
    """
    ALTER TABLE audit_log ADD COLUMN supplier_id text, ADD COLUMN ordered_at timestamptz
    """,
    # Deliveries by supplier (the measured lead times): only restocks that name one.
    """
    CREATE INDEX audit_log_deliveries ON audit_log (supplier_id, created_at)
        INCLUDE (ordered_at) WHERE supplier_id IS NOT NULL
    """,
    # Analytics (docs/analytics.md): the sales of a time range across every variant
    # (abcClass, and the rollup job's day) from an index of the SALE rows alone.
    """
    CREATE INDEX audit_log_sales ON audit_log (created_at)
        INCLUDE (variant_id, delta_on_hand) WHERE change_type = 'SALE'
    """,
    # Units sold per variant and UTC day, for the days before `complete_before` of its
    # row in `rollups` (the `rollup` job fills whole past days; exact: no row can be
    # written into them any more).
    """
    CREATE TABLE variant_daily_sales (
        variant_id text NOT NULL,
        day date NOT NULL,
        units_sold bigint NOT NULL,
        PRIMARY KEY (variant_id, day)
    )
    """,
    """
    CREATE INDEX variant_daily_sales_day ON variant_daily_sales (day)
        INCLUDE (variant_id, units_sold)
    """,
    """
    CREATE TABLE rollups (
        name text PRIMARY KEY,
        complete_before timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # abcClass's ranking of every variant over the 90 whole days before the day in its
    # `rollups` row: how many variants sold each number of units (the rollup job).
    """
    CREATE TABLE abc_tiers (
        units bigint PRIMARY KEY,
        variants bigint NOT NULL
    )
    """,
    # Reports (service/application/reports.py): each period's figures as last written,
    # one row per kind and period (a report written again replaces its row); the
    # latest of a kind is the one with the latest period_start (the primary key).
    """
    CREATE TABLE reports (
        kind text NOT NULL,
        period_start timestamptz NOT NULL,
        period_end timestamptz NOT NULL,
        generated_at timestamptz NOT NULL DEFAULT now(),
        figures jsonb NOT NULL,
        files jsonb NOT NULL DEFAULT '{}'::jsonb,
        PRIMARY KEY (kind, period_start),
        CONSTRAINT report_kind_known CHECK (kind IN ('daily', 'weekly', 'monthly')),
        CONSTRAINT report_period_ok CHECK (period_start < period_end)
    )
    """,
]

DOWNGRADE = [
    """
    DROP TABLE reports
    """,
    """
    DROP TABLE anomalies
    """,
    """
    DROP INDEX audit_log_deliveries
    """,
    """
    ALTER TABLE audit_log DROP COLUMN supplier_id, DROP COLUMN ordered_at
    """,
    """
    ALTER TABLE variants
        DROP COLUMN reorder_point, DROP COLUMN max_stock, DROP COLUMN lead_time_days,
        DROP COLUMN supplier_id, DROP COLUMN avg_daily_demand, DROP COLUMN demand_stdev,
        DROP COLUMN measured_lead_time_days, DROP COLUMN computed_reorder_point,
        DROP COLUMN out_of_stock_since
    """,
    """
    DROP TABLE abc_tiers
    """,
    """
    DROP TABLE rollups
    """,
    """
    DROP TABLE variant_daily_sales
    """,
    """
    DROP INDEX audit_log_sales
    """,
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
