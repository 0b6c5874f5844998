"""The arithmetic of `large_adjustment` and `unusual_shrinkage`
(`service/domain/anomaly_rules.py`), against figures worked by hand (docs/design.md,
"Anomaly rules")."""

from __future__ import annotations

import math

import pytest

from service.domain.anomaly_rules import (
    MAD_SCALE,
    MEAN_AD_SCALE,
    AdjustmentHistory,
    judge_adjustment,
    judge_shrinkage,
    median,
    robust_z,
)

RULES = {"min_units": 10, "z_threshold": 3.5}


def mug_history() -> tuple[int, ...]:
    """90 days: +20 every 10 days (nine deliveries), one -3, one +2, the rest 0."""
    days = [0] * 90
    for day in range(5, 90, 10):
        days[day] = 20
    days[12], days[40] = -3, 2
    return tuple(days)


CALM = AdjustmentHistory(history_days=200.0, daily=mug_history())
#: Eight weeks of losses, most recent first: median 20, MAD 1.
STEADY = [20, 22, 18, 20, 21, 19, 20, 23]


# ------------------------------------------------------------------ the score


def test_median_of_odd_and_even_counts() -> None:
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_robust_z_uses_the_median_absolute_deviation() -> None:
    # median 20; deviations 0,2,2,0,1,1,0,3 -> MAD (1 + 1) / 2 = 1
    baseline = [20, 22, 18, 20, 21, 19, 20, 23]
    score = robust_z(26, baseline)
    assert (score.median, score.spread) == (20, "mad")
    assert score.z == pytest.approx(0.6745 * 6 / 1)
    assert MAD_SCALE == 0.6745


def test_robust_z_falls_back_to_the_mean_absolute_deviation_when_the_mad_is_0() -> None:
    score = robust_z(-60, mug_history())
    assert (score.median, score.spread) == (0, "mean_ad")
    mean_ad = (9 * 20 + 3 + 2) / 90
    assert score.z == pytest.approx(0.7979 * -60 / mean_ad)
    assert score.z == pytest.approx(-23.29, abs=0.01)
    assert MEAN_AD_SCALE == 0.7979


def test_a_history_that_never_varied_scores_0_or_infinity() -> None:
    assert robust_z(0, [0] * 8).z == 0.0
    assert robust_z(12, [0] * 8).z == math.inf
    assert robust_z(-12, [5] * 8).z == -math.inf
    assert robust_z(12, [0] * 8).finite_z is None
    assert robust_z(12, [0] * 8).spread == "none"


def test_one_wild_day_does_not_stretch_the_spread() -> None:
    """Median and MAD ignore an outlier a standard deviation would grow with."""
    calm = [10, 11, 9, 10, 12, 10, 9, 11]
    wild = [10, 11, 9, 10, 12, 10, 9, 500]
    assert robust_z(20, calm).z == pytest.approx(robust_z(20, wild).z)


# ------------------------------------------------------------------ large_adjustment


def test_the_issue_s_examples_a_60_unit_write_off_is_one_a_2_unit_recount_is_not() -> None:
    write_off = judge_adjustment(-60, CALM, **RULES)
    assert write_off.anomalous
    assert (write_off.observed, write_off.expected) == (-60, 0)
    assert write_off.score == pytest.approx(-23.29, abs=0.01)
    recount = judge_adjustment(-2, CALM, **RULES)
    assert not recount.anomalous


def test_both_the_units_and_the_score_must_be_reached_with_enough_history() -> None:
    # 12 units score -4.66: both reached.
    assert judge_adjustment(-12, CALM, **RULES).anomalous
    # 8 units would score -3.1... and are fewer than 10 anyway.
    assert not judge_adjustment(-8, CALM, **RULES).anomalous
    # Positive adjustments too: a box found is as unusual as a box lost.
    assert judge_adjustment(40, CALM, **RULES).anomalous
    # Enough units, not far enough: a variant delivered 100 every week.
    busy = [0] * 90
    for day in range(3, 90, 7):
        busy[day] = 100
    verdict = judge_adjustment(-60, AdjustmentHistory(120.0, tuple(busy)), **RULES)
    assert not verdict.anomalous
    assert verdict.score == pytest.approx(0.7979 * -60 / (1300 / 90))
    assert judge_adjustment(-64, AdjustmentHistory(120.0, tuple(busy)), **RULES).anomalous


