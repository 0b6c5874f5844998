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
    variant_id: str
    start: datetime
    end: datetime
    #: The state at `start` (the last change before it, if any), then every change in
    #: the window, oldest first.
    points: list[LevelPoint]
    #: True when the window held more than SERIES_LIMIT changes: the oldest are left out.
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
#: a lock-waiting transaction may have taken before the one it waited for).
_SERIES = text(
    """
    WITH variant AS (SELECT variant_id FROM variants WHERE variant_id = :variant_id),
    before AS (
        SELECT created_at, version, on_hand_after, reserved_after FROM audit_log
        WHERE variant_id = :variant_id AND created_at < :start
        ORDER BY version DESC LIMIT 1
    ),
    within AS (
        SELECT created_at, version, on_hand_after, reserved_after FROM audit_log
        WHERE variant_id = :variant_id AND created_at >= :start AND created_at < :end
        ORDER BY version DESC LIMIT :limit_plus_one
    )
    SELECT 'before' AS part, b.* FROM before AS b
    UNION ALL SELECT 'within', w.* FROM within AS w
    UNION ALL SELECT 'variant', NULL, NULL, NULL, NULL FROM variant
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
        """On hand and available after each change of the window, from the audit log."""
        params = {
            "variant_id": variant_id,
            "start": start,
            "end": end,
            "limit_plus_one": limit + 1,
        }
        async with self.engine.connect() as conn:
            rows = [row._mapping for row in await conn.execute(_SERIES, params)]
        if not any(row["part"] == "variant" for row in rows):
            raise UnknownVariant(variant_id)
        before = [_point(row) for row in rows if row["part"] == "before"]
        within = [_point(row) for row in rows if row["part"] == "within"]
        truncated = len(within) > limit
        within = sorted(within[:limit], key=lambda point: point.version)
        if truncated:
            before = []  # the state at `start` would sit before a gap
        return LevelSeries(variant_id, start, end, before + within, truncated)


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


def _point(row: Any) -> LevelPoint:
    return LevelPoint(
        at=row["created_at"],
        version=row["version"],
        on_hand=row["on_hand_after"],
        available=row["on_hand_after"] - row["reserved_after"],
    )
