"""Analytics (CONTRACT.md, "Analytics"; docs/analytics.md) against histories computed by
hand: audit rows inserted with chosen `created_at` values (versions 1..N, each row's
`on_hand_after`/`reserved_after` the running sums, the variant row at the end state,
as the service writes them), then every figure compared with the worked numbers.

Variant `a` (times in hours after midnight of day B, 20 days ago):

    h0  RESTOCK    +10        on_hand 10 reserved 0  available 10
    h2  RESERVE     0 / +3            10          3            7
    h3  SALE       -3 / -3             7          0            7
    h5  RESERVE     0 / +7             7          7            0   stockout 1
    h6  SALE       -7 / -7             0          0            0   (still out)
    h8  RESTOCK    +5                  5          0            5
    h9  RETURN     +1                  6          0            6
    h10 ADJUSTMENT -6                  0          0            0   stockout 2
    h12 RESTOCK    +4                  4          0            4
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters import analytics_sql
from service.application.analytics import (
    AnalyticsQuery,
    InvalidWindow,
    analytics,
    rank,
    roll_up,
)
from service.domain.counts import within_tolerance
from service.domain.errors import UnknownProduct, UnknownVariant
from service.settings import Settings
from tests.integration.test_http_api import client_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
API = "/api/inventory/analytics"
HOUR = timedelta(hours=1)

A_HISTORY = [
    (0, "RESTOCK", 10, 0),
    (2, "RESERVE", 0, 3),
    (3, "SALE", -3, -3),
    (5, "RESERVE", 0, 7),
    (6, "SALE", -7, -7),
    (8, "RESTOCK", 5, 0),
    (9, "RETURN", 1, 0),
    (10, "ADJUSTMENT", -6, 0),
    (12, "RESTOCK", 4, 0),
]


async def write_history(
    engine: AsyncEngine,
    variant: str,
    product: str,
    base: datetime,
    rows: list[tuple[float, str, int, int]],
) -> None:
    """The variant and its audit rows, versions 1..N in the order given (each at
    base + hours); the variant row ends where the log does."""
    on_hand = reserved = 0
    values = []
    for version, (hours, kind, d_on_hand, d_reserved) in enumerate(rows, start=1):
        on_hand += d_on_hand
        reserved += d_reserved
        assert 0 <= reserved <= on_hand
        values.append(
            {
                "v": variant, "kind": kind, "d_on_hand": d_on_hand, "d_reserved": d_reserved,
                "on_hand": on_hand, "reserved": reserved, "version": version,
                "at": base + timedelta(hours=hours),
            }
        )
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO variants (variant_id, product_id, on_hand, reserved, version) "
                "VALUES (:v, :p, :on_hand, :reserved, :version)"
            ),
            {"v": variant, "p": product, "on_hand": on_hand, "reserved": reserved,
             "version": len(rows)},
        )
        if values:
            await conn.execute(
                text(
                    """
                    INSERT INTO audit_log (
                        variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
                        reserved_after, version, reference, actor, created_at
                    ) VALUES (:v, :kind, :d_on_hand, :d_reserved, :on_hand, :reserved,
                              :version, 'test', 'test', :at)
                    """
                ),
                values,
            )


@pytest.fixture
async def base(engine: AsyncEngine) -> datetime:
    """Midnight UTC 20 days ago: hour 0 of the histories."""
    async with engine.connect() as conn:
        now = (await conn.execute(text("SELECT now()"))).scalar_one()
    day = (now - timedelta(days=20)).astimezone(UTC).date()
    return datetime.combine(day, datetime.min.time(), UTC)


@pytest.fixture
async def shop(engine: AsyncEngine, base: datetime) -> datetime:
    """Variant `a` above, and sellers for the ABC ranking (units over the 90 days):
    b 50, c 30, a 10, d 6, h 4 (total 100), e restocked but never sold, f never stocked."""
    await write_history(engine, "a", "shirt", base, A_HISTORY)
    await write_history(
        engine, "b", "shirt", base,
        [(0, "RESTOCK", 100, 0), (1, "SALE", -20, 0), (2, "SALE", -30, 0)],
    )
    await write_history(engine, "c", "poster", base, [(0, "RESTOCK", 40, 0), (4, "SALE", -30, 0)])
    await write_history(engine, "d", "poster", base, [(0, "RESTOCK", 6, 0), (7, "SALE", -6, 0)])
    await write_history(engine, "h", "mug", base, [(0, "RESTOCK", 9, 0), (7, "SALE", -4, 0)])
    await write_history(engine, "e", "mug", base, [(0, "RESTOCK", 3, 0)])
    await write_history(engine, "f", "mug", base, [])
    return base


async def figures(
    engine: AsyncEngine, start: datetime | None, end: datetime | None, *variants: str,
    abc: str = "auto",
) -> dict[str, dict]:
    report = await analytics(engine, AnalyticsQuery(start, end, variant_ids=variants), abc=abc)
    return {v.variant_id: v.as_json() for v in report.variants}


def h(base: datetime, hours: float) -> datetime:
    return base + timedelta(hours=hours)


# ------------------------------------------------------------------ the formulas


async def test_a_window_over_the_whole_history_of_a(engine, shop) -> None:
    """[h1, h11): 10 hours. Levels (on_hand/available) by hour: 10/10, 10/7, 7/7, 7/7,
    7/0, 0/0, 0/0, 5/5, 6/6, 0/0."""
    [a] = (await figures(engine, h(shop, 1), h(shop, 11), "a")).values()
    assert a["unitsSold"] == 10 and a["unitsReturned"] == 1
    assert a["unitsRestocked"] == 5 and a["netAdjusted"] == -6
    assert a["averageOnHand"] == pytest.approx(52 / 10)  # 10+10+7+7+7+0+0+5+6+0
    assert a["averageAvailable"] == pytest.approx(42 / 10)  # 10+7+7+7+0+0+0+5+6+0
    assert a["stockouts"] == 2  # h5 (7 -> 0) and h10 (6 -> 0); h6 stays at 0
    assert a["outOfStockSeconds"] == 4 * 3600  # [h5, h8) and [h10, h11)
    assert a["inStockRate"] == pytest.approx(0.6)
    assert a["turnover"] == pytest.approx(10 / 5.2)
    assert (a["onHandAtFrom"], a["onHandAtTo"], a["availableAtTo"]) == (10, 0, 0)
    assert a["sellThrough"] == 1.0  # 10 / (10 + 0)
    assert a["daysOfCover"] == 0.0  # nothing available at `to`
    assert a["changes"] == 7


async def test_a_window_that_starts_in_a_stockout_does_not_count_it(engine, shop) -> None:
    """[h7, h11): out of stock since h5 at the start (h7-h8 counts its seconds, not a
    new stockout), back at h8, out again at h10 (one stockout)."""
    [a] = (await figures(engine, h(shop, 7), h(shop, 11), "a")).values()
    assert a["stockouts"] == 1
    assert a["outOfStockSeconds"] == 2 * 3600  # [h7, h8) and [h10, h11)
    assert a["inStockRate"] == pytest.approx(0.5)
    assert a["averageOnHand"] == pytest.approx((0 + 5 + 6 + 0) / 4)
    assert a["unitsSold"] == 0 and a["turnover"] == 0.0
    assert a["sellThrough"] is None  # 0 / (0 + 0)
    assert a["onHandAtFrom"] == 0


async def test_a_window_that_ends_in_a_stockout_counts_only_its_part(engine, shop) -> None:
    """[h4, h7): 7/7 for an hour, then out of stock from h5 to the end."""
    [a] = (await figures(engine, h(shop, 4), h(shop, 7), "a")).values()
    assert a["stockouts"] == 1
    assert a["outOfStockSeconds"] == 2 * 3600
    assert a["inStockRate"] == pytest.approx(1 / 3)
    assert a["averageOnHand"] == pytest.approx((7 + 7 + 0) / 3)
    assert a["averageAvailable"] == pytest.approx(7 / 3)
    assert a["unitsSold"] == 7 and a["sellThrough"] == 1.0


async def test_a_window_of_five_seconds(engine, shop) -> None:
    """[h5 - 2 s, h5 + 3 s): 7 available for 2 s, then 0 for 3 s."""
    start = h(shop, 5) - timedelta(seconds=2)
    [a] = (await figures(engine, start, start + timedelta(seconds=5), "a")).values()
    assert a["averageOnHand"] == 7.0
    assert a["averageAvailable"] == pytest.approx(7 * 2 / 5)
    assert a["outOfStockSeconds"] == 3.0
    assert a["stockouts"] == 1
    assert a["inStockRate"] == pytest.approx(0.4)
    assert a["unitsSold"] == 0


async def test_a_window_of_a_year_counts_the_time_before_the_first_delivery(
    engine, shop
) -> None:
    """[h13 - 366 days, h13): level 0 until h0, then the history, then 4 from h12."""
    end = h(shop, 13)
    [a] = (await figures(engine, end - timedelta(days=366), end, "a")).values()
    year = 366 * 86400
    assert a["outOfStockSeconds"] == year - 13 * 3600 + 3 * 3600 + 2 * 3600
    assert a["inStockRate"] == pytest.approx(1 - a["outOfStockSeconds"] / year)
    # 10+10 (h0-h2), 10, 7+7, 7, 0+0, 5, 6, 0+0, 4: 66 unit-hours
    assert a["averageOnHand"] == pytest.approx(66 * 3600 / year)
    assert a["stockouts"] == 2  # 0 before the first row is no stockout
    assert (a["unitsSold"], a["unitsRestocked"], a["onHandAtTo"]) == (10, 19, 4)
    assert a["sellThrough"] == pytest.approx(10 / 14)
    assert a["daysOfCover"] == pytest.approx(4 * 30 / 10)  # 4 available, 10 sold in 30 days


async def test_units_add_up_to_the_change_of_level(engine, shop) -> None:
    for start, end in ((1, 11), (0, 13), (2.5, 9.5), (6, 6.5)):
        [a] = (await figures(engine, h(shop, start), h(shop, end), "a")).values()
        moved = a["unitsRestocked"] + a["unitsReturned"] + a["netAdjusted"] - a["unitsSold"]
        assert a["onHandAtTo"] - a["onHandAtFrom"] == moved, (start, end)


async def test_days_of_cover_and_its_absence_without_sales(engine, shop) -> None:
    found = await figures(engine, h(shop, 0), h(shop, 13), "b", "e", "f")
    assert found["b"]["daysOfCover"] == pytest.approx(50 * 30 / 50)
    assert found["e"]["daysOfCover"] is None and found["f"]["daysOfCover"] is None
    # f never had a row: level 0 all along, out of stock all along, no stockout.
    assert found["f"]["outOfStockSeconds"] == 13 * 3600 and found["f"]["stockouts"] == 0
    assert found["f"]["averageOnHand"] == 0.0 and found["f"]["turnover"] is None


async def test_abc_classes_rank_every_variant_by_units_sold(engine, shop) -> None:
    """b 50, c 30, a 10, d 6, h 4 of 100. Sold by the better ones: b 0 (A), c 50 (A),
    a 80 (not below 80%: B), d 90 (B), h 96 (C); e and f sold nothing (C)."""
    end = h(shop, 13)
    everything = await figures(engine, h(shop, 0), end, "a", "b", "c", "d", "e", "f", "h")
    assert {v: f["abcClass"] for v, f in everything.items()} == {
        "a": "B", "b": "A", "c": "A", "d": "B", "e": "C", "f": "C", "h": "C",
    }
    assert {v: f["unitsSoldLast90Days"] for v, f in everything.items()} == {
        "a": 10, "b": 50, "c": 30, "d": 6, "e": 0, "f": 0, "h": 4,
    }
    # A call for one variant ranks it among all of them, the same.
    assert (await figures(engine, h(shop, 0), end, "a"))["a"]["abcClass"] == "B"
    assert (await figures(engine, h(shop, 0), end, "h"))["h"]["abcClass"] == "C"


async def test_variants_that_sold_the_same_share_a_class(engine, base) -> None:
    for variant in ("x", "y", "z"):
        await write_history(engine, variant, "p", base, [(0, "RESTOCK", 5, 0), (1, "SALE", -5, 0)])
    found = await figures(engine, None, None, "x", "y", "z")
    assert {f["abcClass"] for f in found.values()} == {"A"}


async def test_the_rollup_and_the_raw_log_give_the_same_figures(engine, shop) -> None:
    """The rollup takes the whole past days (the sales above: 20 days ago), the raw log
    the day of `to` and the start of the 90 days; abc_tiers ranks the 90 days before
    today, and `to` (a minute ago) moves it by the SALE rows in between."""
    async with engine.connect() as conn:
        end = (await conn.execute(text("SELECT now()"))).scalar_one() - timedelta(minutes=1)
    start = end - timedelta(days=30)
    raw = await figures(engine, start, end, *"abcdefh", abc="log")
    run = await roll_up(engine)
    assert run.days == 20 and run.rows == 5  # one row per variant and day with sales
    assert run.tiers_at is not None and run.tiers_at >= run.complete_before  # this hour
    assert run.tiers == 5  # 50, 30, 10, 6, 4
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT variant_id, day, units_sold FROM variant_daily_sales ORDER BY 1")
            )
        ).all()
        tiers = (await conn.execute(text("SELECT units, variants FROM abc_tiers"))).all()
    assert [(r.variant_id, r.day, r.units_sold) for r in rows] == [
        (v, shop.date(), units) for v, units in (("a", 10), ("b", 50), ("c", 30), ("d", 6),
                                                 ("h", 4))
    ]
    assert sorted(tuple(t) for t in tiers) == [(4, 1), (6, 1), (10, 1), (30, 1), (50, 1)]
    for source in ("auto", "rollup"):
        report = await analytics(
            engine, AnalyticsQuery(start, end, variant_ids=tuple("abcdefh")), abc=source
        )
        assert report.abc_source == ("tiers" if source == "auto" else "rollup")
        assert {v.variant_id: v.as_json() for v in report.variants} == raw
    assert {v: f["abcClass"] for v, f in raw.items()} == {
        "a": "B", "b": "A", "c": "A", "d": "B", "e": "C", "f": "C", "h": "C",
    }
    again = await roll_up(engine)
    assert again.days == 0 and again.complete_before == run.complete_before
    # ranked already for this hour (unless the hour turned meanwhile)
    assert again.tiers_at is None or again.tiers_at > run.tiers_at


async def test_the_rollup_and_the_raw_log_agree_at_a_fixed_time_on_every_figure(
    engine, shop
) -> None:
    await roll_up(engine)
    for start, end in ((h(shop, 1), h(shop, 11)), (h(shop, 0), h(shop, 24 * 15))):
        rolled = await figures(engine, start, end, *"abcdefh", abc="rollup")
        raw = await figures(engine, start, end, *"abcdefh", abc="log")
        assert rolled == raw


@pytest.mark.parametrize("hours", [0, 5])
async def test_abc_tiers_moved_to_a_later_or_an_earlier_to(engine, shop, hours) -> None:
    """abc_tiers ranks S = [H - 90 days, H), H = D + `hours` (D a midnight). For `to` =
    D + 10 h the 90 days gain the sales of [H, to) and lose those of [H - 90 days,
    to - 90 days); for D - 10 h the other way round. Variant s sold 1 at D - 90 d - 5 h,
    2 at D - 90 d + 3 h, 4 at D - 2 h and 8 at D + 1 h: 4 + 8 = 12 in the 90 days before
    D + 10 h, 1 + 2 = 3 in those before D - 10 h; in S, 2 + 4 = 6 (H = D) or 4 + 8 = 12
    (H = D + 5 h: S starts after the sale of 2, and ends after the sale of 8, which the
    raw log's part of S gives)."""
    day = shop + timedelta(days=10)
    at = day + timedelta(hours=hours)
    back = day - timedelta(days=90)
    await write_history(
        engine, "s", "p", back - timedelta(days=1),
        [
            (0, "RESTOCK", 100, 0),
            (24 - 5, "SALE", -1, 0),
            (24 + 3, "SALE", -2, 0),
            (24 * 91 - 2, "SALE", -4, 0),
            (24 * 91 + 1, "SALE", -8, 0),
        ],
    )
    await roll_up(engine)
    in_s = 6 if hours == 0 else 12
    others = [(4, 1), (6, 1), (10, 1), (30, 1), (50, 1)]
    assert await rank(engine, at) == (at, 5 if hours == 0 else 6)
    async with engine.connect() as conn:
        tiers = (await conn.execute(text("SELECT units, variants FROM abc_tiers"))).all()
    expected = dict(others)
    expected[in_s] = expected.get(in_s, 0) + 1
    assert dict(tuple(t) for t in tiers) == expected
    for end, units in ((day + timedelta(hours=10), 12), (day - timedelta(hours=10), 3)):
        start = end - timedelta(days=1)
        report = await analytics(
            engine, AnalyticsQuery(start, end, variant_ids=tuple("abcdefhs")), abc="tiers"
        )
        assert report.abc_source == "tiers"
        tiered = {v.variant_id: v.as_json() for v in report.variants}
        assert tiered["s"]["unitsSoldLast90Days"] == units
        assert tiered == await figures(engine, start, end, *"abcdefhs", abc="log")


async def test_a_sale_split_across_the_rollup_and_the_raw_log(engine, base) -> None:
    """The 90 days before `to` (12:00, day D0 + 90) start at 12:00 on day D0: its
    afternoon is read from the raw log, the whole days after it from the rollup, and
    the morning of the day of `to` from the raw log again."""
    end = base + timedelta(days=10, hours=12)
    start_90 = end - timedelta(days=90)
    d0 = datetime.combine(start_90.date(), datetime.min.time(), UTC)
    assert start_90 == d0 + timedelta(hours=12)
    await write_history(
        engine, "s", "p", d0 - timedelta(days=1),
        [
            (0, "RESTOCK", 100, 0),
            (13, "SALE", -1, 0),  # the day before D0: out
            (24 + 11, "SALE", -2, 0),  # D0 11:00, before the 90 days: out
            (24 + 13, "SALE", -4, 0),  # D0 13:00: raw
            (24 * 40, "SALE", -8, 0),  # D0 + 39, a whole day: rollup
            (24 * 91 + 6, "SALE", -16, 0),  # the day of `to`, 06:00: raw
            (24 * 91 + 13, "SALE", -32, 0),  # the day of `to`, 13:00, after `to`: out
        ],
    )
    raw = await figures(engine, end - HOUR, end, "s", abc="log")
    await roll_up(engine)
    report = await analytics(engine, AnalyticsQuery(end - HOUR, end, variant_ids=("s",)))
    assert report.abc_source == "rollup"  # abc_tiers is for today, too far from `to`
    rolled = report.variants[0].as_json()
    assert rolled["unitsSoldLast90Days"] == raw["s"]["unitsSoldLast90Days"] == 4 + 8 + 16
    assert rolled == raw["s"]


async def test_a_transaction_that_waited_for_a_lock_keeps_the_version_order(
    engine, base
) -> None:
    """Version 3 was written after version 2 but its transaction started an hour
    earlier (created_at h2 < h3). The state at a time is the newest version whose
    transaction had started: from h2 on, version 3's."""
    await write_history(
        engine, "z", "p", base, [(0, "RESTOCK", 10, 0), (3, "SALE", -2, 0), (2, "SALE", -3, 0)]
    )
    [z] = (await figures(engine, h(base, 1), h(base, 4), "z")).values()
    assert z["unitsSold"] == 5 and (z["onHandAtFrom"], z["onHandAtTo"]) == (10, 5)
    assert z["averageOnHand"] == pytest.approx((10 + 5 + 5) / 3)  # 8 held no time
    [z] = (await figures(engine, h(base, 2.5), h(base, 4), "z")).values()
    assert z["unitsSold"] == 0 and z["averageOnHand"] == 5.0 and z["onHandAtFrom"] == 5


async def test_accuracy_is_the_share_of_applied_count_lines_within_tolerance(
    engine, shop
) -> None:
    async def count(count_id: str, status: str, closed: datetime, lines: list) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO stock_counts (count_id, status, opened_by, opened_at, "
                    "closed_at) VALUES (:c, :s, 'test', :o, :closed)"
                ),
                {"c": count_id, "s": status, "o": closed - HOUR, "closed": closed},
            )
            for variant, counted, expected, tolerance in lines:
                await conn.execute(
                    text(
                        "INSERT INTO stock_count_lines (count_id, variant_id, snapshot_on_hand, "
                        "snapshot_version, counted, expected, tolerance_percent) "
                        "VALUES (:c, :v, 0, 0, :counted, :expected, :t)"
                    ),
                    {"c": count_id, "v": variant, "counted": counted, "expected": expected,
                     "t": tolerance},
                )

    await count("c1", "APPLIED", h(shop, 5), [
        ("a", 10, 10, Decimal(2)),  # within
        ("b", 96, 100, Decimal(2)),  # 4 > 2% of 100: out
        ("c", None, None, None),  # not counted: not a line of the figure
    ])
    await count("c2", "APPLIED", h(shop, 6), [("a", 98, 100, Decimal(2))])  # exactly 2%: in
    await count("c3", "CANCELLED", h(shop, 6), [("b", 100, 100, Decimal(2))])  # not applied
    await count("c4", "APPLIED", h(shop, 20), [("b", 100, 100, Decimal(2))])  # after `to`
    found = await figures(engine, h(shop, 1), h(shop, 11), "a", "b", "c")
    assert (found["a"]["accuracy"], found["a"]["countLines"]) == (1.0, 2)
    assert (found["b"]["accuracy"], found["b"]["countLines"]) == (0.0, 1)
    assert found["c"]["accuracy"] is None