def test_the_thresholds_are_inclusive() -> None:
    # 8 days of 0, 11 of +1, 11 of -1: median 0, MAD 1, so z = 0.6745 * x.
    history = AdjustmentHistory(30.0, tuple([0] * 8 + [1] * 11 + [-1] * 11))
    assert robust_z(10, history.daily).spread == "mad"
    exact = {"min_units": 10, "z_threshold": 0.6745 * 10}
    assert judge_adjustment(10, history, **exact).anomalous  # |delta| == min, z == threshold
    assert judge_adjustment(-10, history, **exact).anomalous
    assert not judge_adjustment(9, history, **exact).anomalous  # one unit short
    assert not judge_adjustment(
        10, history, min_units=10, z_threshold=0.6745 * 10 + 1e-9
    ).anomalous  # the score just short
    # The same for a week: STEADY's median is 20 and its MAD 1.
    assert judge_shrinkage(30, STEADY, **exact).anomalous  # z == 0.6745 * 10
    assert not judge_shrinkage(29, STEADY, **exact).anomalous
    assert judge_shrinkage(10, [0] * 8, **RULES).anomalous  # units == min
    assert not judge_shrinkage(9, [0] * 8, **RULES).anomalous


def test_with_less_than_14_days_of_history_the_units_alone_decide() -> None:
    young = AdjustmentHistory(history_days=13.9, daily=(100, -100, 100, -100) * 3 + (0, 0))
    verdict = judge_adjustment(-10, young, **RULES)
    assert verdict.anomalous and (verdict.expected, verdict.score) == (0, None)
    assert not judge_adjustment(-9, young, **RULES).anomalous
    # At 14 days the history decides: +-100 a day makes 10 ordinary.
    grown = AdjustmentHistory(history_days=14.0, daily=young.daily)
    assert not judge_adjustment(-10, grown, **RULES).anomalous
    # A variant without any audit row has no history at all.
    assert judge_adjustment(25, AdjustmentHistory(0.0, ()), **RULES).anomalous


def test_against_a_history_that_never_varied_any_large_adjustment_is_one() -> None:
    flat = AdjustmentHistory(90.0, (0,) * 90)
    verdict = judge_adjustment(-10, flat, **RULES)
    assert verdict.anomalous and verdict.score is None and verdict.expected == 0


# ------------------------------------------------------------------ unusual_shrinkage


def test_a_week_above_its_baseline_is_unusual_and_one_within_it_is_not() -> None:
    assert not judge_shrinkage(24, STEADY, **RULES).anomalous  # z 2.70
    verdict = judge_shrinkage(26, STEADY, **RULES)  # z 4.05
    assert verdict.anomalous
    assert (verdict.observed, verdict.expected) == (26, 20)
    assert verdict.score == pytest.approx(4.047)


def test_shrinkage_is_one_sided() -> None:
    assert not judge_shrinkage(10, STEADY, **RULES).anomalous  # far below: good news


def test_a_first_loss_after_8_quiet_weeks_needs_the_unit_threshold() -> None:
    quiet = [0] * 8
    assert judge_shrinkage(10, quiet, **RULES).anomalous
    assert judge_shrinkage(10, quiet, **RULES).score is None
    assert not judge_shrinkage(9, quiet, **RULES).anomalous
    # One earlier loss: the mean absolute deviation (12 / 8) scales it.
    once = [0, 0, 0, 0, 0, 0, 12, 0]
    verdict = judge_shrinkage(10, once, **RULES)
    assert verdict.anomalous and verdict.score == pytest.approx(0.7979 * 10 / 1.5)


def test_a_baseline_is_8_weeks() -> None:
    with pytest.raises(ValueError):
        judge_shrinkage(30, [0] * 7, **RULES)
