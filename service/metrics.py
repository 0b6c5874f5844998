"""Prometheus metrics: what the worker counts as it goes, and what `/metrics` reads on scrape.

Counters and histograms are updated on the hot path (cheap: a lock and an add).
Figures that live in the database (outbox backlog, reservations by status, dead
letters) and the consumer's lag are read when `/metrics` is scraped, at most once
per `STOCK_METRICS_REFRESH_SECONDS`, so a busy scraper cannot load the database.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `*_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

EVENTS_CONSUMED = Counter(
    "stock_events_consumed",
    "Consumed Kafka records by topic and outcome (applied, duplicate, dead_lettered).",
    ["topic", "outcome"],
)
BATCH_SIZE = Histogram(
    "stock_batch_size",
    "Records per consumed batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
BATCH_SECONDS = Histogram(
    "stock_batch_handling_seconds",
    "Time to handle one consumed batch, database commit included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "stock_consumer_lag",
    "Records on the partition past this consumer's position (high watermark - position).",
    ["topic", "partition"],
)
OUTBOX_BACKLOG = Gauge("stock_outbox_backlog", "Outbox rows not yet published to Kafka.")
OUTBOX_PUBLISHED = Counter(
    "stock_outbox_published", "Outbox rows Kafka acknowledged, by topic.", ["topic"]
)
OUTBOX_PARKED = Counter(
    "stock_outbox_parked", "Outbox rows Kafka refused for good (kept with their error)."
)
OUTBOX_FAST_PATH = Counter(
    "stock_outbox_fast_path",
    "stock.reservation rows by what the fast path did: sent (and settled), failed or"
    " dropped (left to the relay).",
    ["outcome"],
)
OUTBOX_PUBLISH_SECONDS = Histogram(
    "stock_outbox_publish_latency_seconds",
    "From the commit that wrote an outbox row to Kafka's acknowledgement of it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Gauge(
    "stock_dead_letters", "Dead-lettered records kept (rows of dead_letters, pruned by age)."
)
RESERVATIONS = Gauge("stock_reservations", "Orders by reservation status.", ["status"])
DB_FIGURES_READ_AT = Gauge(
    "stock_db_figures_read_timestamp_seconds",
    "When the database-backed figures above were last read (they go stale if reads fail).",
)
HOLDS_EXPIRED = Counter("stock_holds_expired", "Reservations released because their hold expired.")
HTTP_REQUESTS = Counter(
    "stock_http_requests", "HTTP requests by route and status.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "stock_http_request_seconds",
    "HTTP request handling time by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GC_PAUSE_SECONDS = Histogram(
    "stock_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector (the event loop stands still), by generation.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
GROUP_COMMIT_SIZE = Histogram(
    "stock_group_commit_size",
    "Requests per shared transaction of reserve, confirm-sale and release (group commit).",
    ["operation"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
STREAM_CLIENTS = Gauge("stock_stream_clients", "Open /api/inventory/stream connections.")
STREAM_DROPPED = Counter(
    "stock_stream_clients_dropped",
    "Stream clients cut off because they fell behind (or the feed reconnected).",
)
# Scheduled jobs (service/application/jobs.py). The last run's figures are read from
# job_runs by every scheduler, so each worker shows the run whichever worker made it.
JOB_RUNS = Counter(
    "stock_job_runs", "Scheduled job runs made by this process, by outcome.", ["job", "outcome"]
)
JOB_LAST_SUCCESS = Gauge(
    "stock_job_last_success_timestamp_seconds",
    "When each job last finished well (any worker; 0: never).",
    ["job"],
)
JOB_LAST_DURATION = Gauge(
    "stock_job_last_duration_seconds", "How long each job's last finished run took.", ["job"]
)
PRUNED_ROWS = Counter(
    "stock_pruned_rows", "Rows deleted by retention (stock prune, the prune job).", ["table"]
)
