"""Reports (issue 13 item 4; docs/design.md, "Reports"): the figures of a daily, weekly
or monthly report, gathered from the database; service/application/report_render.py
writes them as Markdown, CSV and PNG charts, and `write_report` keeps them in `reports`.

A report is "as of" a moment `at` (default: now) and covers the period that holds the
instant just before it, cut at `at`: the UTC day, the ISO week (Monday to Monday,
UTC) or the calendar month. `at` on a period's boundary is the period before, whole:
the scheduled jobs pass the start of the current period and so write the last
complete one; `stock report weekly` without `--at` writes this week so far.

- **daily**: the variants at or below their low-stock threshold or their effective
  reorder point as `at`, each with its days of cover and, where it has a reorder
  point, the quantity a `stock.reorder` would suggest;
- **weekly**: the top movers by units sold, the stockouts (per variant and per day),
  the anomalies raised, the reconciliation runs, count accuracy over 8 weeks, and each
  top mover's `available` over the week;
- **monthly**: ABC classes, recommended (computed) against configured reorder points,
  supplier lead-time performance, stockouts per day and count accuracy per week.

Every figure of a variant over a window is analytics' (service/application/analytics.py,
formulas in docs/analytics.md), asked for the variants that can have one: those changed
in the period (`variants.updated_at` is written with every stock change, so it is at or
after the change) or out of stock at its start (`out_of_stock_since`). The rest are
set-based statements here: which variants to ask about, the anomalies, reconciliation
runs, policies, deliveries, and the steps of `available` for the charts. Nothing reads
a variant's history row by row in Python.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.analytics import (
    ABC_PERIOD,
    MAX_IDS,
    AnalyticsQuery,
    VariantFigures,
    analytics,
)
from service.application.policies import policy_view
from service.settings import Settings


class ReportKind(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


KINDS = tuple(kind.value for kind in ReportKind)
#: Rows of the top movers table; the chart of `available` draws the first CHARTED_MOVERS.
TOP_MOVERS = 10
CHARTED_MOVERS = 5
#: Weeks of count accuracy in a weekly report (the report's week and those before).
ACCURACY_WEEKS = 8
#: Rows of one table kept in `reports.figures` (the CSV files have every row).
MAX_STORED_ROWS = 1000
_DAY = timedelta(days=1)
_TICK = timedelta(microseconds=1)


class InvalidReportTime(ValueError):
    """`--at` without a time zone or in the future: the CLI's exit status 2."""

    code = "invalid_report_time"


# ------------------------------------------------------------------ periods


@dataclass(frozen=True, slots=True)
class Period:
    kind: ReportKind
    #: `2026-11-30`, `2026-W48`, `2026-11`: the directory under `<dir>/<kind>/`.
    label: str
    start: datetime
    #: `at`: the period's end, or earlier for a period so far.
    end: datetime
    #: Where the period ends when whole.
    full_end: datetime

    @property
    def complete(self) -> bool:
        return self.end >= self.full_end

    def days(self) -> list[tuple[date, datetime, datetime]]:
        """Each UTC day of the period that has begun: (day, start, end cut at `end`)."""
        found = []
        moment = self.start
        while moment < self.end:
            found.append((moment.date(), moment, min(moment + _DAY, self.end)))
            moment += _DAY
        return found


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _bounds(kind: ReportKind, day: date) -> tuple[date, date, str]:
    """The period of `kind` holding `day`: first day, first day after, label."""
    if kind is ReportKind.DAILY:
        return day, day + _DAY, day.isoformat()
    if kind is ReportKind.WEEKLY:
        monday = day - timedelta(days=day.weekday())
        year, week, _ = monday.isocalendar()
        return monday, monday + timedelta(days=7), f"{year}-W{week:02d}"
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following, f"{first.year}-{first.month:02d}"


def period_of(kind: ReportKind | str, at: datetime) -> Period:
    """The period a report as of `at` covers: the one holding the instant before `at`,
    from its start to `at`."""
    kind = ReportKind(kind)
    first, following, label = _bounds(kind, (at.astimezone(UTC) - _TICK).date())
    full_end = _midnight(following)
    return Period(kind, label, _midnight(first), min(at.astimezone(UTC), full_end), full_end)


def last_complete_period(kind: ReportKind | str, now: datetime) -> Period:
    """The last whole period before `now` (what the scheduled job writes)."""
    kind = ReportKind(kind)
    first, _, _ = _bounds(kind, now.astimezone(UTC).date())
    return period_of(kind, _midnight(first))


# ------------------------------------------------------------------ the report


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    #: The Markdown table's heading (with its unit).
    heading: str


@dataclass(slots=True)
class Table:
    """One table of a report: one CSV file `<name>.csv`, a section of the Markdown."""

    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    #: A sentence under the title: what the rows are, how they are sorted.
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [c.key for c in self.columns],
            "rows": [
                {c.key: _json_value(row.get(c.key)) for c in self.columns}
                for row in self.rows[:MAX_STORED_ROWS]
            ],
            "rowsTotal": len(self.rows),
        }


