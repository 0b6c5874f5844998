"""Analytics (CONTRACT.md, "Analytics"; every formula in docs/analytics.md): per variant,
over a window [from, to), the units moved, time-weighted levels, stockouts, turnover,
sell-through, days of cover, ABC class and count accuracy, all computed set-based in
PostgreSQL from the audit log (service/adapters/analytics_sql.py), and the daily
rollup of units sold that the ABC class reads for whole past days.

A call answers one page of its scope: the variants named (`variant_ids`), those of the
products named (`product_ids`), or every variant, in variant_id order after `after`,
at most `limit` (MAX_LIMIT) a call; `next_after` continues.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.adapters import analytics_sql as sql
from service.domain.errors import UnknownProduct, UnknownVariant

log = logging.getLogger(__name__)

#: The longest window a call may ask for (a leap year).
MAX_WINDOW = timedelta(days=366)
#: The earliest `from`: no stock moved before it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: The window when none is given: the 30 days before now.
DEFAULT_WINDOW = timedelta(days=30)
#: daysOfCover's demand: the units sold over this long before `to`.
COVER_PERIOD = timedelta(days=30)
#: abcClass's ranking: the units sold over this long before `to`.
ABC_PERIOD = timedelta(days=90)
#: Variants per call: the default and the most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The most variantIds plus productIds one call may name.
MAX_IDS = 1000
#: Whole days one rollup transaction fills (the first run may have a long history).
ROLLUP_CHUNK_DAYS = 31
#: abcClass starts from `abc_tiers` (the ranking over the 90 days before its hour H)
#: when `to` is at most this far from H, correcting it by the SALE rows in between.
TIERS_REACH = timedelta(days=2)
#: Where abcClass comes from: `abc_tiers` corrected, the rollup and the raw log, or the
#: raw log alone; `auto`: the first that can answer.
AbcSource = Literal["tiers", "rollup", "log"]

INVALID_WINDOW = "invalid_window"


class InvalidWindow(ValueError):
    """A window that is empty, reversed, longer than MAX_WINDOW, or ends in the future.
    422 `invalid_window` on HTTP, exit status 2 on the CLI."""

    code = INVALID_WINDOW

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True, slots=True)
class AnalyticsQuery:
    #: None: `to` - DEFAULT_WINDOW.
    start: datetime | None = None
    #: None: the database's now.
    end: datetime | None = None
    variant_ids: tuple[str, ...] = ()
    product_ids: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    #: Only variants whose id sorts after this one (the previous page's `next_after`).
    after: str = ""

    @property
    def everything(self) -> bool:
        return not self.variant_ids and not self.product_ids


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant's figures over the window (names as in docs/analytics.md)."""

    variant_id: str
    product_id: str
    units_sold: int
    units_returned: int
    units_restocked: int
    net_adjusted: int
    average_on_hand: float
    average_available: float
    turnover: float | None
    sell_through: float | None
    stockouts: int
    out_of_stock_seconds: float
    in_stock_rate: float
    days_of_cover: float | None
    abc_class: str
    accuracy: float | None
    # What the figures are computed from, for a person checking them by hand.
    on_hand_at_from: int
    on_hand_at_to: int
    available_at_to: int
    changes: int
    units_sold_last_30_days: int
    units_sold_last_90_days: int
    count_lines: int
    count_lines_within_tolerance: int

    def as_json(self) -> dict[str, Any]:
        return {_camel(name): getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class AnalyticsReport:
    start: datetime
    end: datetime
    variants: list[VariantFigures]
    #: Pass as `after` for the next page; None on the last.
    next_after: str | None
    #: Where abcClass came from.
    abc_source: AbcSource = "log"

    @property
    def window_seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "windowSeconds": self.window_seconds,
            "variants": [v.as_json() for v in self.variants],
            "nextAfter": self.next_after,
        }


#: The figures in the order the CLI's table and CSV show them.
FIELDS = [name for name in VariantFigures.__slots__]


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def camel_fields() -> list[str]:
    return [_camel(name) for name in FIELDS]


# ------------------------------------------------------------------ the window


