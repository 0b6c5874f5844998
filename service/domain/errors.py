"""Errors the domain raises for requests it refuses (admin operations, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.model import Shortage


class DomainError(Exception):
    """A request the rules refuse. `code` is machine-readable (HTTP and CLI use it)."""

    code = "domain_error"


class UnknownVariant(DomainError):
    """Carries every unknown variant of the request, not just the first."""

    code = "unknown_variant"

    def __init__(self, variant_id: str, *more: str) -> None:
        ids = (variant_id, *more)
        names = ", ".join(repr(v) for v in ids)
        super().__init__(f"unknown variant{'s' if more else ''} {names}")
        self.variant_id = variant_id
        self.variant_ids = ids


class UnknownProduct(DomainError):
    code = "unknown_product"

    def __init__(self, product_id: str) -> None:
        super().__init__(f"no variant of product {product_id!r} is known")
        self.product_id = product_id


class UnknownReservation(DomainError):
    """No checkout has been recorded under these reservation (order) ids."""

    code = "unknown_reservation"

    def __init__(self, reservation_ids: tuple[str, ...]) -> None:
        names = ", ".join(repr(r) for r in reservation_ids)
        super().__init__(f"unknown reservation{'s' if len(reservation_ids) > 1 else ''} {names}")
        self.reservation_ids = reservation_ids


class ReservationClosed(DomainError):
    """The reservation is past the point where this request can act on it."""

    code = "reservation_closed"

    def __init__(self, statuses: dict[str, str], hint: str) -> None:
        listed = ", ".join(f"{r!r} is {s}" for r, s in statuses.items())
        super().__init__(f"{listed}: {hint}")
        self.statuses = statuses


class ReservationMismatch(DomainError):
    """The request names a reservation with other lines than the ones it holds."""

    code = "reservation_mismatch"

    def __init__(self, held: dict[str, dict[str, int]]) -> None:
        names = ", ".join(repr(r) for r in held)
        super().__init__(
            f"reservation {names} exists with other lines than requested; "
            "a changed cart needs a new reservation id"
        )
        self.held = held


class InvalidQuantity(DomainError):
    code = "invalid_quantity"


class InvalidExpiry(DomainError):
    """An `expires_at` in the past, or further ahead than holds may last."""

    code = "invalid_expiry"


class InvalidOrderedAt(DomainError):
    """A restock's `orderedAt` after the restock itself: a lead time cannot be negative."""

    code = "invalid_ordered_at"

    def __init__(self, variant_id: str, ordered_at: str) -> None:
        super().__init__(
            f"orderedAt {ordered_at} of the restock of {variant_id!r} is in the future; "
            "it is when the delivery was ordered"
        )
        self.variant_id = variant_id


class InvalidPolicy(DomainError):
    """A policy whose values contradict each other (as they would stand once set)."""

    code = "invalid_policy"


class ProductMismatch(DomainError):
    """A restock names another product than the variant belongs to."""

    code = "product_mismatch"

    def __init__(self, variant_id: str, product_id: str, named: str) -> None:
        super().__init__(
            f"variant {variant_id!r} belongs to product {product_id!r}, not {named!r}"
        )
        self.variant_id = variant_id
        self.product_id = product_id
        self.named = named


class IdempotencyKeyReused(DomainError):
    """The key was used before for another request: its answer would not be this one's."""

    code = "idempotency_key_reused"


class InvalidCursor(DomainError):
    """A paging cursor this service did not hand out."""

    code = "invalid_cursor"


class VersionConflict(DomainError):
    """Optimistic concurrency: a line's `expectedVersion` is not the variant's version
    (someone changed it since the caller read it). Carries every conflicting variant's
    current version, so the caller can re-read and decide again."""

    code = "version_conflict"

    def __init__(self, current: dict[str, int]) -> None:
        listed = ", ".join(f"{v!r} is at version {n}" for v, n in current.items())
        super().__init__(f"changed since it was read: {listed}; nothing was applied")
        self.current = current