@dataclass(slots=True)
class Report:
    period: Period
    generated_at: datetime
    #: Headline figures, camelCase keys, JSON values.
    summary: dict[str, Any]
    tables: dict[str, Table] = field(default_factory=dict)

    @property
    def kind(self) -> ReportKind:
        return self.period.kind

    def add(self, table: Table) -> None:
        self.tables[table.name] = table

    def figures(self) -> dict[str, Any]:
        """What `reports.figures` keeps and `GET reports/latest/{kind}` answers."""
        return {
            "kind": self.kind.value,
            "period": self.period.label,
            "periodStart": self.period.start.isoformat(),
            "periodEnd": self.period.end.isoformat(),
            "complete": self.period.complete,
            "generatedAt": self.generated_at.isoformat(),
            "summary": {k: _json_value(v) for k, v in self.summary.items()},
            "tables": {name: table.as_json() for name, table in self.tables.items()},
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


# ------------------------------------------------------------------ statements

_NOW = text("SELECT now()")

#: The variants that may be low as of :at: low now (by their threshold or effective
#: reorder point), or changed since :at (their level at :at is read from the log).
_LOW_CANDIDATES = text(
    """
    SELECT variant_id FROM variants
    WHERE created_at < :at
      AND (updated_at >= :at
           OR on_hand - reserved <= coalesce(low_stock_threshold, :default_threshold)
           OR on_hand - reserved <= coalesce(reorder_point, computed_reorder_point))
    """
)

#: The variants that can have a figure of the period other than their level: changed
#: in it, or out of stock at its start.
_ACTIVE = text(
    """
    SELECT variant_id, created_at FROM variants
    WHERE created_at < :end
      AND (updated_at >= :start OR out_of_stock_since < :end)
    """
)

#: The variants with any count closed in [:start, :end) (analytics says which lines count).
_COUNTED = text(
    """
    SELECT DISTINCT l.variant_id
    FROM stock_counts AS c
    JOIN stock_count_lines AS l ON l.count_id = c.count_id
    JOIN variants AS v ON v.variant_id = l.variant_id
    WHERE c.closed_at >= :start AND c.closed_at < :end
    """
)

#: The variants with a sale in [:start, :end) (from the index of SALE rows by time).
_SOLD = text(
    """
    SELECT DISTINCT a.variant_id
    FROM audit_log AS a
    JOIN variants AS v ON v.variant_id = a.variant_id
    WHERE a.change_type = 'SALE' AND a.created_at >= :start AND a.created_at < :end
    """
)

_VARIANTS_BEFORE = text("SELECT count(*) FROM variants WHERE created_at < :end")

#: A variant's policy row, as service/adapters/policy_store.py reads one.
_POLICIES = text(
    """
    SELECT variant_id, product_id, on_hand, reserved, low_stock_threshold, reorder_point,
           max_stock, lead_time_days, supplier_id, count_tolerance_percent AS tolerance_percent,
           avg_daily_demand, demand_stdev, measured_lead_time_days, computed_reorder_point,
           out_of_stock_since
    FROM variants WHERE variant_id = ANY(CAST(:ids AS text[]))
    """
)

#: `available` of each variant of :ids over [:start, :end), stepwise: the level at
#: :start, then each change of the window with the time it takes effect. The window is
#: read as analytics reads it (service/adapters/analytics_sql.py): the versions after
#: the last one before :start up to the last one before :end, each taking effect at the
#: earliest `created_at` of itself and the versions after it.
_AVAILABLE_STEPS = text(
    """
    WITH scope AS (
        SELECT variant_id FROM unnest(CAST(:ids AS text[])) AS s(variant_id)
    ),
    top AS (
        SELECT s.variant_id,
               (SELECT a.version FROM audit_log AS a
                WHERE a.variant_id = s.variant_id AND a.created_at < :end
                ORDER BY a.version DESC LIMIT 1) AS v_to
        FROM scope AS s
    ),
    bounds AS (
        SELECT t.variant_id, t.v_to,
               coalesce((SELECT a.version FROM audit_log AS a
                         WHERE a.variant_id = t.variant_id AND a.version <= t.v_to
                           AND a.created_at < :start
                         ORDER BY a.version DESC LIMIT 1), 0) AS v_from
        FROM top AS t
    ),
    log AS (
        SELECT b.variant_id, a.version, b.v_from,
               a.on_hand_after - a.reserved_after AS available,
               min(a.created_at) OVER (
                   PARTITION BY b.variant_id ORDER BY a.version DESC
               ) AS takes_effect
        FROM bounds AS b
        JOIN audit_log AS a ON a.variant_id = b.variant_id
         AND a.version >= b.v_from AND a.version <= b.v_to
    )
    SELECT b.variant_id, 0 AS version, CAST(:start AS timestamptz) AS at,
           coalesce(l.available, 0) AS available, b.v_from > 0 AS existed
    FROM bounds AS b
    LEFT JOIN log AS l ON l.variant_id = b.variant_id AND l.version = b.v_from
    UNION ALL
    SELECT variant_id, version, greatest(takes_effect, CAST(:start AS timestamptz)), available,
           true
    FROM log WHERE version > v_from
    ORDER BY 1, 2
    """
)

_ANOMALIES = text(
    """
    SELECT raised_at, variant_id, product_id, rule, observed, expected, score, reference,
           actor
    FROM anomalies
    WHERE raised_at >= :start AND raised_at < :end
    ORDER BY raised_at, id
    """
)

_RUN_COLUMNS = """
    run_id, actor, started_at, finished_at, checked_variants,
    jsonb_array_length(discrepancies) AS discrepancies,
    (SELECT coalesce(string_agg(k.kind || ': ' || k.n, ', ' ORDER BY k.kind), '')
     FROM (SELECT d ->> 'kind' AS kind, count(*) AS n
           FROM jsonb_array_elements(discrepancies) AS d GROUP BY 1) AS k) AS kinds
"""
_RUNS = text(
    f"""
    SELECT {_RUN_COLUMNS} FROM reconciliation_runs
    WHERE finished_at >= :start AND finished_at < :end
    ORDER BY finished_at
    """
)
_RUN_BEFORE = text(
    f"""
    SELECT {_RUN_COLUMNS} FROM reconciliation_runs
    WHERE finished_at < :start ORDER BY finished_at DESC LIMIT 1
    """
)

#: Every variant with a reorder point configured or computed (as they stand now: the
#: `policies` job recomputes them daily).
_REORDER_POINTS = text(
    """
    SELECT variant_id, product_id, supplier_id, reorder_point, computed_reorder_point,
           avg_daily_demand, demand_stdev, lead_time_days, measured_lead_time_days,
           on_hand - reserved AS available
    FROM variants
    WHERE reorder_point IS NOT NULL OR computed_reorder_point IS NOT NULL
    ORDER BY variant_id
    """
)

#: Per supplier: the deliveries of [:start, :end) that say when they were ordered (their
#: lead time `created_at - ordered_at` in days, on time when within the variant's
#: configured lead time), every such delivery ever (the measured average the `policies`
#: job uses), and the lead times configured on its variants.
_LEAD_TIMES = text(
    """
    WITH delivered AS (
        SELECT a.supplier_id,
               extract(epoch FROM a.created_at - a.ordered_at) / 86400 AS days,
               v.lead_time_days AS configured
        FROM audit_log AS a
        LEFT JOIN variants AS v ON v.variant_id = a.variant_id
        WHERE a.supplier_id IS NOT NULL AND a.ordered_at IS NOT NULL
          AND a.created_at >= :start AND a.created_at < :end
    ),
    period AS (
        SELECT supplier_id, count(*) AS deliveries, avg(days) AS average,
               min(days) AS shortest, max(days) AS longest,
               count(*) FILTER (WHERE configured IS NOT NULL) AS judged,
               count(*) FILTER (WHERE days <= configured) AS on_time
        FROM delivered GROUP BY supplier_id
    ),
    ever AS (
        SELECT supplier_id, count(*) AS deliveries,
               avg(extract(epoch FROM created_at - ordered_at)) / 86400 AS average
        FROM audit_log
        WHERE supplier_id IS NOT NULL AND ordered_at IS NOT NULL AND created_at < :end
        GROUP BY supplier_id
    ),
    configured AS (
        SELECT supplier_id, count(*) AS variants,
               count(lead_time_days) AS configured_variants,
               avg(lead_time_days) AS average, min(lead_time_days) AS shortest,
               max(lead_time_days) AS longest
        FROM variants WHERE supplier_id IS NOT NULL GROUP BY supplier_id
    ),
    suppliers AS (
        SELECT supplier_id FROM period UNION SELECT supplier_id FROM configured
    )
    SELECT s.supplier_id,
           coalesce(c.variants, 0) AS variants,
           coalesce(p.deliveries, 0) AS deliveries,
           p.average AS measured_days, p.shortest AS shortest_days, p.longest AS longest_days,
           coalesce(e.deliveries, 0) AS deliveries_ever, e.average AS measured_days_ever,
           c.average AS configured_days, c.shortest AS configured_shortest,
           c.longest AS configured_longest,
           coalesce(p.judged, 0) AS judged, coalesce(p.on_time, 0) AS on_time
    FROM suppliers AS s
    LEFT JOIN period AS p ON p.supplier_id = s.supplier_id
    LEFT JOIN ever AS e ON e.supplier_id = s.supplier_id
    LEFT JOIN configured AS c ON c.supplier_id = s.supplier_id
    ORDER BY s.supplier_id
    """
)

_LATEST = text(
    """
    SELECT kind, period_start, period_end, generated_at, figures, files FROM reports
    WHERE kind = :kind ORDER BY period_start DESC LIMIT 1
    """
)
_STORED_END = text(
    "SELECT period_end FROM reports WHERE kind = :kind AND period_start = :start"
)
_STORE = text(
    """
    INSERT INTO reports (kind, period_start, period_end, generated_at, figures, files)
    VALUES (:kind, :start, :end, :generated_at, CAST(:figures AS jsonb), CAST(:files AS jsonb))
    ON CONFLICT (kind, period_start) DO UPDATE SET
        period_end = excluded.period_end, generated_at = excluded.generated_at,
        figures = excluded.figures, files = excluded.files
    """
)


async def _ids(engine: AsyncEngine, statement: Any, **params: Any) -> list[str]:
    async with engine.connect() as conn:
        return sorted({row[0] for row in await conn.execute(statement, params)})


async def _rows(engine: AsyncEngine, statement: Any, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(statement, params)).all())


