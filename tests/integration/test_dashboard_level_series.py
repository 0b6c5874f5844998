"""The variant page's chart read (DashboardReads.level_series) on the real PostgreSQL:
audit rows inserted with chosen `created_at` values, and the series is the level at the
window's start, each change in the window (in version order), and the current level;
the statement reads audit_log backwards through its (variant_id, version) index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.dashboard_reads import _SERIES, DashboardReads, LevelSeries
from service.domain.errors import UnknownVariant
from service.settings import Settings

pytestmark = pytest.mark.integration

END = datetime.now(UTC).replace(microsecond=0)
START = END - timedelta(hours=24)


async def seed(engine: AsyncEngine, variant: str, changes: list[tuple[datetime, int, int]],
               made: datetime | None = None) -> None:
    """`changes`: (created_at, delta on hand, delta reserved), versions 1..N in that order,
    the variant row at the end state (as the service writes them)."""
    on_hand = reserved = 0
    rows = []
    for version, (at, d_on_hand, d_reserved) in enumerate(changes, start=1):
        on_hand, reserved = on_hand + d_on_hand, reserved + d_reserved
        rows.append({"v": variant, "d_on_hand": d_on_hand, "d_reserved": d_reserved,
                     "on_hand": on_hand, "reserved": reserved, "version": version, "at": at})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO variants (variant_id, product_id, on_hand, reserved, version,"
                " created_at) VALUES (:v, 'p', :on_hand, :reserved, :version, :made)"
            ),
            {"v": variant, "on_hand": on_hand, "reserved": reserved, "version": len(rows),
             "made": made or (changes[0][0] if changes else END - timedelta(days=60))},
        )
        if rows:
            await conn.execute(
                text(
                    """
                    INSERT INTO audit_log (
                        variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after,
                        reserved_after, version, reference, actor, created_at
                    ) VALUES (:v, 'ADJUSTMENT', :d_on_hand, :d_reserved, :on_hand, :reserved,
                              :version, 'test', 'test', :at)
                    """
                ),
                rows,
            )


def levels(series: LevelSeries) -> list[tuple[datetime, int, int]]:
    return [(p.at, p.on_hand, p.available) for p in series.points]


async def test_the_level_at_the_start_each_change_and_now(
    engine: AsyncEngine, settings: Settings
) -> None:
    t1, t2 = START + timedelta(hours=3), START + timedelta(hours=3, seconds=2)
    await seed(engine, "a", [
        (START - timedelta(days=5), 10, 0),
        (START - timedelta(days=1), 2, 0),  # the level at the window's start: 12
        (START, 0, 3),                      # at the start exactly: still "at or before"
        # A lock-waiting transaction stamped earlier than the change it waited for:
        # versions order them.
        (t2, -1, -1),
        (t1, 5, 0),
    ])
    series = await DashboardReads(engine, settings).level_series("a", START, END)
    # Version 5 (stamped t1) is drawn at version 4's t2: the line never goes back in time.
    assert levels(series) == [(START, 12, 9), (t2, 11, 9), (t2, 16, 14), (END, 16, 14)]
    assert [p.version for p in series.points] == [3, 4, 5, 5]
    assert (series.changes, series.level_since, series.truncated) == (2, None, False)


async def test_no_change_in_the_window_is_a_flat_line_as_of_the_last_change(
    engine: AsyncEngine, settings: Settings
) -> None:
    set_at = START - timedelta(days=3)
    await seed(engine, "b", [(START - timedelta(days=9), 7, 0), (set_at, 0, 2)])
    series = await DashboardReads(engine, settings).level_series("b", START, END)
    assert levels(series) == [(START, 7, 5), (END, 7, 5)]
    assert (series.changes, series.level_since) == (0, set_at)


async def test_a_new_variant_without_history_is_a_flat_line_at_its_level(
    engine: AsyncEngine, settings: Settings
) -> None:
    made = END - timedelta(minutes=10)
    await seed(engine, "fresh", [], made=made)
    series = await DashboardReads(engine, settings).level_series("fresh", START, END)
    assert levels(series) == [(made, 0, 0), (END, 0, 0)]
    assert (series.changes, series.level_since) == (0, made)


async def test_history_only_inside_the_window_starts_from_the_first_change(
    engine: AsyncEngine, settings: Settings
) -> None:
    first = START + timedelta(hours=1)
    await seed(engine, "c", [(first, 10, 0), (first + timedelta(minutes=1), 0, 4)],
               made=START - timedelta(days=2))
    series = await DashboardReads(engine, settings).level_series("c", START, END)
    assert levels(series)[0] == (START, 0, 0)
    assert levels(series)[-1] == (END, 10, 6)
    assert series.changes == 2


async def test_more_changes_than_the_limit_keep_the_latest(
    engine: AsyncEngine, settings: Settings
) -> None:
    await seed(engine, "d", [(START + timedelta(minutes=n), 1, 0) for n in range(1, 8)])
    series = await DashboardReads(engine, settings).level_series("d", START, END, limit=3)
    assert [p.version for p in series.points] == [5, 6, 7, 7]
    assert (series.changes, series.truncated) == (3, True)


async def test_an_unknown_variant_is_refused(engine: AsyncEngine, settings: Settings) -> None:
    with pytest.raises(UnknownVariant):
        await DashboardReads(engine, settings).level_series("nobody", START, END)


async def test_the_statement_reads_the_audit_log_by_its_variant_version_index(
    engine: AsyncEngine,
) -> None:
    # 200 variants x 100 changes a day apart, and a busy one with 5,000 (more than the
    # limit): enough rows that a scan of the table would cost more.
    async with engine.begin() as conn:
        await conn.execute(text(
            """
            INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                                   on_hand_after, reserved_after, version, actor, created_at)
            SELECT 'x' || v, 'ADJUSTMENT', 1, 0, n, 0, n, 'test',
                   now() - make_interval(days => 100 - n)
            FROM generate_series(1, 200) AS v, generate_series(1, 100) AS n
            UNION ALL
            SELECT 'busy', 'ADJUSTMENT', 1, 0, n, 0, n, 'test',
                   now() - make_interval(mins => 5000 - n)
            FROM generate_series(1, 5000) AS n
            """
        ))
        await conn.execute(text(
            "INSERT INTO variants (variant_id, product_id, on_hand, version)"
            " SELECT 'x' || v, 'p', 100, 100 FROM generate_series(1, 200) AS v"
            " UNION ALL SELECT 'busy', 'p', 5000, 5000"
        ))
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE audit_log"))
        await conn.execute(text("ANALYZE variants"))
        plans = {}
        for variant in ("x7", "busy"):
            plan = (await conn.execute(
                text("EXPLAIN (FORMAT JSON) " + str(_SERIES.text)),
                {"variant_id": variant, "limit_plus_two": 2002},
            )).scalar_one()
            plan = plan if isinstance(plan, list) else json.loads(plan)
            plans[variant] = list(_nodes(plan[0]["Plan"]))
    for variant, nodes in plans.items():
        on_audit = [node for node in nodes if node.get("Relation Name") == "audit_log"]
        assert len(on_audit) == 1, (variant, nodes)
        assert on_audit[0]["Node Type"] != "Seq Scan", (variant, nodes)
        used = {node.get("Index Name") for node in nodes} - {None, "variants_pkey"}
        assert used == {"audit_log_variant_version"}, (variant, nodes)
    # The busy variant: read backwards in version order and stopped at the limit.
    busy = next(node for node in plans["busy"] if node.get("Relation Name") == "audit_log")
    assert (busy["Node Type"], busy["Scan Direction"]) == ("Index Scan", "Backward")


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