def check_window(start: datetime, end: datetime, now: datetime) -> None:
    """Refuses a window the figures cannot be computed over (InvalidWindow)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidWindow("from and to need a time zone (an offset such as Z or +02:00)")
    if start < EARLIEST:
        raise InvalidWindow(
            f"from ({start.isoformat()}) is before {EARLIEST.date().isoformat()}",
            earliest=EARLIEST.isoformat(),
        )
    if start >= end:
        raise InvalidWindow(
            f"from ({start.isoformat()}) must be before to ({end.isoformat()})",
            **{"from": start.isoformat(), "to": end.isoformat()},
        )
    if end - start > MAX_WINDOW:
        raise InvalidWindow(
            f"the window is {(end - start) / timedelta(days=1):g} days; at most "
            f"{MAX_WINDOW.days} days",
            maxDays=MAX_WINDOW.days,
        )
    if end > now:
        raise InvalidWindow(
            f"to ({end.isoformat()}) is in the future (the database's time is "
            f"{now.isoformat()}): the figures cover what has happened",
            now=now.isoformat(),
        )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _next_midnight(moment: datetime) -> date:
    """The first UTC midnight at or after `moment`, as its date."""
    utc = moment.astimezone(UTC)
    day = utc.date()
    return day if utc == _midnight(day) else day + timedelta(days=1)


def tiers_ranges(
    end: datetime, tiers_at: datetime, complete_before: datetime | None
) -> dict[str, Any]:
    """The parameters of sql.ABC_FROM_TIERS: `abc_tiers` ranks S = [H - 90 days, H); the
    90 days before `end` add the SALE rows of [H, end) and drop those of
    [H - 90 days, end - 90 days) (the other way round when `end` is before H). S itself
    is read as abc_ranges reads any 90 days (prefixed `s_`)."""
    low, high = sorted((tiers_at, end))
    sign = 1 if end >= tiers_at else -1
    inside = abc_ranges(tiers_at - ABC_PERIOD, tiers_at, complete_before)
    return {
        "r1_lo": low, "r1_hi": high, "s1": sign,
        "r2_lo": low - ABC_PERIOD, "r2_hi": high - ABC_PERIOD, "s2": -sign,
        "s_day_lo": inside["day_lo"], "s_day_hi": inside["day_hi"],
        "s_from": inside["abc_from"], "s_raw_lo_end": inside["raw_lo_end"],
        "s_raw_hi_start": inside["raw_hi_start"], "s_to": inside["abc_to"],
    }


def abc_ranges(
    start: datetime, end: datetime, complete_before: datetime | None
) -> dict[str, Any]:
    """The parameters of sql.ABC for the sales over [start, end): the rollup's whole
    days [day_lo, day_hi), all before `complete_before`, and the raw log for the rest
    ([start, raw_lo_end) and [raw_hi_start, end)). Without a usable rollup day, the raw
    log alone (the second range empty)."""
    day_lo = _next_midnight(start)
    day_hi = end.astimezone(UTC).date()  # the day `end` falls in: not whole
    if complete_before is not None:
        day_hi = min(day_hi, complete_before.astimezone(UTC).date())
    if complete_before is None or day_hi <= day_lo:
        return {
            "day_lo": day_lo, "day_hi": day_lo,
            "abc_from": start, "raw_lo_end": end, "raw_hi_start": end, "abc_to": end,
        }
    return {
        "day_lo": day_lo, "day_hi": day_hi,
        "abc_from": start, "raw_lo_end": _midnight(day_lo),
        "raw_hi_start": _midnight(day_hi), "abc_to": end,
    }


# ------------------------------------------------------------------ the figures


async def analytics(
    engine: AsyncEngine,
    query: AnalyticsQuery,
    *,
    abc: AbcSource | Literal["auto"] = "auto",
) -> AnalyticsReport:
    """The figures of one page of the query's scope over its window, from one snapshot
    (REPEATABLE READ, read only). `abc` forces where abcClass comes from (the tests and
    the benchmark compare them; each gives the same classes); `auto`: `abc_tiers` when
    `to` is within TIERS_REACH of its hour, else the rollup with the raw log, else the
    raw log."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIMIT}")
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            await conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            clock = (await conn.execute(sql.CLOCK)).one()
            end = query.end or clock.now
            start = query.start or max(end, EARLIEST + DEFAULT_WINDOW) - DEFAULT_WINDOW
            check_window(start, end, clock.now)
            await _check_known(conn, query)
            rows = (
                await conn.execute(
                    sql.SCOPE,
                    {
                        "everything": query.everything,
                        "variant_ids": list(query.variant_ids),
                        "product_ids": list(query.product_ids),
                        "after": query.after,
                        "limit": query.limit + 1,
                    },
                )
            ).all()
            page, more = rows[: query.limit], len(rows) > query.limit
            ids = [r.variant_id for r in page]
            products = {r.variant_id: r.product_id for r in page}
            figures = await figures_of(conn, ids, start, end)
            source = _abc_source(abc, end, clock)
            if source == "tiers":
                ranges = tiers_ranges(end, clock.tiers_at, clock.rollup_complete_before)
                classes = await _abc(conn, sql.ABC_FROM_TIERS, ids, ranges)
            else:
                complete_before = clock.rollup_complete_before if source == "rollup" else None
                classes = await _abc(
                    conn, sql.ABC, ids, abc_ranges(end - ABC_PERIOD, end, complete_before)
                )
    window = Decimal((end - start) / timedelta(microseconds=1)) / 1_000_000
    variants = [
        _variant(row, products[row.variant_id], classes[row.variant_id], window)
        for row in figures
    ]
    return AnalyticsReport(
        start, end, variants, ids[-1] if more and ids else None, abc_source=source
    )