async def figures_of(
    engine: AsyncEngine, ids: Iterable[str], start: datetime, end: datetime
) -> dict[str, VariantFigures]:
    """Analytics' figures of these variants over [start, end), MAX_IDS a call."""
    wanted = sorted(set(ids))
    found: dict[str, VariantFigures] = {}
    for i in range(0, len(wanted), MAX_IDS):
        chunk = wanted[i : i + MAX_IDS]
        answer = await analytics(
            engine, AnalyticsQuery(start, end, variant_ids=tuple(chunk), limit=len(chunk))
        )
        found.update((v.variant_id, v) for v in answer.variants)
    return found


# ------------------------------------------------------------------ gathering


async def database_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        now: datetime = (await conn.execute(_NOW)).scalar_one()
    return now


async def gather(
    engine: AsyncEngine, settings: Settings, kind: ReportKind | str, at: datetime | None = None
) -> Report:
    """The figures of the `kind` report as of `at` (default: the database's now)."""
    kind = ReportKind(kind)
    now = await database_now(engine)
    if at is None:
        at = now
    elif at.tzinfo is None:
        raise InvalidReportTime("the report's time needs a time zone (an offset such as Z)")
    elif at > now:
        raise InvalidReportTime(
            f"{at.isoformat()} is in the future (the database's time is {now.isoformat()}): "
            "a report covers what has happened"
        )
    period = period_of(kind, at)
    report = Report(period, now, {})
    if kind is ReportKind.DAILY:
        await _daily(engine, settings, report)
    elif kind is ReportKind.WEEKLY:
        await _weekly(engine, report)
    else:
        await _monthly(engine, report)
    return report


