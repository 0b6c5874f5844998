"""Every setting is a `STOCK_*` environment variable; docs/reference.md lists each."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from stock_schemas.envelope import EventType

#: What `STOCK_LOG_LEVEL` takes (in any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The forms of `STOCK_DATABASE_URL`, as an error message says them.
DATABASE_URL_FORMS = (
    "postgresql://user:password@host:5432/database "
    "(postgres:// and postgresql+asyncpg:// work too)"
)

#: Every topic setting and its default name (CONTRACT.md's tables): the one list of them.
TOPIC_DEFAULTS: dict[str, str] = {
    "topic_order_checkout": EventType.ORDER_CHECKOUT,
    "topic_payment_succeeded": EventType.PAYMENT_SUCCEEDED,
    "topic_payment_failed": EventType.PAYMENT_FAILED,
    "topic_order_cancelled": EventType.ORDER_CANCELLED,
    "topic_stock_changed": EventType.STOCK_CHANGED,
    "topic_stock_low": EventType.STOCK_LOW,
    "topic_stock_reservation": EventType.STOCK_RESERVATION,
    "topic_stock_anomaly": EventType.STOCK_ANOMALY,
    "topic_stock_replenished": EventType.STOCK_REPLENISHED,
    "topic_stock_reorder": EventType.STOCK_REORDER,
    "topic_dlq": "stock.dlq",
}


#: Token scopes, each including the ones before it (CONTRACT.md, "Who did it").
TOKEN_SCOPES = ("read", "write", "admin")


@dataclass(frozen=True)
class ApiToken:
    name: str
    secret: str
    scope: str

    @classmethod
    def parse(cls, entry: str) -> ApiToken:
        if entry.count(":") == 2:
            name, secret, scope = entry.split(":")
            if scope in TOKEN_SCOPES and name and secret:
                return cls(name, secret, scope)
        digest = hashlib.sha256(entry.encode()).hexdigest()[:8]
        return cls(f"token-{digest}", entry, "write")

    def allows(self, scope: str) -> bool:
        return TOKEN_SCOPES.index(self.scope) >= TOKEN_SCOPES.index(scope)


def _token_entries(raw: str) -> list[str]:
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCK_", extra="ignore")

    #: Plain `postgresql://` URLs, including the socket form `postgresql://user@/db?host=/dir`.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    database_pool_size: int = Field(default=5, ge=1)

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_group_id: str = "stock-worker"
    kafka_client_id: str = "stock-worker"
    #: Off by default because the embedded broker (tansu) cannot give producer ids;
    #: turn it on against Apache Kafka (deploy/ does).
    kafka_enable_idempotence: bool = False
    kafka_topic_partitions: int = Field(default=3, ge=1)
    kafka_topic_replication_factor: int = Field(default=1, ge=1)
    kafka_create_topics: bool = True
    #: How every Kafka client of the worker connects (consumer, relay, admin, stream).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    #: TLS (SSL, SASL_SSL): the CA bundle to trust (default: the system's), and a client
    #: certificate and key for mutual TLS.
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None

    topic_order_checkout: str = TOPIC_DEFAULTS["topic_order_checkout"]
    topic_payment_succeeded: str = TOPIC_DEFAULTS["topic_payment_succeeded"]
    topic_payment_failed: str = TOPIC_DEFAULTS["topic_payment_failed"]
    topic_order_cancelled: str = TOPIC_DEFAULTS["topic_order_cancelled"]
    topic_stock_changed: str = TOPIC_DEFAULTS["topic_stock_changed"]
    topic_stock_low: str = TOPIC_DEFAULTS["topic_stock_low"]
    topic_stock_reservation: str = TOPIC_DEFAULTS["topic_stock_reservation"]
    topic_stock_anomaly: str = TOPIC_DEFAULTS["topic_stock_anomaly"]
    topic_stock_replenished: str = TOPIC_DEFAULTS["topic_stock_replenished"]
    topic_stock_reorder: str = TOPIC_DEFAULTS["topic_stock_reorder"]
    topic_dlq: str = TOPIC_DEFAULTS["topic_dlq"]

    #: `source` of every event this service publishes.
    event_source: str = "stock-service"

    reservation_ttl_seconds: int = Field(default=900, gt=0)
    #: The furthest `expiresAt` an HTTP reservation may ask for (7 days): a hold
    #: without a real end would keep stock from every other customer.
    reservation_max_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    sweep_batch_size: int = Field(default=500, ge=1)
    low_stock_threshold: int = Field(default=5, ge=0)
    #: A stock count line is within tolerance when |variance| <= this percent of its
    #: expected quantity (a variant's own `count_tolerance_percent` wins); lines beyond
    #: it are applied only with an admin's approval.
    count_tolerance_percent: float = Field(default=2.0, ge=0, le=100)
    #: `stock.anomaly` `large_adjustment` and `unusual_shrinkage` (docs/design.md,
    #: "Anomaly rules"): never for fewer units than this, and only where the robust
    #: z-score against the variant's own history reaches `anomaly_z`.
    anomaly_min_units: int = Field(default=10, ge=1)
    anomaly_z: float = Field(default=3.5, gt=0)
    #: Days of demand a `stock.reorder`'s suggested quantity covers beyond the lead
    #: time (when the variant has no `max_stock`): how often someone reviews and orders.
    reorder_review_days: float = Field(default=7.0, gt=0, le=365)

    batch_max_records: int = Field(default=500, ge=1)
    #: How long the consume loop waits for records when none are buffered before it
    #: looks again. Not a linger: a batch is whatever is buffered (up to
    #: batch_max_records) the moment the previous one is done, and a record that comes
    #: while the loop waits is taken at once (docs/design.md, "Consume loop").
    batch_linger_ms: int = Field(default=20, ge=0)
    #: The longest a fetch waits on the broker for data. Apache Kafka answers as soon as
    #: there is any; a broker that holds every fetch this long (tansu does) adds it to
    #: each event's latency, so it is short.
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=1)
    #: The event loop `stock run`, `stock api` and `stock relay` run on: uvloop (when
    #: installed, as it is with the package) or the standard library's asyncio.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    #: How long the group waits for a silent worker before giving its partitions to
    #: the others (a crash or a pause is noticed after this long).
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    #: Static group membership (KIP-345): a stable name per replica (a StatefulSet pod
    #: name). A worker that restarts under the same name takes its partitions back
    #: without a rebalance; two live processes must never share one.
    kafka_group_instance_id: str | None = None

    #: A dead-lettered value above this is cut to it (header `truncated-from` says the
    #: original size), so the copy fits Kafka's default 1 MB message limit.
    dlq_max_value_bytes: int = Field(default=900_000, ge=1)

    outbox_batch_size: int = Field(default=1000, ge=1)
    #: Fallback poll; the relay is woken by LISTEN/NOTIFY as soon as a batch commits.
    outbox_poll_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    #: The fast path (service/adapters/fast_publish.py): a worker publishes the
    #: stock.reservation rows it has just committed itself; the relay sweeps only what
    #: it did not settle, once a row is this old (a failed send: at once).
    outbox_fast_path: bool = True
    outbox_fast_path_grace_ms: int = Field(default=2000, ge=0)

    #: Retention: `stock prune` and the daily `prune` job delete rows older than these,
    #: in batches of `retention_batch_size` (service/application/retention.py, whose
    #: docstring says why each default is what it is). 0 keeps the rows for ever.
    #: Consumed event ids must outlive the input topics' Kafka retention (7 days by
    #: default): an event Kafka can still redeliver must still be known.
    retention_processed_events_days: float = Field(default=8.0, ge=0)
    retention_dead_letters_days: float = Field(default=30.0, ge=0)
    #: REJECTED, RELEASED, EXPIRED, RETURNED and CONFIRM_FAILED orders, by their last change.
    retention_orders_days: float = Field(default=30.0, ge=0)
    #: CONFIRMED orders: a cancellation returns their stock for as long as they are kept.
    retention_confirmed_orders_days: float = Field(default=365.0, ge=0)
    retention_batch_size: int = Field(default=1000, ge=1)
    #: After each batch a prune rests this many times as long as the batch took (1: it
    #: uses at most half of one database connection's time; 0: batches back to back),
    #: so that deleting a day of rows does not take the hot path's share of the
    #: database for minutes at a time (pt-archiver's `--sleep-coef`).
    retention_sleep_coefficient: float = Field(default=1.0, ge=0)

    #: The in-process scheduler of maintenance jobs (one worker runs each job per
    #: period); false for operators who run `stock prune` and `stock reconcile` as
    #: Kubernetes CronJobs instead.
    jobs_enabled: bool = True
    job_prune_interval_hours: float = Field(default=24.0, gt=0)
    job_reconcile_interval_hours: float = Field(default=168.0, gt=0)
    job_shrinkage_interval_hours: float = Field(default=168.0, gt=0)
    job_policies_interval_hours: float = Field(default=24.0, gt=0)
    #: The `rollup` job: whole past days into variant_daily_sales (docs/analytics.md).
    job_rollup_interval_hours: float = Field(default=1.0, gt=0)
    #: How often the `report-daily`, `report-weekly` and `report-monthly` jobs look for
    #: a period that has ended and write its report (once: a written one is skipped).
    job_reports_interval_hours: float = Field(default=1.0, gt=0)
    #: Where reports are written (`<dir>/<kind>/<period>/`), by the jobs and by
    #: `stock report` without `--out`; relative to the process's working directory.
    reports_dir: str = Field(default="reports", min_length=1)

    #: Backoff while the database is unreachable: doubles up to the maximum.
    retry_initial_backoff_seconds: float = Field(default=0.1, gt=0)
    retry_max_backoff_seconds: float = Field(default=5.0, gt=0)

    #: On stop, how long the batch in hand may take to commit before it is abandoned.
    shutdown_grace_seconds: float = Field(default=15.0, gt=0)

    #: The HTTP API (`stock run` serves it beside the worker; `stock api` alone).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    #: Bearer tokens accepted for writes, comma-separated. Empty: every write is refused.
    api_tokens: SecretStr = SecretStr("")
    #: Also require a token for the GET endpoints under /api/inventory.
    api_reads_require_token: bool = False
    #: Larger request bodies are refused (413) before they are parsed.
    http_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: How long an HTTP request waits out a database outage before answering 503.
    http_database_timeout_seconds: float = Field(default=5.0, gt=0)
    #: Group commit (service/application/group_commit.py): reserve, confirm-sale and
    #: release requests that arrive while earlier ones are in the database share one
    #: transaction, at most this many (1: each alone), each with its own answer.
    group_commit_max_requests: int = Field(default=64, ge=1)
    #: Groups in the database at once per operation; later requests queue behind them.
    group_commit_groups: int = Field(default=2, ge=1)
    #: While a group is in flight, a free slot collects requests this long (or until
    #: `group_commit_max_requests`) before it starts the next group; 0: at once.
    group_commit_window_ms: float = Field(default=2.0, ge=0)
    #: Database-backed figures of /metrics are read at most this often.
    metrics_refresh_seconds: float = Field(default=5.0, ge=0)
    #: Changes buffered per /api/inventory/stream client; one that falls further behind
    #: is disconnected (it reconnects and re-reads levels) instead of slowing anything.
    stream_client_buffer: int = Field(default=1000, ge=1)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    #: Open streams per API process; one more is refused (503 `too_many_streams`).
    stream_max_clients: int = Field(default=1000, ge=1)

    log_level: str = "INFO"
    #: `text`, or `json`: one JSON object a line (time, level, logger, message, ...).
    log_format: Literal["text", "json"] = "text"
    #: One line per HTTP request (logger `stock.access`): method, route, status, duration.
    http_access_log: bool = True
    #: Browser origins allowed to call the API (CORS), comma-separated, such as
    #: `https://shop.example.com`; `*` is any origin. Empty: no CORS (the default).
    http_cors_origins: str = ""

    @field_validator("log_level")
    @classmethod
    def _a_real_log_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(
                f"not a log level; expected one of {', '.join(LOG_LEVELS)} (in any case)"
            )
        return value.strip().upper()

    @field_validator("database_url")
    @classmethod
    def _a_postgresql_url(cls, value: str) -> str:
        """What `service.adapters.database` can connect with: any `postgresql` or
        `postgres` URL (a driver suffix is replaced by asyncpg)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError(f"not a URL; expected {DATABASE_URL_FORMS}") from None
        except ValueError:  # the port
            raise ValueError(f"its port is not a number; expected {DATABASE_URL_FORMS}") from None
        if backend not in ("postgresql", "postgres"):
            raise ValueError(f"not a PostgreSQL URL; expected {DATABASE_URL_FORMS}")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _in_any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"STOCK_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "STOCK_KAFKA_SASL_USERNAME and STOCK_KAFKA_SASL_PASSWORD"
            )
        return self

    @field_validator("api_tokens")
    @classmethod
    def _tokens_well_formed(cls, value: SecretStr) -> SecretStr:
        for number, entry in enumerate(_token_entries(value.get_secret_value()), start=1):
            if entry.count(":") == 2:
                name, secret, scope = entry.split(":")
                if scope not in TOKEN_SCOPES or not name or not secret:
                    raise ValueError(
                        f"entry {number} is not name:secret:scope with a non-empty name and "
                        f"secret and a scope of {', '.join(TOKEN_SCOPES)}"
                    )
        return value

    @property
    def api_token_list(self) -> list[str]:
        """The secrets alone (named entries and bare ones)."""
        return [token.secret for token in self.api_token_entries]

    @property
    def api_token_entries(self) -> list[ApiToken]:
        """`name:secret:scope` entries, and bare secrets (scope `write`, named after a
        digest of the secret so the audit log can tell them apart without showing it)."""
        raw = self.api_tokens.get_secret_value()
        return [ApiToken.parse(entry) for entry in _token_entries(raw)]

    @property
    def http_cors_origin_list(self) -> list[str]:
        # A browser's Origin never ends in a slash: `https://shop.example.com/` would
        # match nothing.
        return [o.strip().rstrip("/") for o in self.http_cors_origins.split(",") if o.strip()]

    @property
    def consumed_topics(self) -> dict[str, str]:
        """Topic name -> the event type expected on it."""
        return {
            self.topic_order_checkout: EventType.ORDER_CHECKOUT,
            self.topic_payment_succeeded: EventType.PAYMENT_SUCCEEDED,
            self.topic_payment_failed: EventType.PAYMENT_FAILED,
            self.topic_order_cancelled: EventType.ORDER_CANCELLED,
        }

    @property
    def published_topics(self) -> list[str]:
        return [
            self.topic_stock_changed,
            self.topic_stock_low,
            self.topic_stock_reservation,
            self.topic_stock_anomaly,
            self.topic_stock_replenished,
            self.topic_stock_reorder,
            self.topic_dlq,
        ]


def isolated_settings(prefix: str, **values: object) -> Settings:
    """Settings whose consumer group and every topic carry `prefix`, so several runs
    share one broker without seeing each other's events (the test suite, the
    benchmarks, the fault suite). `values` sets anything else."""
    named = {field: f"{prefix}.{topic}" for field, topic in TOPIC_DEFAULTS.items()}
    return Settings(kafka_group_id=f"{prefix}-stock", **{**named, **values})  # type: ignore[arg-type]
