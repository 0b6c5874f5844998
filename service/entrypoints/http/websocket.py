"""GET /api/inventory/ws: the live stream as a WebSocket, with the alerts when asked.

The same feed, filters, buffer and limit as the SSE stream (/api/inventory/stream),
and a token a browser can send. Every message is one JSON object:

* `{"type": "subscribed", "data": {"events", "variantIds", "productIds"}}` once the
  subscription is live: what it will get;
* `{"type": "stock.changed", "id": <CloudEvent id>, "data": {...}}`, `data` being the
  contract's data as on Kafka and as SSE sends it; the alerts (`stock.low`,
  `stock.anomaly`, `stock.replenished`, `stock.reorder`) in the same shape, only when
  `events=` names them;
* `{"type": "heartbeat"}` after `STOCK_STREAM_HEARTBEAT_SECONDS` without anything else.

Query parameters: `variantId`, `productId` (as for SSE: repeat for several; an event
matching either is sent) and `events`, a comma-separated list of `changes`, `low`,
`anomaly`, `replenished`, `reorder` (default `changes`).

With STOCK_API_READS_REQUIRE_TOKEN a token is needed, sent either as the subprotocol
`bearer.<token>` beside `stock.v1` (only `stock.v1` is echoed back, never the token),
or as the first message `{"type": "auth", "token": "..."}` within AUTH_WAIT_SECONDS.

Everything refused after the handshake is a close code and a reason, which a browser
can read (it cannot read the status of a refused handshake):

* 1001 `going away`: the process is stopping; reconnect.
* 1013 `too_many_streams`: STOCK_STREAM_MAX_CLIENTS streams (SSE and WebSocket) are
  open in this process; try again later.
* 4008 `overflow`: the client fell STOCK_STREAM_CLIENT_BUFFER events behind, or the
  feed lost Kafka: events were missed; reconnect and re-read the levels.
* 4400 `bad_request`: an unknown `events` kind; a first message that is not an auth
  message.
* 4401 `unauthorized`: no token in time, a token that is not valid, none configured.
* 4403 `forbidden`: a browser page from an origin that is neither this one nor in
  STOCK_HTTP_CORS_ORIGINS.

A query the filters refuse (over 100 ids) is refused at the handshake (HTTP 403), as
FastAPI does. Each reason starts with its name, as above.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, WebSocket
from starlette.websockets import WebSocketDisconnect

from service.adapters.change_feed import CHANGED, FeedClosed, SubscriberTooSlow, Subscription
from service.entrypoints.http.auth import token_matching
from service.entrypoints.http.services import ApiServices
from service.entrypoints.http.stream import StreamFilter, stream_filter
from service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter()

#: The subprotocol the server speaks; echoed when the client offers it.
SUBPROTOCOL = "stock.v1"
#: A subprotocol carrying the token: `bearer.<token>`.
BEARER_PREFIX = "bearer."
#: How long the first message may take when the token comes in it.
AUTH_WAIT_SECONDS = 5.0
#: How long a close frame may wait for a client that reads nothing before it is given up.
CLOSE_WAIT_SECONDS = 10.0

#: `events=` names -> the event types they stand for.
EVENT_KINDS = {
    "changes": CHANGED,
    "low": "stock.low",
    "anomaly": "stock.anomaly",
    "replenished": "stock.replenished",
    "reorder": "stock.reorder",
}

GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013
TOO_SLOW = 4008
BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403


class Refused(Exception):
    """Ends the connection with a close code and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientLeft(Exception):
    """The client closed the connection."""