async def _daily(engine: AsyncEngine, settings: Settings, report: Report) -> None:
    period = report.period
    at = period.end
    ids = await _ids(
        engine, _LOW_CANDIDATES, at=at, default_threshold=settings.low_stock_threshold
    )
    figures = await figures_of(engine, ids, period.start, at)
    policies = {row.variant_id: row for row in await _rows(engine, _POLICIES, ids=ids)}
    rows: list[dict[str, Any]] = []
    for variant_id, f in figures.items():
        policy = {k: _number(v) for k, v in policies[variant_id]._mapping.items()}
        # The policy as it stands, at the level of `at`.
        policy.update(on_hand=f.on_hand_at_to, reserved=f.on_hand_at_to - f.available_at_to)
        view = policy_view(policy, settings)
        threshold = view.effective_low_stock_threshold
        point = view.effective_reorder_point
        below = [
            name
            for name, limit in (("threshold", threshold), ("reorder point", point))
            if limit is not None and view.available <= limit
        ]
        if not below:
            continue
        rows.append(
            {
                "variantId": variant_id,
                "productId": view.product_id,
                "available": view.available,
                "lowStockThreshold": threshold,
                "reorderPoint": point,
                "reorderPointSource": view.reorder_point_source,
                "below": " and ".join(below),
                "daysOfCover": f.days_of_cover,
                "unitsSoldLast30Days": f.units_sold_last_30_days,
                "supplierId": view.supplier_id,
                "leadTimeDays": view.effective_lead_time_days,
                "suggestedQuantity": view.suggested_quantity,
            }
        )
    # Out of stock first, then the fewest days of cover; without sales (no cover) last.
    rows.sort(
        key=lambda r: (
            r["available"] > 0,
            r["daysOfCover"] is None,
            r["daysOfCover"] or 0.0,
            r["available"],
            r["variantId"],
        )
    )
    report.summary.update(
        asOf=at,
        lowStock=len(rows),
        outOfStock=sum(1 for r in rows if r["available"] <= 0),
        belowReorderPoint=sum(1 for r in rows if "reorder point" in r["below"]),
        suggestedUnits=sum(r["suggestedQuantity"] or 0 for r in rows),
    )
    report.add(
        Table(
            "low_stock",
            "Low stock",
            [
                Column("variantId", "variant"),
                Column("productId", "product"),
                Column("available", "available (units)"),
                Column("lowStockThreshold", "threshold (units)"),
                Column("reorderPoint", "reorder point (units)"),
                Column("reorderPointSource", "point from"),
                Column("below", "at or below"),
                Column("daysOfCover", "days of cover"),
                Column("unitsSoldLast30Days", "sold, 30 days (units)"),
                Column("supplierId", "supplier"),
                Column("leadTimeDays", "lead time (days)"),
                Column("suggestedQuantity", "suggested order (units)"),
            ],
            rows,
            f"Variants whose `available` as of {at.isoformat()} is at or below their "
            "low-stock threshold or their reorder point (configured, else computed), out of "
            "stock first, then by days of cover (available / the average daily units sold "
            "over the 30 days before); without sales last. The suggestion is what a "
            "`stock.reorder` would carry (up to maxStock, else lead time plus the review "
            "period of demand plus safety stock); none without a reorder point.",
        )
    )


@dataclass(slots=True)
class Activity:
    """Analytics over the period for every variant that can have a figure in it."""

    figures: dict[str, VariantFigures]
    #: When each variant's row was created: before then it did not exist, and the 0
    #: analytics reads for that time is not a variant out of stock.
    created: dict[str, datetime]
    #: The stockouts per day table (added to the report where its kind wants it).
    per_day: Table

    def was_out(self, v: VariantFigures, since: datetime) -> bool:
        """Ran out in the window, or was out of stock in it having existed at `since`."""
        return v.stockouts > 0 or (
            v.out_of_stock_seconds > 0 and self.created[v.variant_id] < since
        )


