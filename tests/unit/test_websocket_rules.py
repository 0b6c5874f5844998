"""The WebSocket's rules without a server: which events a subscription takes, which
topics the feed carries, the `events=` kinds and the origin check.

No broker: events are offered by hand, as the feed would; the origin check reads a
WebSocket built on a plain ASGI scope.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.websockets import WebSocket

from service.adapters.change_feed import (
    CHANGED,
    PublishedChange,
    Subscription,
    _parse,
    carried_topics,
)
from service.entrypoints.http.websocket import (
    BAD_REQUEST,
    EVENT_KINDS,
    FORBIDDEN,
    Refused,
    _check_origin,
    _event_types,
)
from service.settings import Settings

ALL_CARRIED = {kind: f"topic-{kind}" for kind in EVENT_KINDS.values()}


def event(event_type: str = CHANGED, variant: str = "A", product: str = "p-A") -> PublishedChange:
    return PublishedChange("e1", variant, product, {"variant_id": variant}, event_type)


# ====================================================== event types of a subscription


def test_a_subscription_that_names_no_type_takes_only_stock_changed() -> None:
    sub = Subscription(10, (), ())

    assert sub.wants(event(CHANGED))
    assert not sub.wants(event("stock.low"))
    assert not sub.wants(event("stock.anomaly"))


def test_a_subscription_takes_exactly_the_types_it_names() -> None:
    sub = Subscription(10, (), (), ("stock.low", "stock.anomaly"))

    assert sub.wants(event("stock.low"))
    assert sub.wants(event("stock.anomaly"))
    assert not sub.wants(event(CHANGED))
    assert not sub.wants(event("stock.reorder"))


def test_the_variant_and_product_filters_apply_to_alerts_too() -> None:
    sub = Subscription(10, ("A",), ("p-shoes",), (CHANGED, "stock.low"))

    assert sub.wants(event("stock.low", "A", "p-A"))
    assert sub.wants(event("stock.low", "shoe-41", "p-shoes"))
    assert not sub.wants(event("stock.low", "B", "p-B"))


def test_ended_is_set_by_an_overflow_and_by_close_only() -> None:
    reading = Subscription(1, (), ())
    reading.offer(event())
    assert not reading.ended.is_set()

    overflowing = Subscription(1, (), ())
    overflowing.offer(event())
    overflowing.offer(event())
    assert overflowing.ended.is_set() and overflowing.overflowed

    closed = Subscription(1, (), ())
    closed.close()
    assert closed.ended.is_set() and closed.closed


# ====================================================== what the feed carries


def test_the_feed_carries_the_changes_and_the_alerts_the_settings_name() -> None:
    settings = Settings()

    carried = carried_topics(settings)

    assert next(iter(carried)) == CHANGED
    assert carried[CHANGED] == settings.topic_stock_changed
    assert carried["stock.low"] == settings.topic_stock_low
    assert carried["stock.anomaly"] == settings.topic_stock_anomaly
    for kind, setting in (
        ("stock.replenished", "topic_stock_replenished"),
        ("stock.reorder", "topic_stock_reorder"),
    ):
        assert carried.get(kind) == getattr(settings, setting, None)


def test_a_type_whose_setting_does_not_exist_is_not_carried() -> None:
    older = SimpleNamespace(topic_stock_changed="c", topic_stock_low="l", topic_stock_anomaly="a")
    newer = SimpleNamespace(**vars(older), topic_stock_replenished="r", topic_stock_reorder="o")

    assert carried_topics(older) == {CHANGED: "c", "stock.low": "l", "stock.anomaly": "a"}  # type: ignore[arg-type]
    assert carried_topics(newer)["stock.replenished"] == "r"  # type: ignore[arg-type]
    assert carried_topics(newer)["stock.reorder"] == "o"  # type: ignore[arg-type]


def test_a_record_is_parsed_with_the_type_of_its_topic() -> None:
    data: dict[str, Any] = {"variant_id": "mug", "product_id": "mug", "available": 2}
    value = json.dumps({"id": "e7", "type": "stock.low", "data": data}).encode()

    parsed = _parse(value, "stock.low")

    assert parsed == PublishedChange("e7", "mug", "mug", data, "stock.low")
    assert _parse(b"not json", "stock.low") is None


# ====================================================== events=


def test_no_events_parameter_means_the_changes_alone() -> None:
    assert _event_types(None, ALL_CARRIED) == [CHANGED]
    assert _event_types(" ", ALL_CARRIED) == [CHANGED]


def test_events_names_kinds_in_order_once_each() -> None:
    chosen = _event_types("low, changes,anomaly,low", ALL_CARRIED)

    assert chosen == ["stock.low", CHANGED, "stock.anomaly"]


def test_every_kind_is_known_when_its_topic_is_carried() -> None:
    assert _event_types(",".join(EVENT_KINDS), ALL_CARRIED) == list(EVENT_KINDS.values())


@pytest.mark.parametrize("events", ["gossip", "changes,", "stock.low", "LOW"])
def test_an_unknown_kind_is_a_bad_request_naming_the_known(events: str) -> None:
    with pytest.raises(Refused) as refused:
        _event_types(events, ALL_CARRIED)

    assert refused.value.code == BAD_REQUEST
    assert refused.value.reason.startswith("bad_request: unknown event kind")
    assert refused.value.reason.endswith("known: changes, low, anomaly, replenished, reorder")
    assert len(refused.value.reason.encode()) <= 123  # a close frame's limit


def test_a_kind_whose_topic_is_not_carried_is_unknown() -> None:
    carried = {CHANGED: "c", "stock.low": "l", "stock.anomaly": "a"}

    with pytest.raises(Refused) as refused:
        _event_types("reorder", carried)

    assert refused.value.reason.endswith("known: changes, low, anomaly")


# ====================================================== origin


def websocket(headers: dict[str, str]) -> WebSocket:
    scope = {
        "type": "websocket",
        "path": "/api/inventory/ws",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "query_string": b"",
    }

    async def never() -> Any:
        raise AssertionError("not read")

    return WebSocket(scope, never, never)


def origin_allowed(headers: dict[str, str], cors: str = "") -> bool:
    try:
        _check_origin(websocket(headers), Settings(http_cors_origins=cors))
    except Refused as refused:
        assert refused.code == FORBIDDEN
        return False
    return True


def test_a_client_that_sends_no_origin_is_not_a_browser_and_is_let_in() -> None:
    assert origin_allowed({"Host": "api:8000"})


def test_a_page_of_the_same_origin_is_let_in() -> None:
    assert origin_allowed({"Host": "api.example:8000", "Origin": "http://api.example:8000"})
    assert origin_allowed({"Host": "API.example", "Origin": "https://api.example"})


def test_a_page_of_another_origin_is_refused_unless_cors_allows_it() -> None:
    page = {"Host": "api:8000", "Origin": "https://shop.example"}

    assert not origin_allowed(page)
    assert origin_allowed(page, cors="https://other.example,https://shop.example/")
    assert origin_allowed(page, cors="*")
    assert not origin_allowed(page, cors="https://other.example")
