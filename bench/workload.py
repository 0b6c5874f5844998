"""The benchmark's scenarios and the event stream each one publishes.

Every order checks out; then about 80% pay, 15% fail payment and 5% cancel. A few
checkouts carry a short hold and never pay, so some holds expire while the run goes
on. Deterministic for a seed: the same command publishes the same events.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from stock_schemas.envelope import EventType, build_event

from service.settings import Settings

BENCH_SOURCE = "stock-bench"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    variants: int
    units_per_variant: int
    orders: int
    lines_min: int = 1
    lines_max: int = 1
    #: Worker processes in one consumer group.
    workers: int = 1
    #: Share of orders whose hold is short (expires during the run) and never pay.
    expiring_share: float = 0.01

    def scaled(self, factor: float) -> Scenario:
        """The same shape with fewer orders (and as many units per order as before)."""
        orders = max(int(self.orders * factor), 20)
        units = self.units_per_variant
        if self.variants == 1:  # keep the flash sale's 1 unit per 100 shoppers
            units = max(orders // 100, 1)
        return Scenario(
            self.name,
            self.title,
            self.variants,
            units,
            orders,
            self.lines_min,
            self.lines_max,
            self.workers,
            self.expiring_share,
        )


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "uniform", "Uniform: 10,000 variants, 1 line per order", 10_000, 1_000_000, 40_000
        ),
        Scenario(
            "flash", "Flash sale: 1 variant, 100,000 checkouts for 1,000 units", 1, 1_000, 100_000
        ),
        Scenario(
            "multiline",
            "Multi-line orders: 1 to 5 lines over 10,000 variants",
            10_000,
            1_000_000,
            20_000,
            1,
            5,
        ),
        Scenario(
            "flash-two-workers",
            "Flash sale, two worker processes: 1 variant, 50,000 checkouts for 500 units",
            1,
            500,
            50_000,
            workers=2,
        ),
        Scenario(
            "two-workers",
            "Uniform, two worker processes in one group",
            10_000,
            1_000_000,
            40_000,
            workers=2,
        ),
    )
}


@dataclass(frozen=True)
class BenchEvent:
    topic: str
    key: bytes
    value: bytes
    order_id: str
    type: str


def variant_id(index: int) -> str:
    return f"var-{index:05d}"


def build_events(
    scenario: Scenario, settings: Settings, *, seed: int = 7, run: str | None = None
) -> list[BenchEvent]:
    """Checkouts in order; each order's payment or cancellation follows a few hundred
    events later, as in a live shop (so units a failed payment frees go to later
    shoppers, which is what lets a flash sale sell out exactly)."""
    rng = random.Random(seed)
    run = run or uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    topics = {
        EventType.ORDER_CHECKOUT: settings.topic_order_checkout,
        EventType.PAYMENT_SUCCEEDED: settings.topic_payment_succeeded,
        EventType.PAYMENT_FAILED: settings.topic_payment_failed,
        EventType.ORDER_CANCELLED: settings.topic_order_cancelled,
    }
    placed: list[tuple[float, BenchEvent]] = []
    for n in range(scenario.orders):
        order_id = f"{run}-o{n}"
        count = rng.randint(scenario.lines_min, scenario.lines_max)
        picks = rng.sample(range(scenario.variants), min(count, scenario.variants))
        data: dict[str, object] = {
            "order_id": order_id,
            "lines": [{"variant_id": variant_id(v), "quantity": 1} for v in picks],
        }
        expiring = rng.random() < scenario.expiring_share
        if expiring:
            data["expires_at"] = (now + timedelta(seconds=2)).isoformat()
        placed.append((n, _event(topics, EventType.ORDER_CHECKOUT, order_id, data)))
        if expiring:
            continue
        roll = rng.random()
        if roll < 0.80:
            kind, payload = EventType.PAYMENT_SUCCEEDED, {"payment_id": f"pay-{order_id}"}
        elif roll < 0.95:
            kind, payload = EventType.PAYMENT_FAILED, {"reason": "card_declined"}
        else:
            kind, payload = EventType.ORDER_CANCELLED, {"reason": "customer"}
        later = n + rng.uniform(1, 300)
        placed.append((later, _event(topics, kind, order_id, {"order_id": order_id, **payload})))
    placed.sort(key=lambda pair: pair[0])
    return [event for _, event in placed]


def _event(
    topics: dict[EventType, str], event_type: EventType, order_id: str, data: dict[str, object]
) -> BenchEvent:
    envelope = build_event(event_type, data, source=BENCH_SOURCE)
    return BenchEvent(
        topics[event_type],
        order_id.encode(),
        json.dumps(envelope, separators=(",", ":")).encode(),
        order_id,
        event_type.value,
    )
