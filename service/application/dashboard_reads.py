"""The dashboard's reads (service/entrypoints/http/dashboard/): what needs attention, the
latest anomalies, the open counts, and one variant's levels over a window.

Plain reads without locks, one statement each, like `queries.py`: the page shows a
snapshot and the live stream moves it on. Thresholds and reorder points are the ones
in effect: the variant's own, else the default threshold (STOCK_LOW_STOCK_THRESHOLD),
else the computed reorder point (the `policies` job's), as the ledger uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.errors import UnknownVariant
from service.domain.replenishment import days_of_cover
from service.settings import Settings

#: Rows a list of the overview shows at most (the API pages further).
ATTENTION_LIMIT = 200
ANOMALY_LIMIT = 20
OPEN_COUNT_LIMIT = 50
#: Points of a chart at most: the latest changes of the window (the page says so).
SERIES_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class AttentionRow:
    """A variant at or below its low-stock threshold or its reorder point."""

    variant_id: str
    product_id: str
    on_hand: int
    reserved: int
    available: int
    version: int
    threshold: int
    reorder_point: int | None
    days_of_cover: float | None

    @property
    def is_low(self) -> bool:
        return self.available <= self.threshold

    @property
    def needs_reorder(self) -> bool:
        return self.reorder_point is not None and self.available <= self.reorder_point


@dataclass(frozen=True, slots=True)
class AnomalyRow:
    variant_id: str
    product_id: str
    rule: str
    observed: float
    expected: float
    score: float | None
    reference: str | None
    actor: str
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class OpenCountRow:
    count_id: str
    product_id: str | None
    blind: bool
    opened_by: str
    opened_at: datetime
    lines: int
    counted: int


@dataclass(frozen=True, slots=True)
class LevelPoint:
    at: datetime
    version: int
    on_hand: int
    available: int


@dataclass(frozen=True, slots=True)
class LevelSeries:
    """A variant's level over a window as a step function: each point is the level from
    its time until the next point's.

    `points` is the level at the window's start (the last change at or before it; with
    no such change, the level before the window's first change, or the current level
    when there is none, from the variant's creation if that came later; nothing when the
    variant was made by its first change), then every change in the window, oldest
    first, then the current level at `end`.
    """

    variant_id: str
    start: datetime
    end: datetime
    points: list[LevelPoint]
    #: Changes inside the window that are among `points` (at most SERIES_LIMIT).
    changes: int
    #: When the level at the window's start was set: the last change at or before the
    #: start, else the variant's creation (None when the window has changes).
    level_since: datetime | None
    #: True when the window held more than SERIES_LIMIT changes: the oldest are left out
    #: (and the series starts at the oldest change kept, not at `start`).
    truncated: bool


_ATTENTION = text(
    """
    SELECT variant_id, product_id, on_hand, reserved, on_hand - reserved AS available, version,
           COALESCE(low_stock_threshold, :default_threshold) AS threshold,
           COALESCE(reorder_point, computed_reorder_point) AS reorder_point,
           avg_daily_demand
    FROM variants
    WHERE on_hand - reserved <= COALESCE(low_stock_threshold, :default_threshold)
       OR on_hand - reserved <= COALESCE(reorder_point, computed_reorder_point)
    ORDER BY on_hand - reserved, variant_id
    LIMIT :limit
    """
)

_ANOMALIES = text(
    """
    SELECT variant_id, product_id, rule, observed, expected, score, reference, actor, raised_at
    FROM anomalies ORDER BY raised_at DESC, id DESC LIMIT :limit
    """
)

_OPEN_COUNTS = text(
    """
    SELECT c.count_id, c.product_id, c.blind, c.opened_by, c.opened_at,
           count(l.variant_id) AS lines, count(l.counted) AS counted
    FROM stock_counts AS c LEFT JOIN stock_count_lines AS l ON l.count_id = c.count_id
    WHERE c.status = 'OPEN'
    GROUP BY c.count_id
    ORDER BY c.opened_at DESC, c.count_id
    LIMIT :limit
    """
)

#: Versions order a variant's changes (created_at is the transaction's start, which
#: a lock-waiting transaction may have taken before the one it waited for). The audit
#: part is one range of the index audit_log_variant_version (variant_id, version), read
#: backwards from the newest version and bounded: the window's changes (at most the
#: limit, plus one to know it cut), the row at or before the start, plus one when there
#: is no such row among them. A window of a busy variant costs the limit, not its whole
#: history. The variants row is the current level, from the same snapshot.
_SERIES = text(
    """
    SELECT 'variant' AS part, created_at, version, on_hand AS on_hand_after,
           reserved AS reserved_after, NULL::bigint AS delta_on_hand,
           NULL::bigint AS delta_reserved
    FROM variants WHERE variant_id = :variant_id
    UNION ALL (
        SELECT 'audit', created_at, version, on_hand_after, reserved_after,
               delta_on_hand, delta_reserved
        FROM audit_log WHERE variant_id = :variant_id
        ORDER BY version DESC LIMIT :limit_plus_two
    )
    """
)


class DashboardReads:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    async def attention(self, limit: int = ATTENTION_LIMIT) -> list[AttentionRow]:
        """Variants at or below their threshold or reorder point, least available first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                _ATTENTION,
                {"default_threshold": self.settings.low_stock_threshold, "limit": limit},
            )
            found = [row._mapping for row in rows]
        return [_attention(row) for row in found]

    async def latest_anomalies(self, limit: int = ANOMALY_LIMIT) -> list[AnomalyRow]:
        async with self.engine.connect() as conn:
            rows = [row._mapping for row in await conn.execute(_ANOMALIES, {"limit": limit})]
        return [
            AnomalyRow(
                variant_id=row["variant_id"],
                product_id=row["product_id"],
                rule=row["rule"],
                observed=float(row["observed"]),
                expected=float(row["expected"]),
                score=None if row["score"] is None else float(row["score"]),
                reference=row["reference"],
                actor=row["actor"],
                raised_at=row["raised_at"],
            )
            for row in rows
        ]

    async def open_counts(self, limit: int = OPEN_COUNT_LIMIT) -> list[OpenCountRow]:
        async with self.engine.connect() as conn:
            rows = [row._mapping for row in await conn.execute(_OPEN_COUNTS, {"limit": limit})]
        return [OpenCountRow(**dict(row)) for row in rows]

    async def level_series(
        self, variant_id: str, start: datetime, end: datetime, limit: int = SERIES_LIMIT
    ) -> LevelSeries:
        """The variant's on hand and available over [start, end] as a step function,
        from the audit log and its current row (one statement)."""
        params = {"variant_id": variant_id, "limit_plus_two": limit + 2}
        async with self.engine.connect() as conn:
            rows = [row._mapping for row in await conn.execute(_SERIES, params)]
        current = next((row for row in rows if row["part"] == "variant"), None)
        if current is None:
            raise UnknownVariant(variant_id)
        newest_first = sorted(
            (row for row in rows if row["part"] == "audit"), key=lambda row: -row["version"]
        )
        before, within = _split_at(newest_first, start)
        return _step_series(variant_id, start, end, current, before, within, limit)


