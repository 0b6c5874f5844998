"""Stock counts (stocktakes): the rules of CONTRACT.md, "Stock counts", with no I/O.

A count is opened for some variants and snapshots each one's `on_hand` and `version`.
Each line is then counted (and may be recounted while the count is OPEN). A line's
`expected` is the variant's `on_hand` at the moment it was counted: the snapshot plus
every `delta_on_hand` since (invariant 3 makes the two the same number), so a sale
made while the shelf was being counted is not a difference. Applying moves each
counted line's `on_hand` by its variance, `counted - expected`, so whatever moved
after the count is kept. The ledger makes the change (one ADJUSTMENT each), and the
caller's unit of work writes it, its audit row and its events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from stock_schemas.events import MAX_QUANTITY, AnomalyRule

from service.domain.errors import (
    ApprovalRequired,
    CountBelowReserved,
    CountClosed,
    CountOverlap,
    InvalidQuantity,
    NothingCounted,
    OutOfTolerance,
    UnknownVariant,
    VariantNotInCount,
)
from service.domain.ledger import StockLedger
from service.domain.model import Anomaly, EventRef, Variant

#: The reason on the audit row of every line a count applies.
CYCLE_COUNT_REASON = "cycle_count"


class CountStatus(StrEnum):
    OPEN = "OPEN"
    APPLIED = "APPLIED"
    CANCELLED = "CANCELLED"


def within_tolerance(variance: int, expected: int, tolerance_percent: Decimal) -> bool:
    """`|variance| <= tolerance_percent/100 * expected`, exactly (no float rounding).
    An expected of 0 tolerates no difference."""
    return abs(variance) * 100 <= tolerance_percent * expected


@dataclass(slots=True)
class CountLine:
    variant_id: str
    snapshot_on_hand: int
    snapshot_version: int
    counted: int | None = None
    counted_at: datetime | None = None
    counted_by: str | None = None
    #: The variant's `on_hand` when the line was counted.
    expected: int | None = None
    #: The tolerance in force when the line was counted.
    tolerance_percent: Decimal | None = None
    #: The version of the variant's ADJUSTMENT this line applied.
    applied_version: int | None = None

    @property
    def variance(self) -> int | None:
        if self.counted is None or self.expected is None:
            return None
        return self.counted - self.expected

    @property
    def within_tolerance(self) -> bool | None:
        variance = self.variance
        if variance is None or self.expected is None or self.tolerance_percent is None:
            return None
        return within_tolerance(variance, self.expected, self.tolerance_percent)


@dataclass(slots=True)
class StockCount:
    count_id: str
    status: CountStatus
    blind: bool
    reason: str | None
    product_id: str | None
    opened_by: str
    opened_at: datetime
    #: Variant id -> its line, in variant id order.
    lines: dict[str, CountLine] = field(default_factory=dict)
    closed_by: str | None = None
    closed_at: datetime | None = None
    approved_by: str | None = None

    @property
    def hides_expectations(self) -> bool:
        """A blind count shows no expected quantity (nor anything derived from it)
        until it is applied, so the counter counts what is there."""
        return self.blind and self.status is not CountStatus.APPLIED


@dataclass(frozen=True, slots=True)
class LineView:
    """A line as answers show it (CONTRACT.md: variantId, counted, expected, variance,
    withinTolerance), with what a blind count hides set to None."""

    variant_id: str
    counted: int | None
    expected: int | None
    variance: int | None
    within_tolerance: bool | None
    tolerance_percent: float | None
    counted_at: datetime | None
    counted_by: str | None
    applied_version: int | None


def shown_lines(count: StockCount) -> list[LineView]:
    hide = count.hides_expectations
    return [
        LineView(
            variant_id=line.variant_id,
            counted=line.counted,
            expected=None if hide else line.expected,
            variance=None if hide else line.variance,
            within_tolerance=None if hide else line.within_tolerance,
            tolerance_percent=(
                float(line.tolerance_percent) if line.tolerance_percent is not None else None
            ),
            counted_at=line.counted_at,
            counted_by=line.counted_by,
            applied_version=line.applied_version,
        )
        for line in count.lines.values()
    ]


# ---------------------------------------------------------------------- open


def open_count(
    count_id: str,
    variants: Mapping[str, Variant],
    variant_ids: Sequence[str],
    *,
    open_elsewhere: Mapping[str, str],
    actor: str,
    now: datetime,
    blind: bool = False,
    reason: str | None = None,
    product_id: str | None = None,
) -> StockCount:
    """A new OPEN count of `variant_ids` (repeats merged), snapshotting each variant
    as `variants` (locked by the caller) holds it.

    Every unknown variant is refused together (`unknown_variant`), and so is every
    variant already in another open count (`open_elsewhere`: variant -> that count):
    two counts of the same shelf would both correct the same difference."""
    wanted = sorted(set(variant_ids))
    unknown = [v for v in wanted if v not in variants]
    if unknown:
        raise UnknownVariant(*unknown)
    overlapping = {v: open_elsewhere[v] for v in wanted if v in open_elsewhere}
    if overlapping:
        raise CountOverlap(overlapping)
    return StockCount(
        count_id=count_id,
        status=CountStatus.OPEN,
        blind=blind,
        reason=reason,
        product_id=product_id,
        opened_by=actor,
        opened_at=now,
        lines={
            v: CountLine(v, variants[v].on_hand, variants[v].version) for v in wanted
        },
    )


# -------------------------------------------------------------------- record


def check_recordable(count: StockCount, counted: Sequence[tuple[str, int]]) -> dict[str, int]:
    """The lines to record (variant -> counted; a later line for the same variant
    wins), once the count is known to take them: OPEN, every variant in it, every
    quantity from 0 to MAX_QUANTITY. Refuses the whole request otherwise."""
    if count.status is not CountStatus.OPEN:
        raise CountClosed(count.count_id, count.status.value, "no line can be recorded on it")
    lines = dict(counted)
    foreign = tuple(v for v in lines if v not in count.lines)
    if foreign:
        raise VariantNotInCount(count.count_id, foreign)
    for variant_id, quantity in lines.items():
        if not 0 <= quantity <= MAX_QUANTITY:
            raise InvalidQuantity(
                f"counted quantity of {variant_id!r} must be between 0 and {MAX_QUANTITY}, "
                f"got {quantity}"
            )
    return lines


def record_lines(
    count: StockCount,
    lines: Mapping[str, int],
    variants: Mapping[str, Variant],
    *,
    tolerances: Mapping[str, Decimal | None],
    default_tolerance: Decimal,
    actor: str,
    now: datetime,
) -> list[CountLine]:
    """Record (or overwrite) each line: its counted quantity, and as `expected` the
    variant's `on_hand` now (`variants`, locked by the caller), with the tolerance
    in force (the variant's own, else `default_tolerance`). Returns the lines."""
    recorded: list[CountLine] = []
    for variant_id in sorted(lines):
        line = count.lines[variant_id]
        own = tolerances.get(variant_id)
        line.counted = lines[variant_id]
        line.counted_at = now
        line.counted_by = actor
        line.expected = variants[variant_id].on_hand
        line.tolerance_percent = own if own is not None else default_tolerance
        recorded.append(line)
    return recorded


# --------------------------------------------------------------------- apply


def variants_to_apply(count: StockCount) -> list[str]:
    """The variants an apply changes (its counted lines; uncounted ones are skipped),
    to lock; empty when the count is already applied (an apply answers it as it is).
    A cancelled count, or one without any counted line, is refused."""
    if count.status is CountStatus.APPLIED:
        return []
    if count.status is CountStatus.CANCELLED:
        raise CountClosed(count.count_id, count.status.value, "it cannot be applied")
    counted = [v for v, line in count.lines.items() if line.counted is not None]
    if not counted:
        raise NothingCounted(count.count_id)
    return counted


def out_of_tolerance(count: StockCount) -> list[CountLine]:
    return [line for line in count.lines.values() if line.within_tolerance is False]


def apply_count(
    count: StockCount,
    ledger: StockLedger,
    *,
    approve: bool,
    actor: str,
    now: datetime,
    cause: EventRef | None = None,
) -> list[CountLine]:
    """Move each counted line's `on_hand` by its variance, all or nothing; returns the
    lines applied (none if the count was applied already).

    Refused, with nothing changed: a line whose variance would leave `on_hand` below
    `reserved` (`count_below_reserved`, the first in variant order), and lines out of
    tolerance without `approve` (`approval_required`, all of them). `approve` is
    checked by the caller to come from an admin. Every applied line out of tolerance
    adds a `count_variance` anomaly to the ledger's."""
    to_apply = variants_to_apply(count)
    if not to_apply:
        return []
    lines = [count.lines[v] for v in to_apply]
    for line in lines:
        variant = ledger.variants[line.variant_id]
        after = variant.on_hand + _variance(line)
        if after < variant.reserved:
            raise CountBelowReserved(
                line.variant_id, _counted(line), variant.reserved, on_hand_after=after
            )
    beyond = out_of_tolerance(count)
    if beyond and not approve:
        hide = count.hides_expectations
        raise ApprovalRequired(
            count.count_id,
            tuple(
                OutOfTolerance(
                    variant_id=line.variant_id,
                    counted=_counted(line),
                    expected=None if hide else line.expected,
                    variance=None if hide else line.variance,
                    tolerance_percent=float(line.tolerance_percent or 0),
                )
                for line in beyond
            ),
        )
    for line in lines:
        variant = ledger.variants[line.variant_id]
        change = ledger.adjust(
            line.variant_id,
            variant.on_hand + _variance(line),
            reason=CYCLE_COUNT_REASON,
            reference=count.count_id,
            cause=cause,
        )
        line.applied_version = change.version
        if line.within_tolerance is False:
            ledger.anomalies.append(
                Anomaly(
                    variant_id=line.variant_id,
                    product_id=variant.product_id,
                    rule=AnomalyRule.COUNT_VARIANCE,
                    observed=_counted(line),
                    expected=line.expected if line.expected is not None else 0,
                    reference=count.count_id,
                )
            )
    count.status = CountStatus.APPLIED
    count.closed_by = actor
    count.closed_at = now
    count.approved_by = actor if beyond else None
    return lines


def _variance(line: CountLine) -> int:
    variance = line.variance
    assert variance is not None, "only counted lines are applied"
    return variance


def _counted(line: CountLine) -> int:
    assert line.counted is not None, "only counted lines are applied"
    return line.counted


# -------------------------------------------------------------------- cancel


def cancel_count(count: StockCount, *, actor: str, now: datetime) -> bool:
    """Close an open count without applying anything. True if it changed; cancelling
    a cancelled count answers it as it is; an applied count is immutable."""
    if count.status is CountStatus.CANCELLED:
        return False
    if count.status is CountStatus.APPLIED:
        raise CountClosed(count.count_id, count.status.value, "an applied count is immutable")
    count.status = CountStatus.CANCELLED
    count.closed_by = actor
    count.closed_at = now
    return True
