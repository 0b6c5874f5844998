"""The shop the fault suite plays: what it will publish, when, and what each order did.

Written from CONTRACT.md alone (CloudEvents built by hand, no import from `service/`
or `schemas/`), so the checker's idea of the inputs cannot share a bug with the worker.

One run is a list of `Planned` records in send order: checkouts spread over the load
window, each order's payment, failure or cancellation a little later (so they race
across topics), some events sent twice with the same id (a producer retry), some holds
so short that they expire while the payment is on its way, ids that look like SQL,
orders for a variant that does not exist, payments for orders that never check out,
and poison of every kind interleaved.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

SOURCE = "fault-shop"
HOT_VARIANT = "fv-hot"
UNKNOWN_VARIANT = "fv-nope'); DELETE FROM variants; --"
#: Normal variants never run short: every order's fate is then exactly one status.
PLENTY = 1_000_000


@dataclass(frozen=True)
class Topics:
    checkout: str
    succeeded: str
    failed: str
    cancelled: str

    def all(self) -> list[str]:
        return [self.checkout, self.succeeded, self.failed, self.cancelled]


@dataclass(frozen=True)
class Planned:
    """One Kafka record the load generator sends at `at` seconds into the load."""

    at: float
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    #: `(source, id)` of a valid event; None for poison.
    event_id: str | None = None
    #: Why this record is poison (the checker expects it in the DLQ); None if valid.
    poison: str | None = None

    @property
    def identity(self) -> tuple[str, bytes, tuple[tuple[str, bytes], ...]]:
        """What the checker matches a record read back from the topic with."""
        return (self.topic, self.value, tuple(sorted(self.headers)))


@dataclass
class OrderPlan:
    """What the shop did with one order: the events the worker will receive for it."""

    order_id: str
    lines: dict[str, int] | None = None
    paid: bool = False
    failed: bool = False
    cancelled: bool = False
    short_hold: bool = False


@dataclass
class Workload:
    records: list[Planned]
    orders: dict[str, OrderPlan]
    #: variant -> units on hand before the run.
    catalogue: dict[str, int]
    hot_units: int
    seed: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Mix:
    """Shares of the stream; the defaults are the suite's ordinary traffic."""

    rate: float = 400.0
    seconds: float = 30.0
    variants: int = 200
    hot_share: float = 0.3
    #: Units of the hot variant per order that wants it: it sells out mid-run.
    hot_units_per_order: float = 0.15
    short_hold_share: float = 0.04
    duplicate_share: float = 0.03
    poison_share: float = 0.02
    odd_id_share: float = 0.01
    orphan_payment_share: float = 0.005
    binary_mode_share: float = 0.1


def build_workload(topics: Topics, mix: Mix, *, seed: int, started: datetime) -> Workload:
    """Deterministic for a seed; `started` is when the load begins (hold expiries are
    absolute times, so they are placed relative to it)."""
    rng = random.Random(seed)
    run = f"r{seed}-{uuid.UUID(int=rng.getrandbits(128)).hex[:6]}"
    records: list[Planned] = []
    orders: dict[str, OrderPlan] = {}
    # About 2.2 records per order (checkout, its outcome, sometimes a second one).
    order_count = max(int(mix.rate * mix.seconds / 2.2), 20)
    hot_orders = 0
    for n in range(order_count):
        at = rng.uniform(0, mix.seconds)
        odd = rng.random() < mix.odd_id_share
        order_id = f"{run}-o{n}" + ("'; DROP TABLE orders; --\"\\" if odd else "")
        plan = orders[order_id] = OrderPlan(order_id)
        if rng.random() < mix.orphan_payment_share:
            plan.paid = True  # never checks out: stays remembered, holds nothing
            records.append(_payment(topics, rng, order_id, at))
            continue
        variants = rng.sample(range(mix.variants), rng.randint(1, 3))
        plan.lines = {f"fv-{v:04d}": rng.randint(1, 3) for v in variants}
        if odd and rng.random() < 0.5:
            plan.lines[UNKNOWN_VARIANT] = 1
        plan.short_hold = rng.random() < mix.short_hold_share
        if not plan.short_hold and rng.random() < mix.hot_share:
            plan.lines[HOT_VARIANT] = 1
            hot_orders += 1
        data: dict[str, object] = {
            "order_id": order_id,
            "lines": [{"variant_id": v, "quantity": q} for v, q in plan.lines.items()],
        }
        if plan.short_hold:
            hold = rng.uniform(0.5, 2.0)
            data["expires_at"] = (started + timedelta(seconds=at + hold)).isoformat()
            records.append(_valid(topics.checkout, "order.checkout", order_id, data, at, rng, mix))
            if rng.random() < 1 / 3:
                continue  # abandoned: the hold must expire
            # The payment lands around the expiry: before it, just after, or well after.
            after = hold + rng.uniform(-0.5, 1.0)
            plan.paid = True
            records.append(_payment(topics, rng, order_id, at + max(after, 0.05)))
            continue
        records.append(_valid(topics.checkout, "order.checkout", order_id, data, at, rng, mix))
        later = at + rng.uniform(0.05, 4.0)
        roll = rng.random()
        if roll < 0.70:
            plan.paid = True
            records.append(_payment(topics, rng, order_id, later))
        elif roll < 0.82:
            plan.failed = True
            records.append(_failure(topics, rng, order_id, later))
        elif roll < 0.87:
            plan.cancelled = True
            records.append(_cancel(topics, rng, order_id, later))
        elif roll < 0.92:  # paid, then the customer changed their mind
            plan.paid = plan.cancelled = True
            records.append(_payment(topics, rng, order_id, later))
            records.append(_cancel(topics, rng, order_id, later + rng.uniform(0.05, 2.0)))
        elif roll < 0.95:  # a declined card, then a good one: success wins
            plan.failed = plan.paid = True
            records.append(_failure(topics, rng, order_id, later))
            records.append(_payment(topics, rng, order_id, later + rng.uniform(0.05, 2.0)))
        # else: checks out and never pays (the hold outlives the run)

    for record in list(records):
        if rng.random() < mix.duplicate_share:  # the same event again, a little later
            records.append(_again(record, record.at + rng.uniform(0.01, 3.0)))
    poison_count = int(len(records) * mix.poison_share)
    records.extend(poison(topics, rng, rng.uniform(0, mix.seconds)) for _ in range(poison_count))
    records.sort(key=lambda r: r.at)

    hot_units = max(int(hot_orders * mix.hot_units_per_order), 1)
    catalogue = {f"fv-{v:04d}": PLENTY for v in range(mix.variants)}
    catalogue[HOT_VARIANT] = hot_units
    counts = {
        "records": len(records),
        "orders": len(orders),
        "valid": sum(r.event_id is not None for r in records),
        "poison": sum(r.poison is not None for r in records),
        "hot_orders": hot_orders,
        "short_holds": sum(p.short_hold for p in orders.values()),
    }
    return Workload(records, orders, catalogue, hot_units, seed, counts)