async def _activity(engine: AsyncEngine, report: Report) -> Activity:
    """Every variant changed in the period or out of stock at its start, with its
    figures; the stockouts per day; the summary's units and stockouts."""
    period = report.period
    created = {
        r.variant_id: r.created_at
        for r in await _rows(engine, _ACTIVE, start=period.start, end=period.end)
    }
    figures = await figures_of(engine, created, period.start, period.end)
    activity = Activity(figures, created, Table("", "", [], []))
    out = [v for v in figures.values() if activity.was_out(v, period.start)]
    per_day: list[dict[str, Any]] = []
    for day, start, end in period.days():
        # Only variants out of stock at some moment of the period can be on a day.
        daily = await figures_of(engine, (v.variant_id for v in out), start, end)
        per_day.append(
            {
                "day": day,
                "stockouts": sum(v.stockouts for v in daily.values()),
                "variantsOutOfStock": sum(
                    1 for v in daily.values() if activity.was_out(v, start)
                ),
            }
        )
    activity.per_day = Table(
        "stockouts_per_day",
        "Stockouts per day",
        [
            Column("day", "day (UTC)"),
            Column("stockouts", "stockouts"),
            Column("variantsOutOfStock", "variants out of stock"),
        ],
        per_day,
        "A stockout is `available` reaching 0 from above; a variant out of stock is one "
        "with `available` at 0 at some moment of the day (a variant created that day is "
        "not out of stock before it was created).",
    )
    report.summary.update(
        unitsSold=sum(v.units_sold for v in figures.values()),
        variantsSold=sum(1 for v in figures.values() if v.units_sold > 0),
        stockouts=sum(v.stockouts for v in figures.values()),
        variantsOutOfStock=len(out),
    )
    return activity


async def _accuracy(
    engine: AsyncEngine, report: Report, buckets: Sequence[tuple[str, datetime, datetime]]
) -> None:
    """Count accuracy per bucket (ISO weeks): analytics' count lines over each."""
    lo, hi = buckets[0][1], buckets[-1][2]
    counted = await _ids(engine, _COUNTED, start=lo, end=hi)
    rows: list[dict[str, Any]] = []
    for label, start, end in buckets:
        figures = (await figures_of(engine, counted, start, end)).values()
        lines = sum(v.count_lines for v in figures)
        within = sum(v.count_lines_within_tolerance for v in figures)
        rows.append(
            {
                "week": label,
                "weekStart": start,
                "countLines": lines,
                "withinTolerance": within,
                "accuracy": within / lines if lines else None,
            }
        )
    report.add(
        Table(
            "count_accuracy",
            "Count accuracy per week",
            [
                Column("week", "ISO week"),
                Column("weekStart", "from (UTC)"),
                Column("countLines", "count lines applied"),
                Column("withinTolerance", "within tolerance"),
                Column("accuracy", "accuracy"),
            ],
            rows,
            "The share of the count lines applied in the week (by the count's close) that "
            "were within tolerance; none without counts.",
        )
    )
    # The report's own period (the last bucket for a weekly report, all for a monthly).
    own = [r for r in rows if r["weekStart"] >= report.period.start] or rows[-1:]
    lines = sum(r["countLines"] for r in own)
    within = sum(r["withinTolerance"] for r in own)
    report.summary.update(countLines=lines, countAccuracy=within / lines if lines else None)


