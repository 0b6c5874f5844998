"""Crash points are armed only by a well-formed STOCK_FAILPOINTS."""

from __future__ import annotations

import pytest

from service import failpoints


def test_points_are_armed_at_a_count() -> None:
    assert failpoints.parse("after_commit@40, relay_after_send@3") == {
        "after_commit": 40,
        "relay_after_send": 3,
    }
    assert failpoints.parse("") == {}


@pytest.mark.parametrize("spec", ["after_comit@3", "mid_batch", "mid_batch@0", "mid_batch@x"])
def test_a_misspelt_point_is_refused_not_ignored(spec: str) -> None:
    with pytest.raises(ValueError, match="STOCK_FAILPOINTS"):
        failpoints.parse(spec)


def test_unarmed_points_do_nothing() -> None:
    failpoints.reach("after_commit")  # this process is not armed: returns