def _abc_source(wanted: str, end: datetime, clock: Any) -> AbcSource:
    tiers_at, complete_before = clock.tiers_at, clock.rollup_complete_before
    usable_tiers = tiers_at is not None and abs(end - tiers_at) <= TIERS_REACH
    if wanted == "tiers" and not usable_tiers:
        raise ValueError("abc_tiers cannot answer for this `to`")
    if wanted in ("tiers", "log") or (wanted == "rollup" and complete_before is not None):
        return wanted  # type: ignore[return-value]
    if wanted == "auto" and usable_tiers:
        return "tiers"
    return "rollup" if complete_before is not None else "log"


async def _check_known(conn: AsyncConnection, query: AnalyticsQuery) -> None:
    if query.everything:
        return
    unknown = (
        await conn.execute(
            sql.UNKNOWN,
            {"variant_ids": list(query.variant_ids), "product_ids": list(query.product_ids)},
        )
    ).all()
    variants = [r.id for r in unknown if r.kind == "variant"]
    if variants:
        raise UnknownVariant(*variants)
    products = [r.id for r in unknown if r.kind == "product"]
    if products:
        raise UnknownProduct(products[0])


async def figures_of(
    conn: AsyncConnection, ids: Sequence[str], start: datetime, end: datetime
) -> list[Any]:
    if not ids:
        return []
    result = await conn.execute(
        sql.FIGURES,
        {"ids": list(ids), "from_ts": start, "to_ts": end, "cover_from": end - COVER_PERIOD},
    )
    return list(result.all())


async def _abc(
    conn: AsyncConnection, statement: Any, ids: Sequence[str], ranges: dict[str, Any]
) -> dict[str, Any]:
    if not ids:
        return {}
    result = await conn.execute(statement, {"ids": list(ids), **ranges})
    return {row.variant_id: row for row in result}


def _ratio(numerator: Decimal | int, denominator: Decimal | int) -> float | None:
    return None if denominator == 0 else float(Decimal(numerator) / Decimal(denominator))