async def test_the_sql_tolerance_rule_is_the_domain_rule(engine) -> None:
    cases = [
        (variance, expected, Decimal(tolerance))
        for variance in (-7, -3, -2, -1, 0, 1, 2, 3, 50)
        for expected in (0, 1, 49, 50, 100, 150, 1000)
        for tolerance in ("0", "1.5", "2", "2.5", "100")
    ]
    condition = analytics_sql.within_tolerance_sql("c.variance", "c.expected", "c.tolerance")
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                text(
                    f"SELECT {condition} FROM unnest(CAST(:v AS bigint[]), "
                    "CAST(:e AS bigint[]), CAST(:t AS numeric[])) AS c(variance, expected, "
                    "tolerance) "
                ),
                {"v": [c[0] for c in cases], "e": [c[1] for c in cases],
                 "t": [c[2] for c in cases]},
            )
        ).scalars().all()
    assert list(found) == [within_tolerance(*c) for c in cases]


# ------------------------------------------------------------------ scope and refusals


async def test_scope_products_pages_and_unknown_ids(engine, shop) -> None:
    report = await analytics(engine, AnalyticsQuery(product_ids=("mug",), variant_ids=("a",)))
    assert [v.variant_id for v in report.variants] == ["a", "e", "f", "h"]
    assert [v.product_id for v in report.variants] == ["shirt", "mug", "mug", "mug"]
    first = await analytics(engine, AnalyticsQuery(limit=3))
    assert [v.variant_id for v in first.variants] == ["a", "b", "c"] and first.next_after == "c"
    rest = await analytics(engine, AnalyticsQuery(limit=3, after="c"))
    last = await analytics(engine, AnalyticsQuery(limit=3, after="f"))
    assert [v.variant_id for v in rest.variants] == ["d", "e", "f"]
    assert [v.variant_id for v in last.variants] == ["h"] and last.next_after is None
    with pytest.raises(UnknownVariant) as unknown:
        await analytics(engine, AnalyticsQuery(variant_ids=("a", "nope", "nada")))
    assert unknown.value.variant_ids == ("nope", "nada")
    with pytest.raises(UnknownProduct):
        await analytics(engine, AnalyticsQuery(product_ids=("nope",)))


