"""Errors the domain raises for requests it refuses (admin operations, HTTP)."""

from __future__ import annotations

from service.domain.model import Shortage


class DomainError(Exception):
    """A request the rules refuse. `code` is machine-readable (HTTP and CLI use it)."""

    code = "domain_error"


class UnknownVariant(DomainError):
    code = "unknown_variant"

    def __init__(self, variant_id: str) -> None:
        super().__init__(f"unknown variant {variant_id!r}")
        self.variant_id = variant_id


class InvalidQuantity(DomainError):
    code = "invalid_quantity"


class CountBelowReserved(DomainError):
    """A counted quantity below what customers hold: release holds first."""

    code = "count_below_reserved"

    def __init__(self, variant_id: str, counted: int, reserved: int) -> None:
        super().__init__(
            f"counted {counted} for {variant_id!r} but {reserved} are reserved by open orders; "
            "the count cannot go below the reserved quantity"
        )
        self.variant_id = variant_id
        self.counted = counted
        self.reserved = reserved


class InsufficientStock(DomainError):
    """Carries every failing line, not just the first."""

    code = "insufficient_stock"

    def __init__(self, shortages: tuple[Shortage, ...]) -> None:
        names = ", ".join(s.variant_id for s in shortages)
        super().__init__(f"insufficient stock for {names}")
        self.shortages = shortages


class InvariantViolation(AssertionError):
    """A bug: a decision would break `0 <= reserved <= on_hand`. Never caught."""