class CountBelowReserved(DomainError):
    """A counted quantity below what customers hold: release holds first.

    `on_hand_after`: for a stock count's line, the `on_hand` its variance would leave
    (the counted quantity plus what moved since it was counted)."""

    code = "count_below_reserved"

    def __init__(
        self, variant_id: str, counted: int, reserved: int, *, on_hand_after: int | None = None
    ) -> None:
        if on_hand_after is None:
            super().__init__(
                f"counted {counted} for {variant_id!r} but {reserved} are reserved by open "
                "orders; the count cannot go below the reserved quantity"
            )
        else:
            super().__init__(
                f"counted {counted} for {variant_id!r}, which with what moved since leaves "
                f"on_hand at {on_hand_after}, below the {reserved} reserved by open orders; "
                "release holds (or recount) first; nothing was applied"
            )
        self.variant_id = variant_id
        self.counted = counted
        self.reserved = reserved
        self.on_hand_after = on_hand_after


class UnknownCount(DomainError):
    code = "unknown_count"

    def __init__(self, count_id: str) -> None:
        super().__init__(f"unknown count {count_id!r}")
        self.count_id = count_id


class CountClosed(DomainError):
    """The count was applied (it is immutable) or cancelled."""

    code = "count_closed"

    def __init__(self, count_id: str, status: str, what: str) -> None:
        super().__init__(f"count {count_id!r} is {status}: {what}")
        self.count_id = count_id
        self.status = status


class VariantNotInCount(DomainError):
    """Lines recorded for variants the count was not opened for."""

    code = "variant_not_in_count"

    def __init__(self, count_id: str, variant_ids: tuple[str, ...]) -> None:
        names = ", ".join(repr(v) for v in variant_ids)
        super().__init__(
            f"count {count_id!r} has no line for {names}; open a count that includes "
            f"{'them' if len(variant_ids) > 1 else 'it'}"
        )
        self.count_id = count_id
        self.variant_ids = variant_ids


class CountOverlap(DomainError):
    """A variant may be in one open count at a time: two counts of one shelf would
    both correct the same difference."""

    code = "count_overlap"

    def __init__(self, open_counts: dict[str, str]) -> None:
        listed = ", ".join(f"{v!r} is in {c!r}" for v, c in open_counts.items())
        super().__init__(f"already being counted: {listed}; apply or cancel that count first")
        self.open_counts = open_counts


class NothingCounted(DomainError):
    """An apply of a count none of whose lines was recorded."""

    code = "nothing_counted"

    def __init__(self, count_id: str) -> None:
        super().__init__(
            f"count {count_id!r} has no counted line: record lines first, or cancel it"
        )
        self.count_id = count_id


@dataclass(frozen=True, slots=True)
class OutOfTolerance:
    """A count line whose variance is beyond its tolerance (expected and variance
    are None on a blind count)."""

    variant_id: str
    counted: int
    expected: int | None
    variance: int | None
    tolerance_percent: float


class ApprovalRequired(DomainError):
    """Lines out of tolerance, applied only with `approve` from an admin."""

    code = "approval_required"

    def __init__(self, count_id: str, lines: tuple[OutOfTolerance, ...]) -> None:
        listed = ", ".join(
            f"{line.variant_id!r} counted {line.counted}"
            + (f" (variance {line.variance:+d})" if line.variance is not None else "")
            for line in lines
        )
        super().__init__(
            f"count {count_id!r} has {len(lines)} line{'s' if len(lines) > 1 else ''} out of "
            f"tolerance: {listed}; an admin applies {'them' if len(lines) > 1 else 'it'} with "
            "approve: true (stock count apply --approve); nothing was applied"
        )
        self.count_id = count_id
        self.lines = lines


class InsufficientStock(DomainError):
    """Carries every failing line, not just the first."""

    code = "insufficient_stock"

    def __init__(self, shortages: tuple[Shortage, ...]) -> None:
        names = ", ".join(s.variant_id for s in shortages)
        super().__init__(f"insufficient stock for {names}")
        self.shortages = shortages


class InvariantViolation(AssertionError):
    """A bug: a decision would break `0 <= reserved <= on_hand`. Never caught."""