async def test_windows_that_cannot_be_computed_are_refused(engine, shop) -> None:
    now = datetime.now(UTC)
    for start, end in (
        (h(shop, 2), h(shop, 2)),
        (h(shop, 3), h(shop, 2)),
        (h(shop, 0) - timedelta(days=367), h(shop, 0)),
        (now - HOUR, now + timedelta(days=1)),
        (datetime(1969, 12, 31, tzinfo=UTC), datetime(1970, 1, 2, tzinfo=UTC)),
    ):
        with pytest.raises(InvalidWindow):
            await analytics(engine, AnalyticsQuery(start, end))
    # A leap year is allowed.
    await analytics(engine, AnalyticsQuery(h(shop, 0) - timedelta(days=366), h(shop, 0)))


# ------------------------------------------------------------------ HTTP


@pytest.fixture
def reader_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"api_tokens": SecretStr("boss:a-secret:admin, eye:r-secret:read")}
    )


async def test_http_answers_every_figure_in_camel_case(engine, reader_settings, shop) -> None:
    params = {"from": h(shop, 1).isoformat(), "to": h(shop, 11).isoformat(), "variantId": "a"}
    async with client_for(engine, reader_settings) as http:
        answer = await http.get(API, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"from", "to", "windowSeconds", "variants", "nextAfter"}
        assert body["windowSeconds"] == 36000
        [a] = body["variants"]
        for name in (
            "unitsSold", "unitsReturned", "unitsRestocked", "netAdjusted", "averageOnHand",
            "averageAvailable", "turnover", "sellThrough", "stockouts", "outOfStockSeconds",
            "inStockRate", "daysOfCover", "abcClass", "accuracy",
        ):
            assert name in a
        assert (a["variantId"], a["productId"], a["unitsSold"], a["stockouts"]) == (
            "a", "shirt", 10, 2
        )
        assert a["outOfStockSeconds"] == 14400 and a["abcClass"] == "B"

        products = await http.get(
            API, params=[("productId", "mug"), ("productId", "poster"), ("limit", "2")]
        )
        assert products.status_code == 200
        page = products.json()
        assert [v["variantId"] for v in page["variants"]] == ["c", "d"]
        assert page["nextAfter"] == "d"
        following = await http.get(
            API, params=[("productId", "mug"), ("productId", "poster"), ("after", "d")]
        )
        assert [v["variantId"] for v in following.json()["variants"]] == ["e", "f", "h"]


