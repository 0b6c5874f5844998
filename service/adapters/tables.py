"""The schema, as SQLAlchemy Core tables. Migrations in service/migrations/ create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

variants = Table(
    "variants",
    metadata,
    Column("variant_id", Text, primary_key=True),
    Column("product_id", Text, nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False, server_default=text("0")),
    Column("version", BigInteger, nullable=False, server_default=text("0")),
    #: NULL means the configured default (STOCK_LOW_STOCK_THRESHOLD).
    Column("low_stock_threshold", Integer, nullable=True),
    #: Percent of the expected quantity a count may differ by without an admin's
    #: approval; NULL means the configured default (STOCK_COUNT_TOLERANCE_PERCENT).
    Column("count_tolerance_percent", Numeric, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Policy (CONTRACT.md, "Policies, reorder and suppliers"), as configured; NULL: unset.
    Column("reorder_point", BigInteger, nullable=True),
    Column("max_stock", BigInteger, nullable=True),
    Column("lead_time_days", Numeric, nullable=True),
    Column("supplier_id", Text, nullable=True),
    # Computed by the daily `policies` job (service/application/policies.py): 30-day
    # demand, the supplier's measured lead time, and the reorder point from them.
    Column("avg_daily_demand", Numeric, nullable=True),
    Column("demand_stdev", Numeric, nullable=True),
    Column("measured_lead_time_days", Numeric, nullable=True),
    Column("computed_reorder_point", BigInteger, nullable=True),
    #: When `available` last reached 0 from above; NULL while in stock, or never stocked.
    Column("out_of_stock_since", DateTime(timezone=True), nullable=True),
    # The database refuses an oversell even if every line of Python above it is wrong.
    CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="reserved_within_on_hand"),
    CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
    CheckConstraint("low_stock_threshold IS NULL OR low_stock_threshold >= 0", name="threshold_ok"),
    CheckConstraint(
        "count_tolerance_percent IS NULL OR "
        "(count_tolerance_percent >= 0 AND count_tolerance_percent <= 100)",
        name="count_tolerance_ok",
    ),
    CheckConstraint("reorder_point IS NULL OR reorder_point >= 0", name="reorder_point_ok"),
    CheckConstraint("max_stock IS NULL OR max_stock > 0", name="max_stock_ok"),
    CheckConstraint(
        "lead_time_days IS NULL OR (lead_time_days >= 0 AND lead_time_days <= 365)",
        name="lead_time_ok",
    ),
)
Index("variants_product_id", variants.c.product_id)

ORDER_PHASES = (
    "PENDING",
    "RESERVED",
    "REJECTED",
    "CONFIRMED",
    "RELEASED",
    "EXPIRED",
    "RETURNED",
    "CONFIRM_FAILED",
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("phase", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("payment", Text, nullable=True),
    Column("cancelled", Boolean, nullable=False, server_default=text("false")),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "phase IN (" + ", ".join(f"'{p}'" for p in ORDER_PHASES) + ")", name="phase_known"
    ),
    CheckConstraint("payment IS NULL OR payment IN ('SUCCEEDED', 'FAILED')", name="payment_known"),
)
# The sweeper's question, answered from a small partial index.
Index(
    "orders_reserved_expiry",
    orders.c.expires_at,
    postgresql_where=orders.c.phase == "RESERVED",
)
#: Phases in which an order holds no stock: the ones retention may delete (by its rules).
FINISHED_PHASES = ("REJECTED", "CONFIRMED", "RELEASED", "EXPIRED", "RETURNED", "CONFIRM_FAILED")
# Retention's question (finished orders of a phase, oldest first); RESERVED and
# PENDING rows, the hot path's, are not in it.
Index(
    "orders_finished_updated_at",
    orders.c.phase,
    orders.c.updated_at,
    postgresql_where=orders.c.phase.in_(FINISHED_PHASES),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", Text, ForeignKey("orders.order_id"), nullable=False),
    Column("variant_id", Text, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    PrimaryKeyConstraint("order_id", "variant_id"),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("variant_id", Text, nullable=False),
    Column("change_type", Text, nullable=False),
    Column("delta_on_hand", BigInteger, nullable=False),
    Column("delta_reserved", BigInteger, nullable=False),
    Column("on_hand_after", BigInteger, nullable=False),
    Column("reserved_after", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("reason", Text, nullable=True),
    Column("reference", Text, nullable=True),
    Column("source_event_source", Text, nullable=True),
    Column("source_event_id", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: Who did it: `api:<token name>`, `cli:<user>`, a Kafka event's `source`, or
    #: `stock-service` for the service's own jobs (CONTRACT.md, "Who did it").
    Column("actor", Text, nullable=False),
    #: A RESTOCK's supplier and when it was ordered (its lead time: created_at - ordered_at).
    Column("supplier_id", Text, nullable=True),
    Column("ordered_at", DateTime(timezone=True), nullable=True),
)
# delta_on_hand in the leaves: reconciliation reads its sums from this index alone.
Index(
    "audit_log_variant_version",
    audit_log.c.variant_id,
    audit_log.c.version,
    unique=True,
    postgresql_include=["delta_on_hand"],
)
# Deliveries by supplier: the measured lead times (service/application/policies.py).
Index(
    "audit_log_deliveries",
    audit_log.c.supplier_id,
    audit_log.c.created_at,
    postgresql_include=["ordered_at"],
    postgresql_where=audit_log.c.supplier_id.isnot(None),
)
# The SALE rows by time across every variant: abcClass's sales and the rollup job's day
# (service/adapters/analytics_sql.py).
Index(
    "audit_log_sales",
    audit_log.c.created_at,
    postgresql_include=["variant_id", "delta_on_hand"],
    postgresql_where=audit_log.c.change_type == "SALE",
)
# The losses (negative ADJUSTMENT rows) by time: the shrinkage check's weeks
# (service/adapters/anomaly_sql.py, WEEKLY_LOSSES) without a scan of the whole log.
Index(
    "audit_log_losses",
    audit_log.c.created_at,
    postgresql_include=["variant_id", "delta_on_hand"],
    postgresql_where=(audit_log.c.change_type == "ADJUSTMENT") & (audit_log.c.delta_on_hand < 0),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("source", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("source", "event_id"),
)
# Retention's batches, oldest first (service/application/retention.py).
Index("processed_events_processed_at", processed_events.c.processed_at)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("record_timestamp", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("topic", "partition", "offset", "record_timestamp"),
)
Index("dead_letters_dead_lettered_at", dead_letters.c.dead_lettered_at)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("topic", Text, nullable=False),
    Column("key", LargeBinary, nullable=True),
    #: NULL only for a dead-lettered tombstone (a record whose value was null).
    Column("value", LargeBinary, nullable=True),
    #: [[name, base64 value], ...]: header values are bytes and may not be UTF-8.
    Column("headers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: Sent rows are deleted (an UPDATE of this column, in the partial indexes'
    #: predicates, is never HOT): set only on parked rows (and by releases before 0004).
    Column("published_at", DateTime(timezone=True), nullable=True),
    #: Set when Kafka refused the row for good (e.g. too large): parked, not retried.
    Column("publish_error", Text, nullable=True),
    #: stock.reservation rows only: the relay leaves the row to the fast path until then
    #: (service/adapters/fast_publish.py).
    Column("sweep_after", DateTime(timezone=True), nullable=True),
)
Index("outbox_unpublished", outbox.c.id, postgresql_where=outbox.c.published_at.is_(None))
Index(
    "outbox_reservation_keys",
    outbox.c.key,
    postgresql_where=and_(outbox.c.sweep_after.isnot(None), outbox.c.published_at.is_(None)),
)

stock_counts = Table(
    "stock_counts",
    metadata,
    Column("count_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("blind", Boolean, nullable=False, server_default=text("false")),
    Column("reason", Text, nullable=True),
    Column("product_id", Text, nullable=True),
    Column("opened_by", Text, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("closed_by", Text, nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("approved_by", Text, nullable=True),
    CheckConstraint("status IN ('OPEN', 'APPLIED', 'CANCELLED')", name="count_status_known"),
)
Index(
    "stock_counts_open",
    stock_counts.c.opened_at,
    postgresql_where=stock_counts.c.status == "OPEN",
)

stock_count_lines = Table(
    "stock_count_lines",
    metadata,
    Column("count_id", Text, ForeignKey("stock_counts.count_id"), nullable=False),
    Column("variant_id", Text, ForeignKey("variants.variant_id"), nullable=False),
    Column("snapshot_on_hand", BigInteger, nullable=False),
    Column("snapshot_version", BigInteger, nullable=False),
    Column("counted", BigInteger, nullable=True),
    Column("counted_at", DateTime(timezone=True), nullable=True),
    Column("counted_by", Text, nullable=True),
    Column("expected", BigInteger, nullable=True),
    Column("tolerance_percent", Numeric, nullable=True),
    Column("applied_version", BigInteger, nullable=True),
    PrimaryKeyConstraint("count_id", "variant_id"),
    CheckConstraint("counted IS NULL OR counted >= 0", name="counted_not_negative"),
)
Index("stock_count_lines_variant", stock_count_lines.c.variant_id)

reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("actor", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("checked_variants", BigInteger, nullable=False),
    Column("discrepancies", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
)
Index("reconciliation_runs_latest", reconciliation_runs.c.finished_at)

#: Per variant, the sum of `delta_on_hand` over audit versions 1..through_version, as a
#: reconciliation read it from the log (gap-free): the log cannot change below it, so
#: the next run reads only the versions after (service/adapters/reconciliation_sql.py).
ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("variant_id", Text, primary_key=True),
    Column("through_version", BigInteger, nullable=False),
    Column("on_hand_moves", BigInteger, nullable=False),
    Column("checked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("through_version > 0", name="through_a_version"),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("job", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("outcome", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("runner", Text, nullable=False),
    #: When the job last finished well (kept while later runs fail).
    Column("last_succeeded_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("outcome IN ('running', 'succeeded', 'failed')", name="job_outcome_known"),
)

anomalies = Table(
    "anomalies",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("variant_id", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("observed", Numeric, nullable=False),
    Column("expected", Numeric, nullable=False),
    Column("score", Numeric, nullable=True),
    Column("reference", Text, nullable=True),
    Column("actor", Text, nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "rule IN ('count_variance', 'large_adjustment', 'unusual_shrinkage', 'ledger_mismatch')",
        name="anomaly_rule_known",
    ),
)
Index("anomalies_raised_at", anomalies.c.raised_at)
Index("anomalies_variant", anomalies.c.variant_id, anomalies.c.raised_at)

#: Units sold per variant and UTC day, filled by the `rollup` job for the days before
#: its `rollups` row's `complete_before` (docs/analytics.md, "The daily rollup").
variant_daily_sales = Table(
    "variant_daily_sales",
    metadata,
    Column("variant_id", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("units_sold", BigInteger, nullable=False),
    PrimaryKeyConstraint("variant_id", "day"),
)
Index(
    "variant_daily_sales_day",
    variant_daily_sales.c.day,
    postgresql_include=["variant_id", "units_sold"],
)

#: How far each rollup is complete: every day before `complete_before` is in it.
rollups = Table(
    "rollups",
    metadata,
    Column("name", Text, primary_key=True),
    Column("complete_before", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

#: abcClass's ranking over the 90 whole days before the day of its `rollups` row
#: (`abc_tiers`): how many variants sold each number of units (units > 0).
abc_tiers = Table(
    "abc_tiers",
    metadata,
    Column("units", BigInteger, primary_key=True),
    Column("variants", BigInteger, nullable=False),
)

#: Each report's figures as last written (service/application/reports.py): one row per
#: kind and period; the latest of a kind has the latest period_start.
reports = Table(
    "reports",
    metadata,
    Column("kind", Text, nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("generated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("figures", JSONB, nullable=False),
    Column("files", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    PrimaryKeyConstraint("kind", "period_start"),
    CheckConstraint("kind IN ('daily', 'weekly', 'monthly')", name="report_kind_known"),
    CheckConstraint("period_start < period_end", name="report_period_ok"),
)

#: NOTIFY channel the writer signals on commit and the relay LISTENs to.
OUTBOX_CHANNEL = "stock_outbox"
