"""EventWriter writes `stock.changed` and `stock.reservation` straight to JSON text
(no dict per event). That text must be the same event as the dict path gives (the one
taken while tracing is on), whatever the ids hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from stock_schemas.events import ChangeType, ReservationStatus, StockChanged, StockReservation

from service import tracing
from service.domain.model import ReservationOutcome, Shortage, StockChange
from service.outbound import EventWriter
from service.settings import Settings

TIME = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ODD = 'v "quoted" \\ back/slash é 雪 \u2028 end'


def both(build):  # type: ignore[no-untyped-def]
    text = build()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "ENABLED", True)  # the dict path (no tracer: no stamp)
        via_dict = build()
    return text, via_dict


def same_event(a, b) -> dict:  # type: ignore[no-untyped-def]
    assert (a.topic, a.key, a.headers) == (b.topic, b.key, b.headers)
    first, second = json.loads(a.value), json.loads(b.value)
    assert first.pop("id") != second.pop("id")  # each a fresh id
    assert first == second
    return first


@pytest.mark.parametrize("reference", ["o1", None, ODD])
@pytest.mark.parametrize("variant", ["v1", ODD])
def test_stock_changed_text_is_the_dict_event(variant: str, reference: str | None) -> None:
    writer = EventWriter(Settings(event_source='shop "eu"'))
    change = StockChange(
        variant, "p" + variant, ChangeType.RESERVE, 0, 2, 100, 7, 42, reference, None, None
    )
    event = same_event(*both(lambda: writer.stock_changed(change, TIME)))
    assert StockChanged.model_validate(event["data"]).variant_id == variant
    assert event["source"] == 'shop "eu"'


@pytest.mark.parametrize(
    "outcome",
    [
        ReservationOutcome("o1", ReservationStatus.RESERVED, (("v1", 2), (ODD, 1))),
        ReservationOutcome(
            ODD,
            ReservationStatus.REJECTED,
            (("v1", 5),),
            reason="insufficient_stock",
            shortages=(Shortage("v1", 5, 3),),
        ),
        ReservationOutcome("o2", ReservationStatus.RELEASED, (), reason='why "not"'),
    ],
)
def test_reservation_text_is_the_dict_event(outcome: ReservationOutcome) -> None:
    writer = EventWriter(Settings())
    event = same_event(*both(lambda: writer.reservation(outcome, TIME)))
    assert StockReservation.model_validate(event["data"]).order_id == outcome.order_id
