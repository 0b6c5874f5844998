"""The anomaly rules of `large_adjustment` and `unusual_shrinkage`, as pure arithmetic.

CONTRACT.md, "Events added"; docs/design.md, "Anomaly rules" works an example of
each by hand. The SQL that gathers the figures is `service/adapters/anomaly_sql.py`,
the steps that raise the anomalies `service/application/anomaly_checks.py`.

**Robust z-score** of a value `x` against a history `h` (Iglewicz and Hoaglin's
modified z-score):

* `z = 0.6745 * (x - median(h)) / MAD`, where `MAD = median(|h_i - median(h)|)`, the
  median absolute deviation. 0.6745 is the 75th percentile of the standard normal
  distribution, so for normally distributed data `MAD / 0.6745` estimates the standard
  deviation, and `z` reads like an ordinary z-score that a few outliers cannot move.
* When the MAD is 0 (more than half the history equals its median: most days nothing
  but sales moves a variant, so its non-sale change is 0), the mean absolute deviation
  around the median stands in: `z = 0.7979 * (x - median(h)) / meanAD`, with
  `meanAD = mean(|h_i - median(h)|)`. 0.7979 is `sqrt(2/pi)`, the ratio of the mean
  absolute deviation to the standard deviation of a normal distribution (IBM SPSS uses
  the same pair of constants, as `1.486` and `1.253314` dividing the deviations).
* When both are 0 the history never varied: a value equal to it scores 0, any other
  scores plus or minus infinity (published with `score: null`).

**large_adjustment** (`judge_adjustment`): an adjustment (a `PUT adjust` / `stock
adjust` line; count applies have `count_variance`) is an anomaly when
`|delta| >= STOCK_ANOMALY_MIN_UNITS` and, if the variant has at least
`MIN_HISTORY_DAYS` (14) days of history, `|z| >= STOCK_ANOMALY_Z` against its daily
non-sale changes. With less history the unit threshold alone decides.

**unusual_shrinkage** (`judge_shrinkage`): a week's losses are an anomaly when they are
at least `STOCK_ANOMALY_MIN_UNITS` and `z >= STOCK_ANOMALY_Z` against the
`BASELINE_WEEKS` (8) weeks before (one-sided: fewer losses than usual is good news).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: `1 / 1.4826`: scales the median absolute deviation to a standard deviation.
MAD_SCALE = 0.6745
#: `sqrt(2 / pi)`: scales the mean absolute deviation to a standard deviation.
MEAN_AD_SCALE = 0.7979
#: The days of daily non-sale changes an adjustment is compared with.
HISTORY_DAYS = 90
#: Below this much history (days since the variant's first audit row) an adjustment is
#: judged by its size alone: a new variant has no "usual" yet.
MIN_HISTORY_DAYS = 14
#: The weeks of losses a week is compared with.
BASELINE_WEEKS = 8


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not values:
        raise ValueError("the median of nothing")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True, slots=True)
class RobustScore:
    """Where `x` stands against a history."""

    #: The history's median: what was expected.
    median: float
    #: The robust z-score; +-inf when the history never varied and `x` differs from it.
    z: float
    #: Which spread scaled it: "mad", "mean_ad", or "none" (the history never varied).
    spread: str

    @property
    def finite_z(self) -> float | None:
        """The score as published: None when infinite (JSON has no infinity)."""
        return self.z if math.isfinite(self.z) else None


def robust_z(x: float, history: Sequence[float]) -> RobustScore:
    """The robust z-score of `x` against `history` (the module's docstring)."""
    centre = median(history)
    deviations = [abs(h - centre) for h in history]
    mad = median(deviations)
    if mad > 0:
        return RobustScore(centre, MAD_SCALE * (x - centre) / mad, "mad")
    mean_ad = sum(deviations) / len(deviations)
    if mean_ad > 0:
        return RobustScore(centre, MEAN_AD_SCALE * (x - centre) / mean_ad, "mean_ad")
    if x == centre:
        return RobustScore(centre, 0.0, "none")
    return RobustScore(centre, math.copysign(math.inf, x - centre), "none")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's answer: whether to raise, and what the anomaly then carries."""

    anomalous: bool
    observed: float
    expected: float
    score: float | None


@dataclass(frozen=True, slots=True)
class AdjustmentHistory:
    """A variant's past, as far as `large_adjustment` needs it."""

    #: Days since the variant's first audit row (0 for a variant without one).
    history_days: float
    #: The net non-sale change (RESTOCK, RETURN, ADJUSTMENT) of each of the last
    #: `HISTORY_DAYS` days (fewer for a younger variant), days without any as 0.
    daily: tuple[int, ...]

    @property
    def long_enough(self) -> bool:
        return self.history_days >= MIN_HISTORY_DAYS and bool(self.daily)


def judge_adjustment(
    delta: int, history: AdjustmentHistory, *, min_units: int, z_threshold: float
) -> Verdict:
    """`large_adjustment`: `observed` the adjustment's delta (signed), `expected` the
    median daily non-sale change (0 without enough history), `score` the signed robust
    z-score (None without enough history, or against a history that never varied)."""
    if not history.long_enough:
        return Verdict(abs(delta) >= min_units, delta, 0.0, None)
    score = robust_z(delta, history.daily)
    anomalous = abs(delta) >= min_units and abs(score.z) >= z_threshold
    return Verdict(anomalous, delta, score.median, score.finite_z)


def judge_shrinkage(
    week_loss: int, baseline: Sequence[int], *, min_units: int, z_threshold: float
) -> Verdict:
    """`unusual_shrinkage`: `observed` the week's losses (units, positive), `expected`
    the median weekly loss of the baseline weeks, `score` the robust z-score (None when
    the baseline never varied, e.g. eight weeks without a loss)."""
    if len(baseline) != BASELINE_WEEKS:
        raise ValueError(f"a baseline is {BASELINE_WEEKS} weeks, got {len(baseline)}")
    score = robust_z(week_loss, baseline)
    anomalous = week_loss >= min_units and score.z >= z_threshold
    return Verdict(anomalous, week_loss, score.median, score.finite_z)
