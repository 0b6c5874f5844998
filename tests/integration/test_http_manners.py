"""HTTP manners on the real database: CORS (off by default), HEAD on the probes, 415 for
a body not sent as JSON, `release` echoing the reason sent, the access log."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.kafka import ensure_topics
from service.entrypoints.http.app import create_app
from service.entrypoints.http.server import ApiServer
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration  # test_head_on_readyz_is_200_when_ready: the broker too

TOKEN = "manners-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/api/inventory"
SHOP = "https://shop.example.com"


def client_for(engine: AsyncEngine, settings: Settings) -> httpx.AsyncClient:
    app = create_app(ApiServices.build(settings, engine))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stock")


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(TOKEN)})


@pytest.fixture
async def http(engine: AsyncEngine, api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, api_settings) as client:
        yield client


@pytest.fixture
async def cors_http(
    engine: AsyncEngine, api_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    settings = api_settings.model_copy(
        update={"http_cors_origins": f"{SHOP}, https://admin.example.com/"}
    )
    async with client_for(engine, settings) as client:
        yield client


@pytest.fixture
async def stocked(engine: AsyncEngine, api_settings: Settings) -> Scenario:
    s = Scenario(engine, api_settings)
    await s.restock(("shirt-m", 10))
    return s


def preflight(method: str = "POST", headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "Origin": SHOP,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code
    return body


async def requests_counted(client: httpx.AsyncClient, route: str, status: int) -> float:
    """stock_http_requests_total of OPTIONS requests on `route` with `status`."""
    text = (await client.get("/metrics")).text
    pattern = (
        rf'stock_http_requests_total\{{method="OPTIONS",route="{re.escape(route)}",'
        rf'status="{status}"\}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------- CORS


async def test_cors_is_off_by_default(http) -> None:
    answer = await http.options(f"{API}/reserve", headers=preflight())
    assert_error(answer, 405, "method_not_allowed")
    assert "access-control-allow-origin" not in answer.headers
    plain = await http.get("/healthz", headers={"Origin": SHOP})
    assert "access-control-allow-origin" not in plain.headers


async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(
    cors_http, stocked
) -> None:
    answered_before = await requests_counted(cors_http, "preflight", 200)
    refused_before = await requests_counted(cors_http, "preflight", 400)
    answer = await cors_http.options(
        f"{API}/restock", headers=preflight("POST", "authorization, content-type, idempotency-key")
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == SHOP
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    methods = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "HEAD", "POST", "PUT"} <= methods
    assert "access-control-allow-credentials" not in answer.headers  # tokens, not cookies
    assert "Origin" in answer.headers["vary"]
    # The adjust endpoint is a PUT: allowed too.
    assert (await cors_http.options(f"{API}/adjust", headers=preflight("PUT"))).status_code == 200

    # The request itself carries the CORS headers, also when it is an error.
    done = await cors_http.post(
        f"{API}/restock",
        json={"updates": [{"variantId": "shirt-m", "quantity": 1}]},
        headers={**AUTH, "Origin": SHOP},
    )
    assert done.status_code == 200, done.text
    assert done.headers["access-control-allow-origin"] == SHOP
    assert done.headers["access-control-expose-headers"] == "Retry-After"
    refused = await cors_http.post(
        f"{API}/restock", json={"updates": []}, headers={"Origin": SHOP}
    )
    assert_error(refused, 401, "unauthorized")
    assert refused.headers["access-control-allow-origin"] == SHOP
    too_large = await cors_http.post(
        f"{API}/restock",
        content=b"x" * (2 * 1024 * 1024),
        headers={**AUTH, "Origin": SHOP, "Content-Type": "application/json"},
    )
    assert_error(too_large, 413, "payload_too_large")
    assert too_large.headers["access-control-allow-origin"] == SHOP

    # Both preflights counted as answered (200) under their own label, not as errors.
    assert await requests_counted(cors_http, "preflight", 200) == answered_before + 2
    assert await requests_counted(cors_http, "preflight", 400) == refused_before


async def test_a_preflight_from_another_origin_is_refused_in_the_error_shape(cors_http) -> None:
    answer = await cors_http.options(
        f"{API}/reserve", headers={**preflight(), "Origin": "https://evil.example.com"}
    )
    body = assert_error(answer, 400, "cors_refused")
    assert body["details"] == {"refused": ["origin"]}
    assert "access-control-allow-origin" not in answer.headers
    # A header the API does not take is refused as well.
    odd = await cors_http.options(f"{API}/reserve", headers=preflight("POST", "x-debug"))
    assert assert_error(odd, 400, "cors_refused")["details"] == {"refused": ["headers"]}
    # A simple request from that origin is answered, but without the header a browser
    # needs to let the page read it.
    plain = await cors_http.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers


async def test_an_origin_configured_with_a_trailing_slash_still_matches(cors_http) -> None:
    admin = "https://admin.example.com"
    answer = await cors_http.options(f"{API}/reserve", headers={**preflight(), "Origin": admin})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == admin


async def test_a_wildcard_allows_any_origin(engine, api_settings) -> None:
    settings = api_settings.model_copy(update={"http_cors_origins": "*"})
    async with client_for(engine, settings) as client:
        answer = await client.options(
            f"{API}/reserve", headers={**preflight(), "Origin": "https://any.example.org"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == "*"


# ------------------------------------------------------------------- HEAD


@pytest.fixture
async def live(engine: AsyncEngine, api_settings: Settings) -> AsyncIterator[str]:
    """The app on a real port: HEAD's "no body" is the server's part."""
    server = ApiServer(create_app(ApiServices.build(api_settings, engine)), "127.0.0.1", 0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def test_head_on_the_probes_answers_like_get_without_a_body(live) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=30) as client:
        get = await client.get("/healthz")
        head = await client.head("/healthz")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == get.headers["content-length"]
        # No broker behind these settings: not ready, 503 like GET.
        assert (await client.get("/readyz")).status_code == 503
        head = await client.head("/readyz")
        assert (head.status_code, head.content) == (503, b"")
        # HEAD is not advertised as a second operation in the OpenAPI document.
        operations = (await client.get("/openapi.json")).json()["paths"]["/healthz"]
        assert set(operations) == {"get"}


async def test_head_on_readyz_is_200_when_ready(engine, kafka_settings) -> None:
    await ensure_topics(kafka_settings)
    services = ApiServices.build(kafka_settings, engine)
    await services.feed.start()  # the broker check goes through the feed's connection
    server = ApiServer(create_app(services), "127.0.0.1", 0)
    await server.start()
    try:
        await asyncio.wait_for(services.feed.tailing.wait(), 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            head = await client.head("/readyz")
            assert (head.status_code, head.content) == (200, b""), head.text
    finally:
        await server.stop()
        await services.feed.stop()


# --------------------------------------------------------------- 415


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {}, {"Content-Type": "application/x-www-form-urlencoded"}],
    ids=["text_plain", "none", "form"],
)
async def test_a_json_body_with_the_wrong_content_type_is_415(http, stocked, headers) -> None:
    body = b'{"reservations":[{"reservationId":"o1","variantId":"shirt-m","quantity":1}]}'
    answer = await http.post(f"{API}/reserve", content=body, headers={**AUTH, **headers})
    assert "application/json" in assert_error(answer, 415, "unsupported_media_type")["message"]
    adjust = await http.put(
        f"{API}/adjust",
        content=b'{"updates":[{"variantId":"shirt-m","quantity":1,"reason":"count"}]}',
        headers={**AUTH, **headers},
    )
    assert_error(adjust, 415, "unsupported_media_type")
    assert await stocked.stock("shirt-m") == (10, 0)  # nothing applied


async def test_json_media_types_are_accepted_and_an_empty_body_is_still_422(
    http, stocked
) -> None:
    body = b'{"reservations":[{"reservationId":"o1","variantId":"shirt-m","quantity":1}]}'
    for content_type in ("application/json; charset=utf-8", "application/vnd.shop+json"):
        answer = await http.post(
            f"{API}/reserve", content=body, headers={**AUTH, "Content-Type": content_type}
        )
        assert answer.status_code == 200, answer.text
    assert_error(await http.post(f"{API}/reserve", headers=AUTH), 422, "validation_failed")
    # No token: 401 first, whatever the body.
    assert_error(
        await http.post(f"{API}/reserve", content=body, headers={"Content-Type": "text/plain"}),
        401,
        "unauthorized",
    )


async def test_the_openapi_document_lists_415_for_writes_only(http) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert "415" in paths[f"{API}/reserve"]["post"]["responses"]
    assert "415" in paths[f"{API}/adjust"]["put"]["responses"]
    assert "415" not in paths[f"{API}/check/{{variantId}}"]["get"]["responses"]


# ---------------------------------------------------------- release echo


async def test_release_and_confirm_sale_echo_the_reason_sent(http, stocked) -> None:
    await http.post(
        f"{API}/reserve",
        json={
            "reservations": [
                {"reservationId": "o1", "variantId": "shirt-m", "quantity": 1},
                {"reservationId": "o2", "variantId": "shirt-m", "quantity": 1},
            ]
        },
        headers=AUTH,
    )
    released = await http.post(
        f"{API}/release",
        json={"updates": [{"reservationId": "o1", "reason": "cart abandoned"}]},
        headers=AUTH,
    )
    assert released.status_code == 200, released.text
    [order] = released.json()["reservations"]
    assert (order["status"], order["reason"], order["note"]) == (
        "RELEASED",
        "released",
        "cart abandoned",
    )
    # Without a reason, nothing to echo.
    again = await http.post(
        f"{API}/release", json={"updates": [{"reservationId": "o1"}]}, headers=AUTH
    )
    assert again.json()["reservations"][0]["note"] is None
    sold = await http.post(
        f"{API}/confirm-sale",
        json={"updates": [{"reservationId": "o2", "reason": "Order #12345"}]},
        headers=AUTH,
    )
    [order] = sold.json()["reservations"]
    assert (order["status"], order["note"]) == ("CONFIRMED", "Order #12345")


# ------------------------------------------------------------ access log


async def test_one_access_log_line_per_request_with_the_route_template(
    http, stocked, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="stock.access"):
        await http.get(f"{API}/check/shirt-m?quantity=2")
        await http.post(f"{API}/reserve", json={"reservations": []}, headers=AUTH)
        await http.get("/nowhere/shirt-m")
    lines = [r for r in caplog.records if r.name == "stock.access"]
    assert [(r.method, r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", f"{API}/check/{{variantId}}", 200),
        ("POST", f"{API}/reserve", 422),
        ("GET", "unmatched", 404),
    ]
    for record in lines:
        assert record.levelno == logging.INFO
        assert isinstance(record.duration_ms, float)  # type: ignore[attr-defined]
        assert "shirt-m" not in record.getMessage()  # never the raw URL
    assert lines[0].getMessage().startswith(f"GET {API}/check/{{variantId}} 200 ")
    assert lines[0].getMessage().endswith(" ms")


async def test_the_access_log_can_be_turned_off(engine, api_settings, caplog) -> None:
    settings = api_settings.model_copy(update={"http_access_log": False})
    async with client_for(engine, settings) as client:
        with caplog.at_level(logging.INFO, logger="stock.access"):
            assert (await client.get("/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.name == "stock.access"]
