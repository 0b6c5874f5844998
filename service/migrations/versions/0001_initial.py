"""Initial schema: variants, orders and their lines, audit log, processed events, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# asyncpg runs one statement per call, so the DDL is a list.
UPGRADE = [
    """
    CREATE TABLE variants (
        variant_id text PRIMARY KEY,
        product_id text NOT NULL,
        on_hand bigint NOT NULL,
        reserved bigint NOT NULL DEFAULT 0,
        version bigint NOT NULL DEFAULT 0,
        low_stock_threshold integer,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT reserved_within_on_hand CHECK (reserved >= 0 AND reserved <= on_hand),
        CONSTRAINT on_hand_not_negative CHECK (on_hand >= 0),
        CONSTRAINT threshold_ok CHECK (low_stock_threshold IS NULL OR low_stock_threshold >= 0)
    )
    """,
    """
    CREATE INDEX variants_product_id ON variants (product_id)
    """,
    """
    CREATE TABLE orders (
        order_id text PRIMARY KEY,
        phase text NOT NULL,
        expires_at timestamptz,
        payment text,
        cancelled boolean NOT NULL DEFAULT false,
        reason text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT phase_known CHECK (phase IN ('PENDING', 'RESERVED', 'REJECTED',
                'CONFIRMED', 'RELEASED', 'EXPIRED', 'RETURNED', 'CONFIRM_FAILED')),
        CONSTRAINT payment_known CHECK (payment IS NULL OR payment IN ('SUCCEEDED', 'FAILED'))
    )
    """,
    """
    CREATE INDEX orders_reserved_expiry ON orders (expires_at) WHERE phase = 'RESERVED'
    """,
    """
    CREATE TABLE order_lines (
        order_id text NOT NULL REFERENCES orders (order_id),
        variant_id text NOT NULL,
        quantity bigint NOT NULL,
        PRIMARY KEY (order_id, variant_id),
        CONSTRAINT quantity_positive CHECK (quantity > 0)
    )
    """,
    """
    CREATE TABLE audit_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        variant_id text NOT NULL,
        change_type text NOT NULL,
        delta_on_hand bigint NOT NULL,
        delta_reserved bigint NOT NULL,
        on_hand_after bigint NOT NULL,
        reserved_after bigint NOT NULL,
        version bigint NOT NULL,
        reason text,
        reference text,
        source_event_source text,
        source_event_id text,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE UNIQUE INDEX audit_log_variant_version ON audit_log (variant_id, version)
    """,
    # The audit log is append-only: the database itself refuses edits.
    """
    CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE TRIGGER audit_log_append_only
        BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only()
    """,
    """
    CREATE TRIGGER audit_log_no_truncate
        BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only()
    """,
    """
    CREATE TABLE processed_events (
        source text NOT NULL,
        event_id text NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (source, event_id)
    )
    """,
    # One row per dead-lettered Kafka record: claims it (a redelivery is dead-lettered
    # once) and lets an operator query the DLQ's history with SQL. The record's timestamp
    # is part of the key because offsets restart when a topic is recreated.
    """
    CREATE TABLE dead_letters (
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        record_timestamp bigint NOT NULL,
        reason text NOT NULL,
        dead_lettered_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (topic, partition, "offset", record_timestamp)
    )
    """,
    """
    CREATE TABLE outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic text NOT NULL,
        key bytea,
        value bytea,
        headers jsonb NOT NULL DEFAULT '[]'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz,
        publish_error text
    )
    """,
    """
    CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL
    """,
]

DOWNGRADE = [
    """
    DROP TABLE outbox
    """,
    """
    DROP TABLE dead_letters
    """,
    """
    DROP TABLE processed_events
    """,
    """
    DROP TABLE audit_log
    """,
    """
    DROP FUNCTION audit_log_is_append_only()
    """,
    """
    DROP TABLE order_lines
    """,
    """
    DROP TABLE orders
    """,
    """
    DROP TABLE variants
    """,
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