async def test_http_refusals(engine, reader_settings, shop) -> None:
    async with client_for(engine, reader_settings) as http:
        for params in (
            {"from": h(shop, 2).isoformat(), "to": h(shop, 1).isoformat()},
            {"from": (h(shop, 1) - timedelta(days=400)).isoformat(), "to": h(shop, 1).isoformat()},
            {"to": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
            {"to": "0001-01-01T00:00:00Z"},
            {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"},
        ):
            answer = await http.get(API, params=params)
            assert answer.status_code == 422, answer.text
            assert answer.json()["code"] == "invalid_window"
        for params in ({"from": "2026-01-01T00:00:00"}, {"limit": "0"}, {"limit": "1001"},
                       {"to": "yesterday"}, {"after": "a\x00b"}, {"to": "0.5"},
                       {"from": "1700000000"}):
            answer = await http.get(API, params=params)
            assert answer.status_code == 422 and answer.json()["code"] == "validation_failed"
        unknown = await http.get(API, params=[("variantId", "a"), ("variantId", "nope")])
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "unknown_variant"
        assert unknown.json()["details"] == {"variantIds": ["nope"]}
        product = await http.get(API, params={"productId": "nope"})
        assert product.status_code == 404 and product.json()["code"] == "unknown_product"


async def test_http_reads_need_a_token_only_when_configured(engine, reader_settings, shop) -> None:
    async with client_for(engine, reader_settings) as http:
        assert (await http.get(API)).status_code == 200
    closed = reader_settings.model_copy(update={"api_reads_require_token": True})
    async with client_for(engine, closed) as http:
        refused = await http.get(API)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        bad = await http.get(API, headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        ok = await http.get(API, headers={"Authorization": "Bearer r-secret"})
        assert ok.status_code == 200
        assert [v["variantId"] for v in ok.json()["variants"]] == list("abcdefh")


# ------------------------------------------------------------------ the CLI


async def stock(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    env["STOCK_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.entrypoints.cli", "analytics", *args,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_as_json_csv_and_a_table(database_url, engine, shop) -> None:
    window = ["--from", h(shop, 1).isoformat(), "--to", h(shop, 11).isoformat()]
    code, out, err = await stock(database_url, *window, "--variant", "a", "--json")
    assert code == 0, err
    body = json.loads(out)
    [a] = body["variants"]
    assert (a["unitsSold"], a["stockouts"], a["outOfStockSeconds"], a["abcClass"]) == (
        10, 2, 14400, "B"
    )
    assert body["windowSeconds"] == 36000

    code, out, err = await stock(database_url, *window, "--product", "mug", "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["variantId"] for r in rows] == ["e", "f", "h"]
    assert rows[0]["daysOfCover"] == "" and rows[2]["unitsSold"] == "4"
    assert {"from", "to", "unitsSold", "inStockRate", "abcClass", "accuracy"} <= set(rows[0])

    code, out, err = await stock(database_url, "--limit", "2")  # the last 30 days
    assert code == 0, err
    header, first, second = out.splitlines()[1:4]
    assert header.split()[:3] == ["variant", "sold", "returned"]
    assert first.split()[0] == "a" and second.split()[0] == "b"
    assert "more variants: --after b" in err


async def test_the_cli_refusals(database_url, shop) -> None:
    code, out, err = await stock(database_url, "--from", "2026-02-01", "--to", "2026-01-01")
    assert code == 2 and out == ""
    assert err.startswith("error (invalid_window): from (2026-02-01T00:00:00+00:00) must be")
    code, _, err = await stock(database_url, "--variant", "nope")
    assert code == 2 and err.startswith("error (unknown_variant)")
    code, _, err = await stock(database_url, "--from", "last week")
    assert code == 2 and "expected an ISO date" in err and "Traceback" not in err
