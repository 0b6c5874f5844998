"""The stock count rules of service/domain/counts.py, alone: no database, no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stock_schemas.events import MAX_QUANTITY, AnomalyRule, ChangeType

from service.domain import counts
from service.domain.counts import CountStatus, StockCount
from service.domain.errors import (
    ApprovalRequired,
    CountBelowReserved,
    CountClosed,
    CountOverlap,
    InvalidQuantity,
    NothingCounted,
    UnknownVariant,
    VariantNotInCount,
)
from service.domain.ledger import StockLedger
from service.domain.model import EventRef, Variant

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TWO = Decimal(2)


def _variants(**levels: int | tuple[int, int]) -> dict[str, Variant]:
    """name=on_hand, or name=(on_hand, reserved); each at version 3."""
    found = {}
    for name, level in levels.items():
        on_hand, reserved = level if isinstance(level, tuple) else (level, 0)
        found[name] = Variant(name, "p", on_hand, reserved, version=3)
    return found


def _ledger(variants: dict[str, Variant]) -> StockLedger:
    return StockLedger(variants, {}, default_low_stock_threshold=0)


def _open(variants: dict[str, Variant], *ids: str, blind: bool = False) -> StockCount:
    return counts.open_count(
        "cnt-1", variants, list(ids or variants), open_elsewhere={}, actor="api:a", now=NOW,
        blind=blind,
    )


def _record(
    count: StockCount,
    variants: dict[str, Variant],
    tolerances: dict[str, Decimal | None] | None = None,
    **lines: int,
) -> None:
    recordable = counts.check_recordable(count, list(lines.items()))
    counts.record_lines(
        count, recordable, variants, tolerances=tolerances or {}, default_tolerance=TWO,
        actor="api:b", now=NOW,
    )


# ---------------------------------------------------------------- tolerance


@pytest.mark.parametrize(
    ("variance", "expected", "percent", "within"),
    [
        (0, 0, TWO, True),
        (1, 0, Decimal(100), False),  # an expected of 0 tolerates no difference
        (-1, 50, TWO, True),  # exactly 2% of 50: inclusive
        (2, 50, TWO, False),
        (-1, 49, TWO, False),  # 0.98 allowed
        (3, 10, Decimal("30"), True),
        (1, 3, Decimal("33.3333"), False),  # no float rounding makes 1 <= 0.999999
        (0, 7, Decimal(0), True),
        (1, 7, Decimal(0), False),
    ],
)
def test_within_tolerance(variance: int, expected: int, percent: Decimal, within: bool) -> None:
    assert counts.within_tolerance(variance, expected, percent) is within


@given(
    variance=st.integers(-MAX_QUANTITY, MAX_QUANTITY),
    expected=st.integers(0, MAX_QUANTITY),
    percent=st.decimals(0, 100, places=2),
)
def test_tolerance_is_symmetric_and_exact(variance: int, expected: int, percent: Decimal) -> None:
    within = counts.within_tolerance(variance, expected, percent)
    assert within == counts.within_tolerance(-variance, expected, percent)
    assert within == (abs(variance) * 100 <= percent * expected)


# --------------------------------------------------------------------- open


def test_open_merges_repeats_and_snapshots_each_variant() -> None:
    variants = _variants(b=4, a=9)
    count = _open(variants, "b", "a", "b")
    assert count.status is CountStatus.OPEN and count.opened_by == "api:a"
    snapshots = [(v, ln.snapshot_on_hand, ln.snapshot_version) for v, ln in count.lines.items()]
    assert snapshots == [("a", 9, 3), ("b", 4, 3)]
    assert all(line.counted is None and line.variance is None for line in count.lines.values())


def test_open_refuses_every_unknown_variant_and_every_variant_counted_elsewhere() -> None:
    variants = _variants(a=1, b=1)
    with pytest.raises(UnknownVariant) as unknown:
        _open(variants, "x", "a", "y")
    assert unknown.value.variant_ids == ("x", "y")
    with pytest.raises(CountOverlap) as overlap:
        counts.open_count(
            "cnt-2", variants, ["a", "b"], open_elsewhere={"b": "cnt-1"}, actor="x", now=NOW
        )
    assert overlap.value.open_counts == {"b": "cnt-1"}


# ------------------------------------------------------------------- record


def test_a_line_expects_the_on_hand_of_its_moment_and_a_recount_overwrites() -> None:
    variants = _variants(a=20)
    count = _open(variants)
    variants["a"].on_hand = 17  # three sold since the snapshot
    _record(count, variants, a=16)
    line = count.lines["a"]
    assert (line.counted, line.expected, line.variance) == (16, 17, -1)
    assert line.within_tolerance is False
    assert (line.counted_by, line.counted_at, line.tolerance_percent) == ("api:b", NOW, TWO)
    variants["a"].on_hand = 16
    _record(count, variants, {"a": Decimal(10)}, a=15)
    assert (line.counted, line.expected, line.variance) == (15, 16, -1)
    assert line.within_tolerance is True
    assert line.tolerance_percent == Decimal(10)  # the variant's own wins


def test_record_refuses_a_closed_count_a_foreign_variant_and_absurd_quantities() -> None:
    variants = _variants(a=5)
    count = _open(variants)
    with pytest.raises(VariantNotInCount) as foreign:
        counts.check_recordable(count, [("a", 1), ("z", 1), ("y", 2)])
    assert foreign.value.variant_ids == ("z", "y")
    for quantity in (-1, MAX_QUANTITY + 1):
        with pytest.raises(InvalidQuantity):
            counts.check_recordable(count, [("a", quantity)])
    assert counts.check_recordable(count, [("a", 1), ("a", 4)]) == {"a": 4}  # later wins
    for status in (CountStatus.APPLIED, CountStatus.CANCELLED):
        count.status = status
        with pytest.raises(CountClosed):
            counts.check_recordable(count, [("a", 1)])
    assert count.lines["a"].counted is None


# -------------------------------------------------------------------- apply


def test_apply_moves_by_the_variance_so_later_moves_are_kept() -> None:
    variants = _variants(a=100, b=10, c=5)
    count = _open(variants)
    _record(count, variants, a=99, b=7)  # c is never counted
    variants["a"].on_hand -= 2  # sold after counting
    ledger = _ledger(variants)
    applied = counts.apply_count(
        count, ledger, approve=True, actor="api:boss", now=NOW, cause=EventRef("s", "count:1")
    )
    assert [line.variant_id for line in applied] == ["a", "b"]
    assert (variants["a"].on_hand, variants["b"].on_hand, variants["c"].on_hand) == (97, 7, 5)
    assert [
        (c.variant_id, c.change_type, c.delta_on_hand, c.reason, c.reference)
        for c in ledger.changes
    ] == [
        ("a", ChangeType.ADJUSTMENT, -1, "cycle_count", "cnt-1"),
        ("b", ChangeType.ADJUSTMENT, -3, "cycle_count", "cnt-1"),
    ]
    assert [line.applied_version for line in applied] == [4, 4]
    assert count.status is CountStatus.APPLIED
    assert (count.closed_by, count.approved_by) == ("api:boss", "api:boss")
    [anomaly] = ledger.anomalies
    assert (anomaly.variant_id, anomaly.rule, anomaly.observed, anomaly.expected) == (
        "b",
        AnomalyRule.COUNT_VARIANCE,
        7,
        10,
    )
    assert anomaly.reference == "cnt-1"
    # Again: the applied count is answered as it is.
    assert counts.apply_count(count, _ledger(variants), approve=False, actor="x", now=NOW) == []


def test_apply_without_approval_refuses_every_line_out_of_tolerance_and_changes_nothing() -> None:
    variants = _variants(a=10, b=10, c=10)
    count = _open(variants)
    _record(count, variants, a=10, b=8, c=13)
    ledger = _ledger(variants)
    with pytest.raises(ApprovalRequired) as refused:
        counts.apply_count(count, ledger, approve=False, actor="x", now=NOW)
    assert [(line.variant_id, line.variance) for line in refused.value.lines] == [
        ("b", -2),
        ("c", 3),
    ]
    assert ledger.changes == [] and ledger.anomalies == []
    assert count.status is CountStatus.OPEN


def test_within_tolerance_needs_no_approval_and_raises_no_anomaly() -> None:
    variants = _variants(a=50)
    count = _open(variants)
    _record(count, variants, a=49)
    ledger = _ledger(variants)
    counts.apply_count(count, ledger, approve=False, actor="x", now=NOW)
    assert count.approved_by is None and ledger.anomalies == []
    assert variants["a"].on_hand == 49


def test_a_blind_count_hides_expectations_until_applied_and_in_its_refusal() -> None:
    variants = _variants(a=40)
    count = _open(variants, blind=True)
    _record(count, variants, a=30)
    [shown] = counts.shown_lines(count)
    assert (shown.counted, shown.expected, shown.variance, shown.within_tolerance) == (
        30, None, None, None,
    )
    with pytest.raises(ApprovalRequired) as refused:
        counts.apply_count(count, _ledger(variants), approve=False, actor="x", now=NOW)
    assert (refused.value.lines[0].expected, refused.value.lines[0].variance) == (None, None)
    counts.apply_count(count, _ledger(variants), approve=True, actor="x", now=NOW)
    [shown] = counts.shown_lines(count)
    assert (shown.expected, shown.variance, shown.within_tolerance) == (40, -10, False)


def test_apply_refuses_a_line_that_would_go_below_reserved_before_approval() -> None:
    variants = _variants(a=(10, 4), b=10)
    count = _open(variants)
    _record(count, variants, a=3, b=10)
    ledger = _ledger(variants)
    with pytest.raises(CountBelowReserved) as refused:
        counts.apply_count(count, ledger, approve=False, actor="x", now=NOW)
    assert (refused.value.variant_id, refused.value.on_hand_after) == ("a", 3)
    assert ledger.changes == []


def test_apply_of_a_cancelled_or_uncounted_count_is_refused() -> None:
    variants = _variants(a=1)
    count = _open(variants)
    with pytest.raises(NothingCounted):
        counts.variants_to_apply(count)
    assert counts.cancel_count(count, actor="api:c", now=NOW) is True
    assert (count.status, count.closed_by) == (CountStatus.CANCELLED, "api:c")
    assert counts.cancel_count(count, actor="api:d", now=NOW) is False  # as it is
    assert count.closed_by == "api:c"
    with pytest.raises(CountClosed):
        counts.variants_to_apply(count)


def test_an_applied_count_cannot_be_cancelled() -> None:
    variants = _variants(a=1)
    count = _open(variants)
    _record(count, variants, a=1)
    counts.apply_count(count, _ledger(variants), approve=False, actor="x", now=NOW)
    with pytest.raises(CountClosed):
        counts.cancel_count(count, actor="x", now=NOW)
    assert count.status is CountStatus.APPLIED