def _week_buckets(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """The ISO weeks from the one holding `start` to `end`, each cut to [start, end)."""
    buckets = []
    monday = _midnight(start.date() - timedelta(days=start.weekday()))
    while monday < end:
        year, week, _ = monday.date().isocalendar()
        following = monday + timedelta(days=7)
        buckets.append((f"{year}-W{week:02d}", max(monday, start), min(following, end)))
        monday = following
    return buckets


_MOVER_COLUMNS = [
    Column("rank", "#"),
    Column("variantId", "variant"),
    Column("productId", "product"),
    Column("unitsSold", "sold (units)"),
    Column("unitsReturned", "returned (units)"),
    Column("unitsRestocked", "restocked (units)"),
    Column("netAdjusted", "adjusted (units)"),
    Column("stockouts", "stockouts"),
    Column("outOfStockHours", "out of stock (hours)"),
    Column("averageAvailable", "average available (units)"),
    Column("availableAtEnd", "available at end (units)"),
    Column("daysOfCover", "days of cover"),
    Column("turnover", "turnover"),
    Column("abcClass", "ABC"),
]


def _mover(rank: int, v: VariantFigures) -> dict[str, Any]:
    return {
        "rank": rank,
        "variantId": v.variant_id,
        "productId": v.product_id,
        "unitsSold": v.units_sold,
        "unitsReturned": v.units_returned,
        "unitsRestocked": v.units_restocked,
        "netAdjusted": v.net_adjusted,
        "stockouts": v.stockouts,
        "outOfStockHours": v.out_of_stock_seconds / 3600,
        "averageAvailable": v.average_available,
        "availableAtEnd": v.available_at_to,
        "daysOfCover": v.days_of_cover,
        "turnover": v.turnover,
        "abcClass": v.abc_class,
    }


async def _weekly(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    activity = await _activity(engine, report)
    active = activity.figures
    movers = sorted(
        (v for v in active.values() if v.units_sold > 0),
        key=lambda v: (-v.units_sold, v.variant_id),
    )[:TOP_MOVERS]
    report.add(
        Table(
            "top_movers",
            "Top movers",
            _MOVER_COLUMNS,
            [_mover(rank, v) for rank, v in enumerate(movers, start=1)],
            f"The {TOP_MOVERS} variants that sold the most units in the period (ties by "
            "variant id), with their figures over it (docs/analytics.md).",
        )
    )
    charted = [v.variant_id for v in movers[:CHARTED_MOVERS]]
    steps = await _rows(
        engine, _AVAILABLE_STEPS, ids=[v.variant_id for v in movers],
        start=period.start, end=period.end,
    )
    order = {v.variant_id: i for i, v in enumerate(movers)}
    report.add(
        Table(
            "available_top_movers",
            "Available over time, top movers",
            [
                Column("variantId", "variant"),
                Column("at", "from (UTC)"),
                Column("available", "available (units)"),
            ],
            [
                {"variantId": r.variant_id, "at": r.at, "available": int(r.available)}
                for r in sorted(steps, key=lambda r: (order[r.variant_id], r.version))
                if r.version > 0 or r.existed
            ],
            "Each top mover's `available` (on hand minus reserved) at the start of the "
            "period (if it existed then) and after each change in it, until the next row. "
            f"The chart draws the first {CHARTED_MOVERS}: {', '.join(charted) or 'none'}.",
        )
    )
    stocked_out = sorted(
        (v for v in active.values() if activity.was_out(v, period.start)),
        key=lambda v: (-v.out_of_stock_seconds, -v.stockouts, v.variant_id),
    )
    report.add(
        Table(
            "stockouts",
            "Stockouts",
            [
                Column("variantId", "variant"),
                Column("productId", "product"),
                Column("stockouts", "stockouts"),
                Column("outOfStockHours", "out of stock (hours)"),
                Column("inStockRate", "in stock (share)"),
                Column("unitsSold", "sold (units)"),
                Column("availableAtEnd", "available at end (units)"),
            ],
            [
                {
                    "variantId": v.variant_id,
                    "productId": v.product_id,
                    "stockouts": v.stockouts,
                    "outOfStockHours": v.out_of_stock_seconds / 3600,
                    "inStockRate": v.in_stock_rate,
                    "unitsSold": v.units_sold,
                    "availableAtEnd": v.available_at_to,
                }
                for v in stocked_out
            ],
            "Every variant out of stock at some moment of the period, longest out first "
            "(its hours out of stock are analytics' over the whole period: a variant "
            "created in it counts as out of stock before it was created).",
        )
    )
    report.add(activity.per_day)
    await _anomalies(engine, report)
    await _reconciliation(engine, report)
    first_week = period.start - timedelta(days=7 * (ACCURACY_WEEKS - 1))
    await _accuracy(engine, report, _week_buckets(first_week, period.end))


async def _anomalies(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    found = await _rows(engine, _ANOMALIES, start=period.start, end=period.end)
    rows = [
        {
            "raisedAt": r.raised_at,
            "variantId": r.variant_id,
            "productId": r.product_id,
            "rule": r.rule,
            "observed": _number(r.observed),
            "expected": _number(r.expected),
            "score": _number(r.score),
            "reference": r.reference,
            "actor": r.actor,
        }
        for r in found
    ]
    by_rule: dict[str, int] = {}
    for row in rows:
        by_rule[row["rule"]] = by_rule.get(row["rule"], 0) + 1
    report.summary.update(anomalies=len(rows), anomaliesByRule=dict(sorted(by_rule.items())))
    report.add(
        Table(
            "anomalies",
            "Anomalies raised",
            [
                Column("raisedAt", "raised (UTC)"),
                Column("variantId", "variant"),
                Column("productId", "product"),
                Column("rule", "rule"),
                Column("observed", "observed"),
                Column("expected", "expected"),
                Column("score", "score"),
                Column("reference", "reference"),
                Column("actor", "actor"),
            ],
            rows,
            "Every `stock.anomaly` raised in the period, oldest first.",
        )
    )


async def _reconciliation(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    runs = await _rows(engine, _RUNS, start=period.start, end=period.end)
    before = await _rows(engine, _RUN_BEFORE, start=period.start)
    rows = [
        {
            "runId": r.run_id,
            "finishedAt": r.finished_at,
            "actor": r.actor,
            "checkedVariants": int(r.checked_variants),
            "discrepancies": int(r.discrepancies),
            "kinds": r.kinds,
        }
        for r in runs
    ]
    last = runs[-1] if runs else (before[0] if before else None)
    if last is None:
        outcome = "never run"
    elif int(last.discrepancies) == 0:
        outcome = "clean"
    else:
        found = int(last.discrepancies)
        outcome = f"{found} discrepanc{'y' if found == 1 else 'ies'}"
    report.summary.update(
        reconciliationRuns=len(rows),
        reconciliationOutcome=outcome,
        reconciliationLastRunId=None if last is None else last.run_id,
        reconciliationLastFinishedAt=None if last is None else last.finished_at,
        reconciliationLastRunInPeriod=bool(runs),
    )
    report.add(
        Table(
            "reconciliation",
            "Reconciliation runs",
            [
                Column("runId", "run"),
                Column("finishedAt", "finished (UTC)"),
                Column("actor", "actor"),
                Column("checkedVariants", "variants checked"),
                Column("discrepancies", "discrepancies"),
                Column("kinds", "kinds"),
            ],
            rows,
            "Every reconciliation run that finished in the period (docs/reconciliation.md);"
            " the outcome in the summary is the last one's, before the period if none ran"
            " in it.",
        )
    )


async def _monthly(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    report.add((await _activity(engine, report)).per_day)
    await _abc(engine, report)
    await _reorder_points(engine, report)
    await _lead_times(engine, report)
    await _accuracy(engine, report, _week_buckets(period.start, period.end))


async def _abc(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    sold = await _ids(engine, _SOLD, start=period.end - ABC_PERIOD, end=period.end)
    figures = sorted(
        (await figures_of(engine, sold, period.start, period.end)).values(),
        key=lambda v: (-v.units_sold_last_90_days, v.variant_id),
    )
    total = sum(v.units_sold_last_90_days for v in figures)
    rows: list[dict[str, Any]] = []
    running = 0
    for v in figures:
        running += v.units_sold_last_90_days
        rows.append(
            {
                "variantId": v.variant_id,
                "productId": v.product_id,
                "abcClass": v.abc_class,
                "unitsSold90Days": v.units_sold_last_90_days,
                "share": v.units_sold_last_90_days / total if total else None,
                "cumulativeShare": running / total if total else None,
                "unitsSoldInPeriod": v.units_sold,
            }
        )
    async with engine.connect() as conn:
        variants = int((await conn.execute(_VARIANTS_BEFORE, {"end": period.end})).scalar_one())
    classes: list[dict[str, Any]] = []
    for name in ("A", "B", "C"):
        mine = [r for r in rows if r["abcClass"] == name]
        units = sum(r["unitsSold90Days"] for r in mine)
        count = len(mine) if name != "C" else variants - sum(
            1 for r in rows if r["abcClass"] != "C"
        )
        classes.append(
            {
                "abcClass": name,
                "variants": count,
                "unitsSold90Days": units,
                "share": units / total if total else None,
            }
        )
    report.summary.update(
        abcVariants={c["abcClass"]: c["variants"] for c in classes}, unitsSold90Days=total
    )
    report.add(
        Table(
            "abc_classes",
            "ABC classes",
            [
                Column("abcClass", "class"),
                Column("variants", "variants"),
                Column("unitsSold90Days", "sold, 90 days (units)"),
                Column("share", "share of units"),
            ],
            classes,
            "By units sold over the 90 days before the end of the period: A the variants "
            "making the first 80% of the units, B the next 15%, C the rest and every "
            "variant without sales.",
        )
    )
    report.add(
        Table(
            "abc",
            "Variants by units sold (90 days)",
            [
                Column("variantId", "variant"),
                Column("productId", "product"),
                Column("abcClass", "class"),
                Column("unitsSold90Days", "sold, 90 days (units)"),
                Column("share", "share"),
                Column("cumulativeShare", "cumulative share"),
                Column("unitsSoldInPeriod", "sold in the month (units)"),
            ],
            rows,
            "Every variant that sold in the 90 days, most units first.",
        )
    )


def _reorder_advice(configured: int | None, recommended: int | None) -> str:
    if recommended is None:
        return "no recommendation (no lead time)"
    if configured is None:
        return "none configured: the recommended point is in effect"
    if configured > recommended:
        return "configured above: more stock held than the demand needs"
    if configured < recommended:
        return "configured below: stockouts likely before a delivery arrives"
    return "as recommended"


async def _reorder_points(engine: AsyncEngine, report: Report) -> None:
    found = await _rows(engine, _REORDER_POINTS)
    rows: list[dict[str, Any]] = []
    for r in found:
        configured = None if r.reorder_point is None else int(r.reorder_point)
        recommended = None if r.computed_reorder_point is None else int(r.computed_reorder_point)
        lead = r.lead_time_days if r.lead_time_days is not None else r.measured_lead_time_days
        rows.append(
            {
                "variantId": r.variant_id,
                "productId": r.product_id,
                "supplierId": r.supplier_id,
                "configured": configured,
                "recommended": recommended,
                "difference": None
                if configured is None or recommended is None
                else configured - recommended,
                "averageDailyDemand": _number(r.avg_daily_demand),
                "demandStdev": _number(r.demand_stdev),
                "leadTimeDays": _number(lead),
                "leadTimeFrom": None
                if lead is None
                else ("configured" if r.lead_time_days is not None else "measured"),
                "available": int(r.available),
                "advice": _reorder_advice(configured, recommended),
            }
        )
    rows.sort(
        key=lambda r: (
            r["difference"] is None, -abs(r["difference"] or 0), r["variantId"]
        )
    )
    report.summary.update(
        reorderPoints=len(rows),
        reorderPointsConfiguredAbove=sum(1 for r in rows if (r["difference"] or 0) > 0),
        reorderPointsConfiguredBelow=sum(1 for r in rows if (r["difference"] or 0) < 0),
    )
    report.add(
        Table(
            "reorder_points",
            "Reorder points: recommended against configured",
            [
                Column("variantId", "variant"),
                Column("productId", "product"),
                Column("supplierId", "supplier"),
                Column("configured", "configured (units)"),
                Column("recommended", "recommended (units)"),
                Column("difference", "configured - recommended"),
                Column("averageDailyDemand", "demand (units/day)"),
                Column("demandStdev", "demand stdev"),
                Column("leadTimeDays", "lead time (days)"),
                Column("leadTimeFrom", "lead time from"),
                Column("available", "available now (units)"),
                Column("advice", "advice"),
            ],
            rows,
            "The recommended point is the one the daily `policies` job computed (30 days "
            "of demand times the lead time plus safety stock, docs/design.md \"Policies, "
            "back in stock and reorder\"), as it stands when the report is written; the "
            "largest differences first.",
        )
    )


async def _lead_times(engine: AsyncEngine, report: Report) -> None:
    period = report.period
    found = await _rows(engine, _LEAD_TIMES, start=period.start, end=period.end)
    rows: list[dict[str, Any]] = []
    for r in found:
        measured = _number(r.measured_days)
        configured = _number(r.configured_days)
        rows.append(
            {
                "supplierId": r.supplier_id,
                "variants": int(r.variants),
                "deliveries": int(r.deliveries),
                "measuredDays": measured,
                "shortestDays": _number(r.shortest_days),
                "longestDays": _number(r.longest_days),
                "configuredDays": configured,
                "configuredRange": None
                if r.configured_shortest is None
                else _range(_number(r.configured_shortest), _number(r.configured_longest)),
                "differenceDays": None
                if measured is None or configured is None
                else measured - configured,
                "onTimeShare": int(r.on_time) / int(r.judged) if int(r.judged) else None,
                "deliveriesEver": int(r.deliveries_ever),
                "measuredDaysEver": _number(r.measured_days_ever),
            }
        )
    report.summary.update(
        suppliers=len(rows), deliveries=sum(r["deliveries"] for r in rows)
    )
    report.add(
        Table(
            "lead_times",
            "Supplier lead times",
            [
                Column("supplierId", "supplier"),
                Column("variants", "variants"),
                Column("deliveries", "deliveries"),
                Column("measuredDays", "measured (days)"),
                Column("shortestDays", "shortest (days)"),
                Column("longestDays", "longest (days)"),
                Column("configuredDays", "configured (days)"),
                Column("configuredRange", "configured range (days)"),
                Column("differenceDays", "measured - configured (days)"),
                Column("onTimeShare", "on time (share)"),
                Column("deliveriesEver", "deliveries ever"),
                Column("measuredDaysEver", "measured ever (days)"),
            ],
            rows,
            "A delivery is a restock naming its supplier and when it was ordered; its lead "
            "time is the restock's time minus that. Measured: the average over the "
            "period's deliveries (ever: every delivery before the end, what the `policies` "
            "job uses). Configured: the average of the lead times set on the supplier's "
            "variants. On time: the share of the period's deliveries within their "
            "variant's configured lead time.",
        )
    )


def _range(low: Any, high: Any) -> str:
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


# ------------------------------------------------------------------ writing and storing


@dataclass(frozen=True, slots=True)
class WrittenReport:
    report: Report
    directory: Path
    files: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {**self.report.figures(), "files": self.files}


def report_directory(root: Path | str, period: Period) -> Path:
    return Path(root) / period.kind.value / period.label


async def write_report(
    engine: AsyncEngine,
    settings: Settings,
    kind: ReportKind | str,
    *,
    at: datetime | None = None,
    out: Path | str | None = None,
) -> WrittenReport:
    """Gather the report, write its files under `<out>/<kind>/<period>/` (default:
    STOCK_REPORTS_DIR) and keep its figures in `reports` (replacing the period's row)."""
    from service.application.report_render import render

    report = await gather(engine, settings, kind, at)
    directory = report_directory(out if out is not None else settings.reports_dir, report.period)
    # Drawing the charts (and the first import of matplotlib) is CPU work of a second
    # or more: in a thread, so a worker's event loop keeps consuming, answering and
    # publishing while its reports job runs. report_render draws on its own Agg
    # canvases, with no pyplot state.
    files = await asyncio.to_thread(render, report, directory)
    files = {"directory": str(directory.resolve()), "host": socket.gethostname(), **files}
    async with engine.begin() as conn:
        await conn.execute(
            _STORE,
            {
                "kind": report.kind.value,
                "start": report.period.start,
                "end": report.period.end,
                "generated_at": report.generated_at,
                "figures": json.dumps(report.figures()),
                "files": json.dumps(files),
            },
        )
    return WrittenReport(report, directory, files)


@dataclass(frozen=True, slots=True)
class StoredReport:
    kind: str
    period_start: datetime
    period_end: datetime
    generated_at: datetime
    figures: dict[str, Any]
    files: dict[str, Any]


async def latest_report(engine: AsyncEngine, kind: ReportKind | str) -> StoredReport | None:
    """The stored report of `kind` with the latest period, or None before the first."""
    async with engine.connect() as conn:
        row = (await conn.execute(_LATEST, {"kind": ReportKind(kind).value})).first()
    if row is None:
        return None
    figures, files = row.figures, row.files
    return StoredReport(
        row.kind,
        row.period_start,
        row.period_end,
        row.generated_at,
        figures if isinstance(figures, dict) else json.loads(figures),
        files if isinstance(files, dict) else json.loads(files),
    )


async def scheduled_report(
    engine: AsyncEngine, settings: Settings, kind: ReportKind | str
) -> dict[str, Any]:
    """The scheduled job's work: write the last complete period's report unless it is
    stored whole already (so an hourly job writes each period once, soon after it ends)."""
    kind = ReportKind(kind)
    period = last_complete_period(kind, await database_now(engine))
    async with engine.connect() as conn:
        stored = (
            await conn.execute(_STORED_END, {"kind": kind.value, "start": period.start})
        ).scalar_one_or_none()
    if stored is not None and stored >= period.full_end:
        return {"kind": kind.value, "period": period.label, "written": False}
    written = await write_report(engine, settings, kind, at=period.full_end)
    return {
        "kind": kind.value,
        "period": period.label,
        "written": True,
        "directory": written.files["directory"],
        "charts": len(written.files.get("charts", [])),
        "chartsSkipped": written.files.get("chartsSkipped"),
    }