@router.websocket("/ws")
async def stock_websocket(
    websocket: WebSocket,
    filters: Annotated[StreamFilter, Depends(stream_filter)],
    events: Annotated[str | None, Query()] = None,
) -> None:
    svc: ApiServices = websocket.app.state.services
    settings = svc.settings
    offered = list(websocket.scope.get("subprotocols") or [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        _check_origin(websocket, settings)
        event_types = _event_types(events, svc.feed.event_topics)
        await _authenticate(websocket, settings, offered)
        if svc.feed.subscriber_count >= settings.stream_max_clients:
            # The same cap as SSE, on the same count: one per open stream of either kind.
            raise Refused(
                TRY_AGAIN_LATER,
                "too_many_streams: this process serves as many streams as it may; try again later",
            )
    except Refused as refused:
        await _close(websocket, refused.code, refused.reason)
        return
    except ClientLeft:
        return
    subscription = svc.feed.subscribe(filters.variant_ids, filters.product_ids, event_types)
    subscribed = {
        "type": "subscribed",
        "data": {
            "events": event_types,
            "variantIds": filters.variant_ids,
            "productIds": filters.product_ids,
        },
    }
    try:
        ending = await _serve(
            websocket, subscription, subscribed, settings.stream_heartbeat_seconds
        )
    finally:
        svc.feed.unsubscribe(subscription)
    if ending is not None:
        await _close(websocket, *ending)


# ---------------------------------------------------------------- before subscribing


def _check_origin(websocket: WebSocket, settings: Settings) -> None:
    """A browser sends its page's Origin, and a WebSocket is not subject to CORS: the
    same origins as CORS allows (and the page's own) may read the stream."""
    origin = websocket.headers.get("origin")
    if origin is None:  # not a browser
        return
    allowed = settings.http_cors_origin_list
    if "*" in allowed or origin.rstrip("/") in allowed:
        return
    host = websocket.headers.get("host", "")
    if urlsplit(origin).netloc.lower() == host.lower():
        return
    raise Refused(FORBIDDEN, "forbidden: this origin is not in STOCK_HTTP_CORS_ORIGINS")


def _event_types(events: str | None, carried: dict[str, str]) -> list[str]:
    if events is None or not events.strip():
        return [CHANGED]
    known = {name: kind for name, kind in EVENT_KINDS.items() if kind in carried}
    chosen: list[str] = []
    for name in (part.strip() for part in events.split(",")):
        if name not in known:
            raise Refused(
                BAD_REQUEST,
                f"bad_request: unknown event kind {name[:20]!r}; known: {', '.join(known)}",
            )
        if known[name] not in chosen:
            chosen.append(known[name])
    return chosen


async def _authenticate(websocket: WebSocket, settings: Settings, offered: list[str]) -> None:
    """Reads are open unless STOCK_API_READS_REQUIRE_TOKEN; then the token comes in the
    subprotocols or the first message."""
    if not settings.api_reads_require_token:
        return
    presented = next(
        (p.removeprefix(BEARER_PREFIX) for p in offered if p.startswith(BEARER_PREFIX)), None
    )
    if presented is None:
        presented = await _token_message(websocket)
    accepted = settings.api_token_entries
    if not accepted:
        raise Refused(UNAUTHORIZED, "unauthorized: no API tokens are configured")
    token = token_matching(presented, accepted)
    if token is None:
        raise Refused(UNAUTHORIZED, "unauthorized: the token is not valid")
    if not token.allows("read"):  # every scope does today
        raise Refused(FORBIDDEN, f"forbidden: scope {token.scope!r} cannot read")


async def _token_message(websocket: WebSocket) -> str:
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_WAIT_SECONDS)
    except TimeoutError:
        raise Refused(
            UNAUTHORIZED,
            f"unauthorized: no token (subprotocol {BEARER_PREFIX}<token>, or a first "
            f'message {{"type":"auth","token":...}} within {AUTH_WAIT_SECONDS:g} s)',
        ) from None
    if message["type"] == "websocket.disconnect":
        raise ClientLeft
    try:
        body = json.loads(message.get("text") or message.get("bytes") or b"")
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or body.get("type") != "auth"
        or not isinstance(body.get("token"), str)
    ):
        raise Refused(
            BAD_REQUEST, 'bad_request: the first message must be {"type":"auth","token":"..."}'
        )
    token: str = body["token"]
    return token


# ---------------------------------------------------------------- subscribed


async def _serve(
    websocket: WebSocket,
    subscription: Subscription,
    subscribed: dict[str, Any],
    heartbeat_seconds: float,
) -> tuple[int, str] | None:
    """Sends until the client leaves (None) or the subscription ends: the close to send.

    The sender may be stuck on a client that reads nothing (the socket's buffer is full):
    the subscription's end is awaited beside it, so such a client is cut off at once when
    it overflows, as SSE's, instead of holding its place until it reads again."""
    sending = asyncio.create_task(
        _send_events(websocket, subscription, subscribed, heartbeat_seconds)
    )
    listening = asyncio.create_task(_until_client_leaves(websocket))
    ended = asyncio.create_task(subscription.ended.wait())
    tasks = (sending, listening, ended)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if subscription.closed:
        return GOING_AWAY, "going away: the server is stopping; reconnect"
    if subscription.overflowed:
        return TOO_SLOW, "overflow: events were missed (client too slow); reconnect and re-read"
    return None  # the client left, or a send found it gone


async def _send_events(
    websocket: WebSocket,
    subscription: Subscription,
    subscribed: dict[str, Any],
    heartbeat_seconds: float,
) -> None:
    await _send(websocket, subscribed)
    while True:
        try:
            change = await subscription.next(heartbeat_seconds)
        except (SubscriberTooSlow, FeedClosed):
            return
        if change is None:
            await _send(websocket, {"type": "heartbeat"})
        else:
            await _send(
                websocket, {"type": change.event_type, "id": change.event_id, "data": change.data}
            )


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(message, separators=(",", ":")))


async def _until_client_leaves(websocket: WebSocket) -> None:
    """Reads (and ignores) what the client sends, until it closes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """A close frame waits behind what the socket still holds: a client that reads
    nothing for CLOSE_WAIT_SECONDS is left to the server, which closes the connection."""
    try:
        await asyncio.wait_for(websocket.close(code, reason), CLOSE_WAIT_SECONDS)
    except TimeoutError:
        log.debug("a WebSocket client read nothing for %.0f s; closed", CLOSE_WAIT_SECONDS)
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass  # it went meanwhile