def _again(record: Planned, at: float) -> Planned:
    return Planned(at, record.topic, record.key, record.value, record.headers, record.event_id)


def _payment(topics: Topics, rng: random.Random, order_id: str, at: float) -> Planned:
    data = {"order_id": order_id, "payment_id": f"pay-{order_id}", "amount": "19.90"}
    return _valid(topics.succeeded, "payment.succeeded", order_id, data, at, rng)


def _failure(topics: Topics, rng: random.Random, order_id: str, at: float) -> Planned:
    data = {"order_id": order_id, "reason": "card_declined"}
    return _valid(topics.failed, "payment.failed", order_id, data, at, rng)


def _cancel(topics: Topics, rng: random.Random, order_id: str, at: float) -> Planned:
    data = {"order_id": order_id, "reason": "customer"}
    return _valid(topics.cancelled, "order.cancelled", order_id, data, at, rng)


def _valid(
    topic: str,
    event_type: str,
    order_id: str,
    data: dict[str, object],
    at: float,
    rng: random.Random,
    mix: Mix | None = None,
) -> Planned:
    """A CloudEvent, structured mode mostly, binary mode (ce_ headers) sometimes."""
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    time = datetime.now(UTC).isoformat()
    key = order_id.encode()
    if rng.random() < (mix or Mix()).binary_mode_share:
        headers = (
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_source", SOURCE.encode()),
            ("ce_type", event_type.encode()),
            ("ce_time", time.encode()),
            ("content-type", b"application/json"),
        )
        return Planned(at, topic, key, _json(data), headers, event_id)
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    }
    return Planned(at, topic, key, _json(envelope), (), event_id)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


POISON_KINDS = (
    "random-bytes",
    "truncated-json",
    "not-a-cloudevent",
    "wrong-types",
    "huge-quantity",
    "negative-quantity",
    "overlong-id",
    "nul-in-id",
    "unknown-type",
    "type-topic-mismatch",
    "empty-value",
    "oversized",
)


def poison(topics: Topics, rng: random.Random, at: float, kind: str | None = None) -> Planned:
    """A record that is not a valid event, and why; each must reach the DLQ."""
    kind = kind or rng.choice(POISON_KINDS)
    oid = f"poison-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}"

    def event(event_type: str, data: object) -> bytes:
        return _json(
            {
                "specversion": "1.0",
                "id": f"{oid}-event",
                "source": SOURCE,
                "type": event_type,
                "time": datetime.now(UTC).isoformat(),
                "datacontenttype": "application/json",
                "data": data,
            }
        )

    line = {"variant_id": "fv-0001", "quantity": 1}
    values: dict[str, tuple[str, bytes]] = {
        "random-bytes": (topics.checkout, rng.randbytes(rng.randint(1, 300))),
        "truncated-json": (
            topics.succeeded,
            event("payment.succeeded", {"order_id": oid})[: rng.randint(5, 60)],
        ),
        "not-a-cloudevent": (topics.failed, _json({"order_id": oid, "reason": "no envelope"})),
        "wrong-types": (
            topics.checkout,
            event("order.checkout", {"order_id": 42, "lines": "three shirts"}),
        ),
        "huge-quantity": (
            topics.checkout,
            event(
                "order.checkout",
                {"order_id": oid, "lines": [{"variant_id": "fv-0001", "quantity": 10**30}]},
            ),
        ),
        "negative-quantity": (
            topics.checkout,
            event(
                "order.checkout",
                {"order_id": oid, "lines": [{"variant_id": "fv-0002", "quantity": -5}]},
            ),
        ),
        "overlong-id": (
            topics.cancelled,
            event("order.cancelled", {"order_id": "'; DROP TABLE variants; --" * 20}),
        ),
        "nul-in-id": (
            topics.checkout,
            event("order.checkout", {"order_id": f"{oid}\u0000x", "lines": [line]}),
        ),
        "unknown-type": (topics.cancelled, event("order.teleported", {"order_id": oid})),
        "type-topic-mismatch": (
            topics.succeeded,
            event("order.checkout", {"order_id": oid, "lines": [line]}),
        ),
        "empty-value": (topics.failed, b""),
        "oversized": (
            topics.checkout,
            event("order.checkout", {"order_id": oid * 120_000, "lines": [line]}),
        ),
    }
    topic, value = values[kind]
    return Planned(at, topic, oid.encode(), value, (), None, kind)