def _variant(row: Any, product_id: str, abc: Any, window: Decimal) -> VariantFigures:
    sold = int(row.units_sold)
    average_on_hand = Decimal(row.on_hand_seconds) / window
    average_available = Decimal(row.available_seconds) / window
    out_of_stock = Decimal(row.out_of_stock_seconds)
    sold_30 = int(row.sold_last_30_days)
    lines = int(row.count_lines)
    return VariantFigures(
        variant_id=row.variant_id,
        product_id=product_id,
        units_sold=sold,
        units_returned=int(row.units_returned),
        units_restocked=int(row.units_restocked),
        net_adjusted=int(row.net_adjusted),
        average_on_hand=float(average_on_hand),
        average_available=float(average_available),
        turnover=_ratio(sold, average_on_hand),
        sell_through=_ratio(sold, sold + int(row.on_hand_at_to)),
        stockouts=int(row.stockouts),
        out_of_stock_seconds=float(out_of_stock),
        in_stock_rate=float(1 - out_of_stock / window),
        days_of_cover=(
            None
            if sold_30 == 0
            else float(Decimal(int(row.available_at_to)) * COVER_PERIOD.days / sold_30)
        ),
        abc_class=abc.abc_class,
        accuracy=_ratio(int(row.count_lines_within), lines),
        on_hand_at_from=int(row.on_hand_at_from),
        on_hand_at_to=int(row.on_hand_at_to),
        available_at_to=int(row.available_at_to),
        changes=int(row.changes),
        units_sold_last_30_days=sold_30,
        units_sold_last_90_days=int(abc.units),
        count_lines=lines,
        count_lines_within_tolerance=int(row.count_lines_within),
    )


# ------------------------------------------------------------------ the rollup


@dataclass(frozen=True, slots=True)
class RollupRun:
    #: Every day before this UTC midnight is rolled up.
    complete_before: datetime
    days: int
    rows: int
    #: The hour of `abc_tiers` if this run ranked again (None: it was up to date).
    tiers_at: datetime | None = None
    #: Tiers (distinct units sold) of that ranking.
    tiers: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "completeBefore": self.complete_before.isoformat(),
            "days": self.days,
            "rows": self.rows,
            "tiersAt": None if self.tiers_at is None else self.tiers_at.isoformat(),
            "tiers": self.tiers,
        }


async def roll_up(engine: AsyncEngine) -> RollupRun:
    """Add every whole UTC day that no transaction can write into any more to
    `variant_daily_sales`, at most ROLLUP_CHUNK_DAYS days a transaction. The first run
    starts at the first sale's day. One run at a time (the rollup's row is locked)."""
    days = rows = 0
    horizon: datetime | None = None
    hour: datetime | None = None
    while True:
        async with engine.begin() as conn:
            if horizon is None:
                found = (await conn.execute(sql.HORIZON)).one()
                horizon, hour = found.horizon, found.hour
                first = found.first_sale_day
                start = horizon if first is None else min(first, horizon)
                await conn.execute(sql.START_ROLLUP, {"start": start})
            done: datetime = (await conn.execute(sql.ROLLUP_STATE)).scalar_one()
            assert horizon is not None
            if done >= horizon:
                break
            hi = min(horizon, done + timedelta(days=ROLLUP_CHUNK_DAYS))
            written = await conn.execute(sql.ROLL_UP, {"lo": done, "hi": hi})
            await conn.execute(sql.MARK_ROLLED_UP, {"hi": hi})
            rows += max(written.rowcount or 0, 0)
            days += round((hi - done) / timedelta(days=1))
    assert hour is not None
    tiers_at, tiers = await rank(engine, hour)
    if days:
        log.info("rollup: %d days, %d rows; complete before %s", days, rows, done.isoformat())
    return RollupRun(done, days, rows, tiers_at, tiers)


async def rank(engine: AsyncEngine, at: datetime) -> tuple[datetime | None, int]:
    """`abc_tiers` for the 90 days before `at` (a time no row can be written before any
    more: the rollup job's hour), unless it is for that time already: (`at`, its tiers),
    or (None, 0)."""
    async with engine.begin() as conn:
        await conn.execute(sql.LOCK_TIERS)  # one ranking at a time
        current = (await conn.execute(sql.TIERS_STATE)).scalar_one_or_none()
        if current == at:
            return None, 0
        complete_before = (await conn.execute(sql.CLOCK)).one().rollup_complete_before
        await conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        await conn.execute(sql.CLEAR_TIERS)
        written = await conn.execute(
            sql.BUILD_TIERS, abc_ranges(at - ABC_PERIOD, at, complete_before)
        )
        await conn.execute(sql.MARK_TIERS, {"at": at})
        return at, max(written.rowcount or 0, 0)
