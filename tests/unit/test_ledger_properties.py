"""Property tests of the ledger: order independence of one order, invariants under load."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from stock_schemas.events import ChangeType

from service.domain.errors import CountBelowReserved
from service.domain.ledger import StockLedger
from service.domain.model import OrderPhase, Variant

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(minutes=15)
VARIANT_IDS = ("A", "B", "C")

SETTINGS = settings(max_examples=200, deadline=None)


def make_ledger(stock: dict[str, int], thresholds: dict[str, int | None] | None = None):
    thresholds = thresholds or {}
    variants = {
        vid: Variant(vid, f"p-{vid}", on_hand, 0, low_stock_threshold=thresholds.get(vid))
        for vid, on_hand in stock.items()
    }
    return StockLedger(variants=variants, orders={}, default_low_stock_threshold=5)


def stock_of(ledger: StockLedger) -> dict[str, tuple[int, int]]:
    return {vid: (v.on_hand, v.reserved) for vid, v in ledger.variants.items()}


# ================================================= (a) one order, any arrival order

ORDER = "o1"
PLENTY = 100

lines_strategy = st.dictionaries(
    st.sampled_from(VARIANT_IDS), st.integers(min_value=1, max_value=5), min_size=1
)


@st.composite
def event_sequences(draw):
    """Checkout 1-3 times, every other event 0-3 times, in any order.

    "not_due" is an expiry check that comes before the hold's deadline: it must change
    nothing, so the sequence still counts as one in which no hold expires.
    """
    counts = {
        "checkout": draw(st.integers(min_value=1, max_value=3)),
        "succeeded": draw(st.integers(min_value=0, max_value=3)),
        "failed": draw(st.integers(min_value=0, max_value=3)),
        "cancelled": draw(st.integers(min_value=0, max_value=3)),
        "not_due": draw(st.integers(min_value=0, max_value=2)),
    }
    events = [name for name, n in counts.items() for _ in range(n)]
    return draw(st.permutations(events))


def apply(ledger: StockLedger, lines: dict[str, int], event: str) -> None:
    if event == "checkout":
        ledger.checkout(ORDER, dict(lines), EXPIRES)
    elif event == "succeeded":
        ledger.payment_succeeded(ORDER)
    elif event == "failed":
        ledger.payment_failed(ORDER)
    elif event == "cancelled":
        ledger.cancel(ORDER)
    elif event == "not_due":
        assert ledger.expire(ORDER, EXPIRES - timedelta(seconds=1)) is False
    else:  # pragma: no cover
        raise AssertionError(event)


def expected_stock(lines: dict[str, int], events: list[str]) -> dict[str, tuple[int, int]]:
    """The final stock the rules of CONTRACT.md give, whatever the arrival order."""
    kinds = set(events)
    final = {vid: (PLENTY, 0) for vid in VARIANT_IDS}
    if "cancelled" in kinds:
        return final  # cancellation wins over everything
    for vid, quantity in lines.items():
        if "succeeded" in kinds:  # a success wins over a failure
            final[vid] = (PLENTY - quantity, 0)
        elif "failed" not in kinds:  # checkout only: still held
            final[vid] = (PLENTY, quantity)
    return final


CANONICAL = ("checkout", "succeeded", "failed", "cancelled")


@SETTINGS
@given(lines=lines_strategy, events=event_sequences())
def test_final_stock_of_one_order_does_not_depend_on_arrival_order(
    lines: dict[str, int], events: list[str]
) -> None:
    ledger = make_ledger(dict.fromkeys(VARIANT_IDS, PLENTY))
    for event in events:
        apply(ledger, lines, event)

    canonical = make_ledger(dict.fromkeys(VARIANT_IDS, PLENTY))
    for event in CANONICAL:
        if event in events:
            apply(canonical, lines, event)

    expected = expected_stock(lines, events)
    assert stock_of(ledger) == expected
    assert stock_of(canonical) == expected

    order = ledger.orders[ORDER]
    assert order.phase is not OrderPhase.PENDING  # a checkout always arrived
    held = order.lines if order.phase is OrderPhase.RESERVED else {}
    for vid, v in ledger.variants.items():
        assert v.reserved == held.get(vid, 0)
    # Nothing expired, and no unit is sold twice: net sales equal the lines or nothing.
    assert all(c.change_type is not ChangeType.EXPIRE for c in ledger.changes)
    sold = Counter()
    for c in ledger.changes:
        if c.change_type in (ChangeType.SALE, ChangeType.RETURN):
            sold[c.variant_id] -= c.delta_on_hand
    sold = +sold
    assert sold == (Counter(lines) if order.phase is OrderPhase.CONFIRMED else Counter())


# =========================================== (b) many orders, limited stock, interleaved

ORDER_IDS = tuple(f"o{i}" for i in range(5))
ANY_VARIANT = st.sampled_from((*VARIANT_IDS, "Z"))  # "Z" is not in the catalogue

order_lines = st.dictionaries(
    # Mostly known variants; now and then one the catalogue does not have.
    st.sampled_from(VARIANT_IDS * 3 + ("Z",)),
    st.integers(min_value=1, max_value=3),
    min_size=1,
    max_size=3,
)

expire_op = st.tuples(st.just("expire"), st.sampled_from(ORDER_IDS), st.integers(0, 45))
checkout_op = st.tuples(st.just("checkout"), st.sampled_from(ORDER_IDS), st.integers(0, 30))
operations = st.one_of(
    checkout_op,
    checkout_op,  # checkouts and expiries twice: they are the rarer paths to the states
    st.tuples(st.just("succeeded"), st.sampled_from(ORDER_IDS)),
    st.tuples(st.just("failed"), st.sampled_from(ORDER_IDS)),
    st.tuples(st.just("cancelled"), st.sampled_from(ORDER_IDS)),
    expire_op,
    expire_op,
    st.tuples(st.just("restock"), ANY_VARIANT, st.integers(1, 5)),
    st.tuples(st.just("adjust"), st.sampled_from(VARIANT_IDS), st.integers(0, 10)),
)


def check_invariants(ledger: StockLedger) -> None:
    for vid, v in ledger.variants.items():
        assert 0 <= v.reserved <= v.on_hand, vid
        held = sum(
            o.lines.get(vid, 0) for o in ledger.orders.values() if o.phase is OrderPhase.RESERVED
        )
        assert v.reserved == held, vid


@SETTINGS
@given(
    initial=st.fixed_dictionaries({vid: st.integers(0, 12) for vid in VARIANT_IDS}),
    thresholds=st.fixed_dictionaries({vid: st.none() | st.integers(0, 6) for vid in VARIANT_IDS}),
    lines_by_order=st.fixed_dictionaries({oid: order_lines for oid in ORDER_IDS}),
    ops=st.lists(operations, min_size=20, max_size=80),
)
def test_invariants_hold_under_any_interleaving_of_many_orders(
    initial: dict[str, int],
    thresholds: dict[str, int | None],
    lines_by_order: dict[str, dict[str, int]],
    ops: list[tuple],
) -> None:
    ledger = make_ledger(initial, thresholds)
    for op in ops:
        kind, target = op[0], op[1]
        if kind == "checkout":
            expires = T0 + timedelta(minutes=op[2])
            ledger.checkout(target, dict(lines_by_order[target]), expires)
        elif kind == "succeeded":
            ledger.payment_succeeded(target)
        elif kind == "failed":
            ledger.payment_failed(target)
        elif kind == "cancelled":
            ledger.cancel(target)
        elif kind == "expire":
            ledger.expire(target, T0 + timedelta(minutes=op[2]))
        elif kind == "restock":
            ledger.restock(target, op[2])
        else:
            v = ledger.variants[target]
            try:
                ledger.adjust(target, op[2], reason="count")
            except CountBelowReserved:
                assert op[2] < v.reserved
        check_invariants(ledger)

    # 3. on_hand is its first quantity plus every delta_on_hand of its audit log, and the
    #    audit rows chain: each one's on_hand/reserved follow from the one before.
    for vid, v in ledger.variants.items():
        changes = [c for c in ledger.changes if c.variant_id == vid]
        on_hand, reserved = initial.get(vid, 0), 0
        for c in changes:
            on_hand += c.delta_on_hand
            reserved += c.delta_reserved
            assert (c.on_hand, c.reserved) == (on_hand, reserved)
            assert 0 <= c.reserved <= c.on_hand
        assert v.on_hand == initial.get(vid, 0) + sum(c.delta_on_hand for c in changes)
        assert (v.on_hand, v.reserved) == (on_hand, reserved)
        # 5. versions per variant are 1..n without gaps.
        assert [c.version for c in changes] == list(range(1, len(changes) + 1))
        assert v.version == len(changes)

    # 4. No order is confirmed for more than it reserved; no unit is sold twice.
    for oid, order in ledger.orders.items():
        sold = Counter()
        for c in ledger.changes:
            if c.reference == oid and c.change_type in (ChangeType.SALE, ChangeType.RETURN):
                sold[c.variant_id] -= c.delta_on_hand
        sold = +sold
        if order.phase is OrderPhase.CONFIRMED:
            assert sold == Counter(order.lines), oid
        else:
            assert sold == Counter(), oid

    # Low-stock alerts are exactly the downward crossings of each variant's threshold.
    crossings = []
    available = dict(initial)
    for c in ledger.changes:
        before = available.get(c.variant_id, 0)
        threshold = ledger.threshold_of(ledger.variants[c.variant_id])
        if before > threshold >= c.available:
            crossings.append((c.variant_id, c.available, threshold))
        available[c.variant_id] = c.available
    assert [(a.variant_id, a.available, a.threshold) for a in ledger.alerts] == crossings
