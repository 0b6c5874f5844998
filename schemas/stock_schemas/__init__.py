"""The executable form of CONTRACT.md: CloudEvent envelope and `data` models.

Producers (the order and payment services, tests, the benchmark) import these to
build events the worker accepts; consumers import them to read what it publishes.
"""

from stock_schemas.envelope import CloudEvent, EventType, build_event
from stock_schemas.events import (
    CONSUMED_DATA_MODELS,
    ChangeType,
    OrderCancelled,
    OrderCheckout,
    OrderLine,
    PaymentFailed,
    PaymentSucceeded,
    ReservationStatus,
    Shortage,
    StockChanged,
    StockLow,
    StockReservation,
)

__all__ = [
    "CONSUMED_DATA_MODELS",
    "ChangeType",
    "CloudEvent",
    "EventType",
    "OrderCancelled",
    "OrderCheckout",
    "OrderLine",
    "PaymentFailed",
    "PaymentSucceeded",
    "ReservationStatus",
    "Shortage",
    "StockChanged",
    "StockLow",
    "StockReservation",
    "build_event",
]
