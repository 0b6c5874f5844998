"""CONTRACT.md's reservation life as a reference model, written from the page alone.

Given the events one order received (whatever their order, however often), the model
says which final statuses the contract allows, and what each status means for stock.
Where the contract leaves the outcome to timing (a scarce variant that may be gone
when the checkout is handled, a hold that may lapse before its payment), the model
allows each outcome the table can reach, and no other. For an order on plentiful stock
that is not cancelled, exactly one status is right; a cancellation allows the two the
table reaches depending on whether it came before or after the checkout (or the
payment). The checker also checks each order's announcements step by step against
the table, which pins down what the final status alone cannot.

Stock then follows from the statuses: a variant's `reserved` is the sum of its lines
in RESERVED orders, and it has sold the lines of every CONFIRMED order. A worker that
drops, repeats or half-applies an event shows up either as a status the model does
not allow or as stock that does not add up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tests.faults.workload import OrderPlan


def allowed_statuses(
    plan: OrderPlan, catalogue: dict[str, int], scarce: set[str]
) -> frozenset[str]:
    if plan.lines is None:
        return frozenset({"PENDING"})  # remembered, waiting for a checkout
    if any(v not in catalogue for v in plan.lines):
        # All or nothing: the whole checkout is rejected, and a payment then fails.
        if plan.paid:
            return frozenset({"CONFIRM_FAILED"})
        if plan.failed:
            # A failure that came first: the checkout then reserves nothing (RELEASED).
            return frozenset({"REJECTED", "RELEASED"})
        return frozenset({"REJECTED"})
    may_run_short = any(v in scarce for v in plan.lines)
    may_expire = plan.short_hold
    if plan.cancelled:  # cancellation wins over everything: nothing held, nothing sold
        if plan.paid:
            # sold then returned; or cancelled first, and the payment is refused
            return frozenset({"RETURNED", "CONFIRM_FAILED"})
        statuses = {"REJECTED", "RELEASED"}
        if may_expire:
            statuses.add("EXPIRED")
        return frozenset(statuses)
    if plan.paid:  # a success wins over a failure, and takes lapsed stock back
        if may_run_short:
            return frozenset({"CONFIRMED", "CONFIRM_FAILED"})
        return frozenset({"CONFIRMED"})
    if may_expire and not plan.failed:
        # The run ends only once every lapsed hold is swept: nothing is RESERVED.
        return frozenset({"EXPIRED", "REJECTED"} if may_run_short else {"EXPIRED"})
    statuses = {"RELEASED" if plan.failed else "RESERVED"}
    if may_run_short:
        statuses.add("REJECTED")
    if may_expire:
        statuses.add("EXPIRED")
    return frozenset(statuses)


@dataclass(frozen=True)
class ExpectedStock:
    on_hand: int
    reserved: int
    sold: int


def expected_stock(
    orders: dict[str, OrderPlan], statuses: dict[str, str], catalogue: dict[str, int]
) -> dict[str, ExpectedStock]:
    """Per variant, what the orders' final statuses leave (no restocks in the run)."""
    held: dict[str, int] = defaultdict(int)
    sold: dict[str, int] = defaultdict(int)
    for order_id, plan in orders.items():
        status = statuses.get(order_id)
        for variant_id, quantity in (plan.lines or {}).items():
            if status == "RESERVED":
                held[variant_id] += quantity
            elif status == "CONFIRMED":
                sold[variant_id] += quantity
    return {
        variant_id: ExpectedStock(units - sold[variant_id], held[variant_id], sold[variant_id])
        for variant_id, units in catalogue.items()
    }
