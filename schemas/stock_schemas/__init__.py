"""The executable form of CONTRACT.md: CloudEvent envelope and `data` models.

Producers (the order and payment services, tests, the benchmark) import these to
build events the worker accepts (`build_event`); consumers import them to read what
it publishes (`parse_record`, for a Kafka record in either CloudEvents mode).
JSON Schemas of the same models, for other languages: `python -m stock_schemas.jsonschema`.
"""

from stock_schemas.envelope import SPECVERSION, CloudEvent, EventType, build_event
from stock_schemas.events import (
    CONSUMED_DATA_MODELS,
    DATA_MODELS,
    PUBLISHED_DATA_MODELS,
    AnomalyRule,
    ChangeType,
    OrderCancelled,
    OrderCheckout,
    OrderLine,
    PaymentFailed,
    PaymentSucceeded,
    ReservationStatus,
    Shortage,
    StockAnomaly,
    StockChanged,
    StockLow,
    StockReorder,
    StockReplenished,
    StockReservation,
)
from stock_schemas.kafka import InvalidEvent, ParsedEvent, parse_record

__all__ = [
    "CONSUMED_DATA_MODELS",
    "DATA_MODELS",
    "PUBLISHED_DATA_MODELS",
    "SPECVERSION",
    "AnomalyRule",
    "ChangeType",
    "CloudEvent",
    "EventType",
    "InvalidEvent",
    "OrderCancelled",
    "OrderCheckout",
    "OrderLine",
    "ParsedEvent",
    "PaymentFailed",
    "PaymentSucceeded",
    "ReservationStatus",
    "Shortage",
    "StockAnomaly",
    "StockChanged",
    "StockLow",
    "StockReorder",
    "StockReplenished",
    "StockReservation",
    "build_event",
    "parse_record",
]