def _split_at(newest_first: list[Any], start: datetime) -> tuple[Any | None, list[Any]]:
    """The last change at or before `start` (the highest version stamped then: every
    later version is in the window) and the changes after it, oldest first."""
    for index, row in enumerate(newest_first):
        if row["created_at"] <= start:
            return row, newest_first[:index][::-1]
    return None, newest_first[::-1]


def _step_series(
    variant_id: str,
    start: datetime,
    end: datetime,
    current: Any,
    before: Any | None,
    within: list[Any],
    limit: int,
) -> LevelSeries:
    truncated = len(within) > limit
    within = within[len(within) - limit :] if truncated else within
    # Drawn in version order at times that never go back: a change stamped before the
    # one it waited for is drawn at that one's time, and a change whose transaction
    # started after `end` was taken (it committed before the statement ran) at the end.
    changes: list[LevelPoint] = []
    for row in within:
        at = min(row["created_at"], end)
        changes.append(_point(row, max(at, changes[-1].at) if changes else at))
    opening: list[LevelPoint] = []
    level_since: datetime | None = None
    if truncated:
        pass  # the state at `start` would sit before a gap: the series starts at a change
    elif before is not None:
        opening = [_point(before, start)]
        level_since = before["created_at"]
    elif changes and current["created_at"] < changes[0].at:
        # No change at or before the start, but the variant existed before its first
        # change (its row is made without an audit row): the level until that change is
        # what the change started from.
        first = within[0]
        on_hand = first["on_hand_after"] - first["delta_on_hand"]
        reserved = first["reserved_after"] - first["delta_reserved"]
        opening = [
            LevelPoint(
                at=max(start, current["created_at"]),
                version=first["version"] - 1,
                on_hand=on_hand,
                available=on_hand - reserved,
            )
        ]
    elif changes:
        pass  # made by its first change (same transaction): the series starts there
    else:
        # No history at all: the current level, since the variant was made.
        level_since = current["created_at"]
        opening = [_point(current, max(start, min(current["created_at"], end)))]
    closing = _point(current, end)
    return LevelSeries(
        variant_id=variant_id,
        start=start,
        end=end,
        points=[*opening, *changes, closing],
        changes=len(changes),
        level_since=None if changes else level_since,
        truncated=truncated,
    )


def _attention(row: Any) -> AttentionRow:
    demand = row["avg_daily_demand"]
    return AttentionRow(
        variant_id=row["variant_id"],
        product_id=row["product_id"],
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        available=row["available"],
        version=row["version"],
        threshold=row["threshold"],
        reorder_point=row["reorder_point"],
        days_of_cover=days_of_cover(row["available"], None if demand is None else float(demand)),
    )


def _point(row: Any, at: datetime) -> LevelPoint:
    return LevelPoint(
        at=at,
        version=row["version"],
        on_hand=row["on_hand_after"],
        available=row["on_hand_after"] - row["reserved_after"],
    )
