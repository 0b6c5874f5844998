"""The variant page's chart series as a step function, without a database: the rows the
statement returns (dashboard_reads._SERIES) turned into the level at the window's start,
each change in it, and the current level at its end (docs/dashboard.md, "The chart")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.application.dashboard_reads import LevelPoint, _split_at, _step_series

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
START = END - timedelta(hours=24)


def row(at: datetime, version: int, on_hand: int, reserved: int, d_on_hand: int = 0,
        d_reserved: int = 0) -> dict[str, Any]:
    return {"created_at": at, "version": version, "on_hand_after": on_hand,
            "reserved_after": reserved, "delta_on_hand": d_on_hand,
            "delta_reserved": d_reserved}


def levels(points: list[LevelPoint]) -> list[tuple[datetime, int, int]]:
    return [(p.at, p.on_hand, p.available) for p in points]


def test_the_level_at_the_start_then_each_change_then_now() -> None:
    before = row(START - timedelta(days=3), 4, 10, 2)
    within = [row(START + timedelta(hours=1), 5, 12, 2, 2),
              row(START + timedelta(hours=5), 6, 12, 5, 0, 3)]
    current = row(START - timedelta(days=9), 6, 12, 5)
    series = _step_series("v", START, END, current, before, within, limit=10)
    assert levels(series.points) == [
        (START, 10, 8), (START + timedelta(hours=1), 12, 10),
        (START + timedelta(hours=5), 12, 7), (END, 12, 7),
    ]
    assert (series.changes, series.level_since, series.truncated) == (2, None, False)


def test_a_level_set_before_the_window_is_a_flat_line_as_of_that_change() -> None:
    set_at = START - timedelta(days=2)
    series = _step_series("v", START, END, row(START - timedelta(days=9), 3, 7, 1),
                          row(set_at, 3, 7, 1), [], limit=10)
    assert levels(series.points) == [(START, 7, 6), (END, 7, 6)]
    assert (series.changes, series.level_since) == (0, set_at)


def test_a_new_variant_without_history_is_a_flat_line_from_its_creation() -> None:
    made = END - timedelta(minutes=5)
    series = _step_series("v", START, END, row(made, 0, 0, 0), None, [], limit=10)
    assert levels(series.points) == [(made, 0, 0), (END, 0, 0)]
    assert (series.changes, series.level_since) == (0, made)
    old = START - timedelta(days=30)  # made long ago (e.g. imported without an audit row)
    series = _step_series("v", START, END, row(old, 0, 5, 0), None, [], limit=10)
    assert levels(series.points) == [(START, 5, 5), (END, 5, 5)]


def test_without_a_change_before_the_start_the_first_change_says_where_it_began() -> None:
    made = START - timedelta(days=1)
    first = START + timedelta(hours=2)
    within = [row(first, 1, 10, 0, 10), row(first + timedelta(seconds=3), 2, 10, 4, 0, 4)]
    series = _step_series("v", START, END, row(made, 2, 10, 4), None, within, limit=10)
    assert levels(series.points) == [
        (START, 0, 0), (first, 10, 10), (first + timedelta(seconds=3), 10, 6), (END, 10, 6),
    ]
    assert series.changes == 2
    # Made inside the window an hour before its first change: the level from then.
    made = first - timedelta(hours=1)
    series = _step_series("v", START, END, row(made, 2, 10, 4), None, within, limit=10)
    assert levels(series.points)[:2] == [(made, 0, 0), (first, 10, 10)]
    # Made by its first change (one transaction, one timestamp): the series begins there.
    series = _step_series("v", START, END, row(first, 2, 10, 4), None, within, limit=10)
    assert levels(series.points)[0] == (first, 10, 10)
    assert series.changes == 2


def test_more_changes_than_the_limit_keep_the_latest_without_a_start_level() -> None:
    within = [row(START + timedelta(minutes=n), n, n, 0, 1) for n in range(1, 6)]
    series = _step_series("v", START, END, row(START, 5, 5, 0), None, within, limit=3)
    assert [p.version for p in series.points] == [3, 4, 5, 5]
    assert (series.changes, series.truncated) == (3, True)


def test_a_change_stamped_after_the_end_is_drawn_at_the_end() -> None:
    late = row(END + timedelta(milliseconds=5), 2, 9, 0, -1)
    series = _step_series("v", START, END, row(START, 2, 9, 0), row(START, 1, 10, 0), [late],
                          limit=10)
    assert levels(series.points) == [(START, 10, 10), (END, 9, 9), (END, 9, 9)]


def test_a_change_stamped_before_the_one_it_waited_for_is_not_drawn_back_in_time() -> None:
    t1, t2 = START + timedelta(hours=1), START + timedelta(hours=1, seconds=2)
    within = [row(t2, 2, 9, 0, -1), row(t1, 3, 14, 0, 5)]  # version order
    series = _step_series("v", START, END, row(START, 3, 14, 0), row(START, 1, 10, 0), within,
                          limit=10)
    assert levels(series.points) == [(START, 10, 10), (t2, 9, 9), (t2, 14, 14), (END, 14, 14)]


def test_the_newest_rows_split_at_the_last_one_stamped_at_or_before_the_start() -> None:
    v1, v2 = row(START - timedelta(hours=2), 1, 1, 0), row(START, 2, 2, 0)
    v3 = row(START + timedelta(seconds=2), 3, 3, 0)
    v4 = row(START + timedelta(seconds=1), 4, 4, 0)  # stamped before v3: still after START
    assert _split_at([v4, v3, v2, v1], START) == (v2, [v3, v4])
    assert _split_at([v4, v3], START) == (None, [v3, v4])
    assert _split_at([v2, v1], START) == (v2, [])
    assert _split_at([], START) == (None, [])
