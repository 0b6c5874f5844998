"""GET /api/inventory/stream: `stock.changed` as Server-Sent Events, as it is published.

Each event is `event: stock.changed`, `id: <CloudEvent id>`, and `data:` the
contract's `stock.changed` data (the same JSON as on Kafka). Comments keep idle
connections open through proxies. A client that falls `STOCK_STREAM_CLIENT_BUFFER`
changes behind gets `event: overflow` and is disconnected; it reconnects and
re-reads the levels it shows (its `version`s say what is current).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from service.adapters.change_feed import FeedClosed, SubscriberTooSlow, Subscription
from service.entrypoints.http.auth import require_read_token
from service.entrypoints.http.errors import TooManyStreams
from service.entrypoints.http.inventory import OPTIONAL_BEARER
from service.entrypoints.http.services import ApiServices, services

router = APIRouter(dependencies=[Depends(require_read_token)])

Ids = Annotated[list[str], Query(max_length=100)]


@dataclass(frozen=True)
class StreamFilter:
    """Which variants a live stream (SSE or WebSocket) wants; none named: every one.
    `Subscription.wants` applies it."""

    variant_ids: list[str]
    product_ids: list[str]


def stream_filter(
    variant_id: Annotated[Ids, Query(alias="variantId")] = [],  # noqa: B006
    product_id: Annotated[Ids, Query(alias="productId")] = [],  # noqa: B006
) -> StreamFilter:
    """The filter query parameters, the same for /stream and /ws."""
    return StreamFilter(variant_id, product_id)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
    openapi_extra=OPTIONAL_BEARER,
)
async def stream_stock_changes(
    svc: Annotated[ApiServices, Depends(services)],
    filters: Annotated[StreamFilter, Depends(stream_filter)],
) -> StreamingResponse:
    """Live `stock.changed` events, optionally only for some variants or products
    (repeat `variantId` / `productId` for several; a change matching either is sent)."""
    if svc.feed.subscriber_count >= svc.settings.stream_max_clients:
        # Each stream holds a connection until its client goes: cap them, so clients
        # that never read cannot exhaust the process's file descriptors.
        raise TooManyStreams
    subscription = svc.feed.subscribe(filters.variant_ids, filters.product_ids)
    return StreamingResponse(
        _events(svc, subscription),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(svc: ApiServices, subscription: Subscription) -> AsyncIterator[str]:
    try:
        yield ": stock.changed stream open\n\n"
        while True:
            try:
                change = await subscription.next(svc.settings.stream_heartbeat_seconds)
            except SubscriberTooSlow:
                yield 'event: overflow\ndata: {"reason": "client too slow; reconnect"}\n\n'
                return
            except FeedClosed:
                return
            if change is None:
                yield ": keepalive\n\n"
                continue
            yield (
                f"event: stock.changed\nid: {change.event_id}\n"
                f"data: {json.dumps(change.data, separators=(',', ':'))}\n\n"
            )
    finally:
        svc.feed.unsubscribe(subscription)
