"""The /api/inventory endpoints on the real database, through the real ASGI app.

Each request goes through FastAPI's validation, auth and error handling into the
same transaction path as consumed events; expectations are read back with plain SQL
(`Scenario`) and the invariant checker, not with the service's own queries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import create_engine
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.proxy import CuttableProxy
from tests.support.records import paid as payment_succeeded
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/api/inventory"


def client_for(engine: AsyncEngine, settings: Settings) -> httpx.AsyncClient:
    app = create_app(ApiServices.build(settings, engine))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stock")


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(f"{TOKEN}, other-token")})


@pytest.fixture
async def http(engine: AsyncEngine, api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, api_settings) as client:
        yield client


@pytest.fixture
async def stocked(engine: AsyncEngine, api_settings: Settings) -> Scenario:
    s = Scenario(engine, api_settings)
    await s.restock(("shirt-m", 10), ("shirt-l", 3), ("poster", 1))
    return s


def reservation(
    reservation_id: str, variant_id: str, quantity: int, **extra: Any
) -> dict[str, Any]:
    return {"reservationId": reservation_id, "variantId": variant_id, "quantity": quantity, **extra}


async def reserve(http: httpx.AsyncClient, *lines: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{API}/reserve", json={"reservations": list(lines)}, headers=AUTH)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) == {"code", "message", "details"}
    return body


# ------------------------------------------------------------------ check


async def test_check_says_whether_a_quantity_is_available(http, stocked) -> None:
    answer = await http.get(f"{API}/check/shirt-l", params={"quantity": 3})
    assert answer.status_code == 200
    assert answer.json() == {
        "available": True,
        "variantId": "shirt-l",
        "requestedQuantity": 3,
        "availableQuantity": 3,
        "version": 1,
    }
    too_many = (await http.get(f"{API}/check/shirt-l", params={"quantity": 4})).json()
    assert (too_many["available"], too_many["availableQuantity"]) == (False, 3)
    assert (await http.get(f"{API}/check/shirt-l")).json()["requestedQuantity"] == 1


async def test_check_of_an_unknown_variant_is_404_and_bad_quantity_422(http, stocked) -> None:
    body = assert_error(await http.get(f"{API}/check/ghost"), 404, "unknown_variant")
    assert body["details"] == {"variantIds": ["ghost"]}
    assert_error(await http.get(f"{API}/check/shirt-m?quantity=0"), 422, "validation_failed")
    assert_error(await http.get(f"{API}/check/shirt-m?quantity=two"), 422, "validation_failed")


# ---------------------------------------------------------------- reserve


async def test_reserve_holds_stock_and_publishes_like_a_checkout(http, stocked) -> None:
    expires = (datetime.now(UTC) + timedelta(minutes=30)).replace(microsecond=0)
    answer = await reserve(
        http,
        reservation("checkout-456", "shirt-m", 2, expiresAt=expires.isoformat()),
        reservation("checkout-456", "shirt-l", 1),
    )
    assert answer.status_code == 200, answer.text
    [held] = answer.json()["reservations"]
    assert held["reservationId"] == "checkout-456"
    assert held["status"] == "RESERVED"
    assert datetime.fromisoformat(held["expiresAt"]) == expires
    assert held["lines"] == [
        {"variantId": "shirt-m", "quantity": 2},
        {"variantId": "shirt-l", "quantity": 1},
    ]
    assert await stocked.stock("shirt-m") == (10, 2)
    assert await stocked.stock("shirt-l") == (3, 1)
    assert await stocked.phase("checkout-456") == "RESERVED"
    assert await stocked.statuses("checkout-456") == ["RESERVED"]
    assert await stocked.change_types("shirt-m") == ["RESTOCK", "RESERVE"]
    [audit] = [row for row in await stocked.audit("shirt-m") if row.change_type == "RESERVE"]
    assert audit.source_event_source == "stock-api"
    assert await invariant_violations(stocked.engine) == []


async def test_reserve_without_expiry_gets_the_configured_hold(http, stocked, api_settings) -> None:
    before = datetime.now(UTC)
    [held] = (await reserve(http, reservation("o1", "shirt-m", 1))).json()["reservations"]
    expires = datetime.fromisoformat(held["expiresAt"])
    hold = timedelta(seconds=api_settings.reservation_ttl_seconds)
    assert before + hold <= expires <= datetime.now(UTC) + hold


async def test_reserve_is_idempotent_on_the_reservation_id(http, stocked) -> None:
    first = await reserve(http, reservation("o1", "shirt-m", 2))
    again = await reserve(http, reservation("o1", "shirt-m", 2))
    assert again.status_code == 200
    assert again.json() == first.json()
    assert await stocked.stock("shirt-m") == (10, 2)
    assert await stocked.statuses("o1") == ["RESERVED"]
    changed = assert_error(
        await reserve(http, reservation("o1", "shirt-m", 3)), 409, "reservation_mismatch"
    )
    assert changed["details"] == {
        "reservations": [
            {"reservationId": "o1", "lines": [{"variantId": "shirt-m", "quantity": 2}]}
        ]
    }


async def test_a_request_short_anywhere_reserves_nothing_and_names_every_shortage(
    http, stocked
) -> None:
    outbox_before = await stocked.outbox_count()
    answer = await reserve(
        http,
        reservation("o1", "shirt-m", 2),  # fits
        reservation("o2", "poster", 2),  # short by one
        reservation("o3", "shirt-l", 4),  # short by one
    )
    body = assert_error(answer, 409, "insufficient_stock")
    assert body["details"] == {
        "shortages": [
            {"variantId": "poster", "requested": 2, "available": 1},
            {"variantId": "shirt-l", "requested": 4, "available": 3},
        ]
    }
    assert await stocked.stock("shirt-m") == (10, 0)
    assert await stocked.phases() == {}
    assert await stocked.outbox_count() == outbox_before


async def test_reservations_that_fit_alone_but_not_together_are_refused(http, stocked) -> None:
    body = assert_error(
        await reserve(http, reservation("o1", "shirt-l", 2), reservation("o2", "shirt-l", 2)),
        409,
        "insufficient_stock",
    )
    assert body["details"]["shortages"] == [
        {"variantId": "shirt-l", "requested": 4, "available": 3}
    ]


async def test_reserve_of_unknown_variants_is_404_naming_them_all(http, stocked) -> None:
    body = assert_error(
        await reserve(
            http,
            reservation("o1", "ghost-1", 1),
            reservation("o1", "shirt-m", 1),
            reservation("o2", "ghost-2", 1),
        ),
        404,
        "unknown_variant",
    )
    assert body["details"] == {"variantIds": ["ghost-1", "ghost-2"]}
    assert await stocked.phases() == {}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"variantId": "shirt-m", "quantity": 0, "reservationId": "o1"}, "greater than 0"),
        ({"variantId": "shirt-m", "quantity": 1.5, "reservationId": "o1"}, "integer"),
        ({"variantId": "shirt-m", "quantity": "2", "reservationId": "o1"}, "integer"),
        ({"variantId": "", "quantity": 1, "reservationId": "o1"}, "at least 1"),
        ({"variantId": "shirt-m", "quantity": 1}, "Field required"),
        ({"variantId": "shirt-m", "quantity": 1, "reservationID": "o1"}, "Field required"),
        (
            {
                "variantId": "shirt-m",
                "quantity": 1,
                "reservationId": "o1",
                "expiresAt": "2030-01-01T00:00:00",
            },
            "timezone",
        ),
        ({"variantId": "x\u0000y", "quantity": 1, "reservationId": "o1"}, "control characters"),
    ],
)
async def test_invalid_reservations_are_422_and_change_nothing(
    http, stocked, line, problem
) -> None:
    body = assert_error(await reserve(http, line), 422, "validation_failed")
    assert problem in body["message"] or any(problem in d["message"] for d in body["details"])
    assert await stocked.phases() == {}


async def test_an_expiry_in_the_past_is_refused(http, stocked) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_error(
        await reserve(http, reservation("o1", "shirt-m", 1, expiresAt=past)), 422, "invalid_expiry"
    )


async def test_empty_and_malformed_bodies_are_422(http, stocked) -> None:
    assert_error(
        await http.post(f"{API}/reserve", json={"reservations": []}, headers=AUTH),
        422,
        "validation_failed",
    )
    assert_error(
        await http.post(
            f"{API}/reserve",
            content=b'{"reservations": [',
            headers={**AUTH, "content-type": "application/json"},
        ),
        422,
        "validation_failed",
    )


# ----------------------------------------------------- confirm and release


async def test_confirm_sale_sells_the_reservation(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 2), reservation("o1", "shirt-l", 1))
    answer = await http.post(
        f"{API}/confirm-sale",
        json={
            "updates": [
                {
                    "reservationId": "o1",
                    "variantId": "shirt-m",
                    "quantity": 2,
                    "reason": "Order #12345",
                }
            ]
        },
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["reservations"][0]["status"] == "CONFIRMED"
    assert await stocked.stock("shirt-m") == (8, 0)
    assert await stocked.stock("shirt-l") == (2, 0)
    assert await stocked.statuses("o1") == ["RESERVED", "CONFIRMED"]
    # A retry answers the same, and sells nothing twice.
    again = await http.post(
        f"{API}/confirm-sale", json={"updates": [{"reservationId": "o1"}]}, headers=AUTH
    )
    assert again.json()["reservations"][0]["status"] == "CONFIRMED"
    assert await stocked.stock("shirt-m") == (8, 0)
    assert await invariant_violations(stocked.engine) == []


async def test_confirm_sale_errors(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 2))
    unknown = assert_error(
        await http.post(
            f"{API}/confirm-sale",
            json={"updates": [{"reservationId": "o1"}, {"reservationId": "nobody"}]},
            headers=AUTH,
        ),
        404,
        "unknown_reservation",
    )
    assert unknown["details"] == {"reservationIds": ["nobody"]}
    assert_error(
        await http.post(
            f"{API}/confirm-sale",
            json={"updates": [{"reservationId": "o1", "variantId": "shirt-m", "quantity": 3}]},
            headers=AUTH,
        ),
        409,
        "reservation_mismatch",
    )
    assert await stocked.stock("shirt-m") == (10, 2)  # nothing sold by the refused requests


async def test_release_gives_the_hold_back_and_refuses_sold_stock(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 2), reservation("o2", "shirt-l", 1))
    released = await http.post(
        f"{API}/release",
        json={"updates": [{"reservationId": "o1", "reason": "cart abandoned"}]},
        headers=AUTH,
    )
    assert released.status_code == 200, released.text
    [order] = released.json()["reservations"]
    assert (order["status"], order["reason"]) == ("RELEASED", "released")
    assert await stocked.stock("shirt-m") == (10, 0)
    [row] = [r for r in await stocked.audit("shirt-m") if r.change_type == "RELEASE"]
    assert row.reason == "cart abandoned"
    # Releasing again holds nothing and changes nothing.
    again = await http.post(
        f"{API}/release", json={"updates": [{"reservationId": "o1"}]}, headers=AUTH
    )
    assert again.json()["reservations"][0]["status"] == "RELEASED"
    assert await stocked.change_types("shirt-m") == ["RESTOCK", "RESERVE", "RELEASE"]
    # Sold stock goes back through a cancellation, not a release.
    await http.post(
        f"{API}/confirm-sale", json={"updates": [{"reservationId": "o2"}]}, headers=AUTH
    )
    body = assert_error(
        await http.post(
            f"{API}/release", json={"updates": [{"reservationId": "o2"}]}, headers=AUTH
        ),
        409,
        "reservation_closed",
    )
    assert body["details"] == {"reservations": [{"reservationId": "o2", "status": "CONFIRMED"}]}


async def test_a_reservation_made_over_http_is_confirmed_by_a_kafka_payment(http, stocked) -> None:
    """The reservation id is the contract's order id: both entrypoints share the orders."""
    await reserve(http, reservation("order-77", "shirt-m", 3))
    await stocked.deliver(payment_succeeded("order-77"))
    assert await stocked.phase("order-77") == "CONFIRMED"
    assert await stocked.stock("shirt-m") == (7, 0)
    # ... and answering over HTTP shows it.
    again = await reserve(http, reservation("order-77", "shirt-m", 3))
    assert again.json()["reservations"][0]["status"] == "CONFIRMED"
    assert await invariant_violations(stocked.engine) == []


async def test_a_payment_that_came_first_over_kafka_confirms_the_http_reservation(
    http, stocked
) -> None:
    await stocked.deliver(payment_succeeded("order-78"))
    answer = await reserve(http, reservation("order-78", "shirt-m", 1))
    assert answer.json()["reservations"][0]["status"] == "CONFIRMED"
    assert await stocked.stock("shirt-m") == (9, 0)


# --------------------------------------------------------- restock, adjust


async def test_restock_and_adjust(http, stocked) -> None:
    answer = await http.post(
        f"{API}/restock",
        json={"updates": [{"variantId": "shirt-m", "quantity": 50, "reason": "New shipment"}]},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "changes": [
            {
                "variantId": "shirt-m",
                "productId": "p-shirt-m",
                "changeType": "RESTOCK",
                "deltaOnHand": 50,
                "deltaReserved": 0,
                "onHand": 60,
                "reserved": 0,
                "available": 60,
                "version": 2,
                "reason": "New shipment",
                "reference": None,
            }
        ]
    }
    counted = await http.put(
        f"{API}/adjust",
        json={"updates": [{"variantId": "shirt-m", "quantity": 25, "reason": "count"}]},
        headers=AUTH,
    )
    [change] = counted.json()["changes"]
    assert (change["changeType"], change["deltaOnHand"], change["onHand"]) == (
        "ADJUSTMENT",
        -35,
        25,
    )
    assert await stocked.stock("shirt-m") == (25, 0)
    published = [c["change_type"] for c in await stocked.changes("shirt-m")]
    assert published == ["RESTOCK", "RESTOCK", "ADJUSTMENT"]


async def test_restock_creates_a_variant_only_with_a_product(http, stocked) -> None:
    body = assert_error(
        await http.post(
            f"{API}/restock",
            json={"updates": [{"variantId": "new-v", "quantity": 5}]},
            headers=AUTH,
        ),
        404,
        "unknown_variant",
    )
    assert body["details"] == {"variantIds": ["new-v"]}
    created = await http.post(
        f"{API}/restock",
        json={"updates": [{"variantId": "new-v", "quantity": 5, "productId": "new-p"}]},
        headers=AUTH,
    )
    assert created.json()["changes"][0]["productId"] == "new-p"
    assert await stocked.stock("new-v") == (5, 0)


async def test_restock_with_an_idempotency_key_applies_once(http, stocked) -> None:
    body = {
        "updates": [
            {"variantId": "shirt-m", "quantity": 5},
            {"variantId": "shirt-l", "quantity": 1},
        ]
    }
    headers = {**AUTH, "Idempotency-Key": "delivery-4711"}
    first = await http.post(f"{API}/restock", json=body, headers=headers)
    second = await http.post(f"{API}/restock", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert await stocked.stock("shirt-m") == (15, 0)
    assert await stocked.stock("shirt-l") == (4, 0)
    # Without the key, a repeat is a second delivery.
    await http.post(f"{API}/restock", json=body, headers=AUTH)
    assert await stocked.stock("shirt-m") == (20, 0)


async def test_adjust_errors_change_nothing(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 6))
    before = await stocked.outbox_count()
    below = assert_error(
        await http.put(
            f"{API}/adjust",
            json={
                "updates": [
                    {"variantId": "shirt-l", "quantity": 0, "reason": "count"},
                    {"variantId": "shirt-m", "quantity": 5, "reason": "count"},
                ]
            },
            headers=AUTH,
        ),
        409,
        "count_below_reserved",
    )
    assert below["details"] == {"variantId": "shirt-m", "counted": 5, "reserved": 6}
    assert await stocked.stock("shirt-l") == (3, 0)  # all or nothing: not even the good line
    assert_error(
        await http.put(
            f"{API}/adjust",
            json={"updates": [{"variantId": "shirt-m", "quantity": 5}]},
            headers=AUTH,
        ),
        422,
        "validation_failed",
    )  # a count needs a reason
    assert_error(
        await http.put(
            f"{API}/adjust",
            json={"updates": [{"variantId": "ghost", "quantity": 5, "reason": "count"}]},
            headers=AUTH,
        ),
        404,
        "unknown_variant",
    )
    assert await stocked.outbox_count() == before


# ------------------------------------------------------------------ reads


async def test_low_stock_lists_least_available_first_and_pages(http, stocked) -> None:
    default = (await http.get(f"{API}/alerts/low-stock")).json()
    assert default["threshold"] is None
    assert [v["variantId"] for v in default["variants"]] == ["poster", "shirt-l"]
    assert all(v["isLow"] for v in default["variants"])
    first = (await http.get(f"{API}/alerts/low-stock", params={"threshold": 10, "limit": 2})).json()
    assert [v["variantId"] for v in first["variants"]] == ["poster", "shirt-l"]
    assert first["nextCursor"]
    rest = (
        await http.get(
            f"{API}/alerts/low-stock",
            params={"threshold": 10, "limit": 2, "cursor": first["nextCursor"]},
        )
    ).json()
    assert [v["variantId"] for v in rest["variants"]] == ["shirt-m"]
    assert rest["nextCursor"] is None
    assert_error(
        await http.get(f"{API}/alerts/low-stock", params={"cursor": "garbage"}),
        422,
        "invalid_cursor",
    )
    assert_error(
        await http.get(f"{API}/alerts/low-stock", params={"threshold": -1}),
        422,
        "validation_failed",
    )


async def test_product_report_totals_its_variants(http, stocked) -> None:
    await stocked.admin.restock("tee-s", 4, product_id="tee")
    await stocked.admin.restock("tee-m", 20, product_id="tee")
    await reserve(http, reservation("o1", "tee-m", 5))
    report = (await http.get(f"{API}/product/tee")).json()
    assert {k: v for k, v in report.items() if k != "variants"} == {
        "productId": "tee",
        "totalOnHand": 24,
        "totalReserved": 5,
        "totalAvailable": 19,
        "lowStockCount": 1,
        "variantCount": 2,
    }
    assert [(v["variantId"], v["available"], v["isLow"]) for v in report["variants"]] == [
        ("tee-m", 15, False),
        ("tee-s", 4, True),
    ]
    assert_error(await http.get(f"{API}/product/nothing"), 404, "unknown_product")


async def test_logs_are_newest_first_and_page_with_a_cursor(http, stocked) -> None:
    for n in range(5):
        await http.post(
            f"{API}/restock",
            json={"updates": [{"variantId": "poster", "quantity": 1, "reason": f"box {n}"}]},
            headers=AUTH,
        )
    first = (await http.get(f"{API}/logs/poster", params={"limit": 4})).json()
    assert [e["version"] for e in first["entries"]] == [6, 5, 4, 3]
    assert first["entries"][0]["reason"] == "box 4"
    assert first["entries"][0]["changeType"] == "RESTOCK"
    assert first["entries"][0]["source"] == "stock-api"
    rest = (
        await http.get(f"{API}/logs/poster", params={"limit": 4, "cursor": first["nextCursor"]})
    ).json()
    assert [e["version"] for e in rest["entries"]] == [2, 1]
    assert rest["nextCursor"] is None
    assert_error(await http.get(f"{API}/logs/ghost"), 404, "unknown_variant")
    assert_error(await http.get(f"{API}/logs/poster?limit=0"), 422, "validation_failed")
    assert_error(await http.get(f"{API}/logs/poster?limit=5000"), 422, "validation_failed")


# ------------------------------------------------------------------- auth


WRITES = [
    ("POST", "/reserve", {"reservations": [reservation("o1", "shirt-m", 1)]}),
    ("POST", "/confirm-sale", {"updates": [{"reservationId": "o1"}]}),
    ("POST", "/release", {"updates": [{"reservationId": "o1"}]}),
    ("POST", "/restock", {"updates": [{"variantId": "shirt-m", "quantity": 1}]}),
    ("PUT", "/adjust", {"updates": [{"variantId": "shirt-m", "quantity": 1, "reason": "c"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
async def test_a_write_without_a_valid_token_is_401_and_changes_nothing(
    http, stocked, method, path, body, headers
) -> None:
    answer = await http.request(method, f"{API}{path}", json=body, headers=headers)
    assert_error(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"] == "Bearer"
    assert await stocked.stock("shirt-m") == (10, 0)
    assert await stocked.phases() == {}


async def test_every_configured_token_is_accepted(http, stocked) -> None:
    answer = await http.post(
        f"{API}/restock",
        json={"updates": [{"variantId": "shirt-m", "quantity": 1}]},
        headers={"Authorization": "Bearer other-token"},
    )
    assert answer.status_code == 200


async def test_with_no_tokens_configured_every_write_is_refused(engine, settings, stocked) -> None:
    async with client_for(engine, settings) as http:
        answer = await http.post(
            f"{API}/restock",
            json={"updates": [{"variantId": "shirt-m", "quantity": 1}]},
            headers={"Authorization": "Bearer anything"},
        )
    body = assert_error(answer, 401, "unauthorized")
    assert "STOCK_API_TOKENS" in body["message"]


async def test_reads_are_open_unless_configured_otherwise(engine, api_settings, stocked) -> None:
    closed = api_settings.model_copy(update={"api_reads_require_token": True})
    async with client_for(engine, closed) as http:
        for path in (
            "/check/shirt-m",
            "/alerts/low-stock",
            "/product/shirt-m",
            "/logs/shirt-m",
            "/stream",
        ):
            assert_error(await http.get(f"{API}{path}"), 401, "unauthorized")
        assert (await http.get(f"{API}/check/shirt-m", headers=AUTH)).status_code == 200
        # Operator endpoints stay open (they are meant for probes and scrapers).
        assert (await http.get("/healthz")).status_code == 200


# ----------------------------------------------------------- ops and docs


async def test_healthz_and_readyz_without_a_broker(http, stocked, api_settings) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    answer = await http.get("/readyz")
    body = assert_error(answer, 503, "not_ready")  # the change feed never reached a broker
    assert body["message"] == "not ready: broker"
    checks = body["details"]["checks"]
    assert checks["database"] == {"ok": True}
    assert checks["schema"] == {"ok": True}
    assert checks["broker"]["ok"] is False
    # Nothing secret or internal in it.
    assert api_settings.database_url not in answer.text
    assert TOKEN not in answer.text


async def test_metrics_show_http_requests_and_database_figures(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 1))
    text = (await http.get("/metrics")).text
    assert (
        'stock_http_requests_total{method="POST",route="/api/inventory/reserve",status="200"}'
        in text
    )
    assert 'stock_reservations{status="RESERVED"} 1.0' in text
    assert "stock_outbox_backlog " in text


async def test_openapi_and_asyncapi_are_served(http, api_settings) -> None:
    openapi = (await http.get("/openapi.json")).json()
    paths = set(openapi["paths"])
    assert {
        f"{API}/check/{{variantId}}",
        f"{API}/reserve",
        f"{API}/confirm-sale",
        f"{API}/release",
        f"{API}/restock",
        f"{API}/adjust",
        f"{API}/alerts/low-stock",
        f"{API}/product/{{productId}}",
        f"{API}/logs/{{variantId}}",
        f"{API}/stream",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths
    assert (await http.get("/docs")).status_code == 200
    asyncapi = (await http.get("/asyncapi.json")).json()
    assert asyncapi["asyncapi"].startswith("3.")
    channels = {c["address"] for c in asyncapi["channels"].values()}
    assert api_settings.topic_order_checkout in channels
    assert api_settings.topic_stock_changed in channels
    assert "OrderCheckoutEvent" in asyncapi["components"]["schemas"]
    assert (await http.get("/asyncapi")).status_code == 200


async def test_unknown_routes_and_methods_answer_in_the_error_shape(http) -> None:
    assert_error(await http.get("/api/inventory/nothing-here"), 404, "not_found")
    assert_error(await http.delete(f"{API}/reserve", headers=AUTH), 405, "method_not_allowed")


# ------------------------------------------------------------- failures


async def test_a_database_outage_is_a_503_and_the_api_recovers(
    engine, api_settings, stocked
) -> None:
    proxy = CuttableProxy(api_settings.database_url)
    await proxy.start()
    through = api_settings.model_copy(
        update={"database_url": proxy.url, "http_database_timeout_seconds": 1.0}
    )
    proxy_engine = create_engine(proxy.url, pool_size=1)
    restock = {"updates": [{"variantId": "shirt-m", "quantity": 1}]}
    try:
        async with client_for(proxy_engine, through) as http:
            assert (await http.get(f"{API}/check/shirt-m")).status_code == 200
            await proxy.cut()
            write = await http.post(f"{API}/restock", json=restock, headers=AUTH)
            assert_error(write, 503, "database_unavailable")
            assert write.headers["retry-after"] == "1"
            assert_error(await http.get(f"{API}/check/shirt-m"), 503, "database_unavailable")
            await proxy.restore()
            assert (
                await http.post(f"{API}/restock", json=restock, headers=AUTH)
            ).status_code == 200
    finally:
        await proxy_engine.dispose()
        await proxy.stop()
    assert await stocked.stock("shirt-m") == (11, 0)


async def test_an_unexpected_error_is_a_500_without_internals(engine, api_settings) -> None:
    services = ApiServices.build(api_settings, engine)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("SELECT secret FROM internals")

    services.queries.stock_level = broken  # type: ignore[method-assign]
    app = create_app(services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stock") as http:
        answer = await http.get(f"{API}/check/shirt-m")
    body = assert_error(answer, 500, "internal_error")
    assert "SELECT" not in answer.text and "Traceback" not in answer.text
    assert body["details"] is None


# ------------------------------------------------------- abuse and misuse


async def test_a_body_over_the_limit_is_413_before_it_is_parsed(http, stocked) -> None:
    huge = b'{"updates": [' + b'{"variantId": "shirt-m", "quantity": 1},' * 40_000 + b"]}"
    assert len(huge) > 1_048_576
    answer = await http.post(
        f"{API}/restock", content=huge, headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(answer, 413, "payload_too_large")

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    chunked = await http.post(
        f"{API}/restock", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(chunked, 413, "payload_too_large")
    assert await stocked.stock("shirt-m") == (10, 0)


async def test_an_idempotency_key_answers_only_its_own_request(http, stocked) -> None:
    key = {**AUTH, "Idempotency-Key": "k1"}
    first = await http.post(
        f"{API}/restock", json={"updates": [{"variantId": "shirt-m", "quantity": 5}]}, headers=key
    )
    assert first.status_code == 200
    other_body = await http.post(
        f"{API}/restock",
        json={"updates": [{"variantId": "shirt-m", "quantity": 500}]},
        headers=key,
    )
    assert_error(other_body, 422, "idempotency_key_reused")
    # The same key on another operation is another request: the count is applied.
    counted = await http.put(
        f"{API}/adjust",
        json={"updates": [{"variantId": "shirt-m", "quantity": 0, "reason": "count"}]},
        headers=key,
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["changes"][0]["changeType"] == "ADJUSTMENT"
    assert await stocked.stock("shirt-m") == (0, 0)


@pytest.mark.parametrize(
    "path",
    [
        "/logs/poster?cursor=9223372036854775808",
        "/logs/poster?cursor=-99999999999999999999",
        "/alerts/low-stock?cursor=99999999999999999999:x",
        "/alerts/low-stock?cursor=1:%00",
        "/alerts/low-stock?cursor=1:",
    ],
)
async def test_forged_cursors_are_422(http, stocked, path) -> None:
    assert_error(await http.get(f"{API}{path}"), 422, "invalid_cursor")


@pytest.mark.parametrize(
    "expires_at", ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z", "2999-01-01T00:00:00Z"]
)
async def test_a_hold_without_a_real_end_is_refused(http, stocked, expires_at) -> None:
    answer = await reserve(http, reservation("o1", "shirt-m", 1, expiresAt=expires_at))
    assert answer.status_code == 422, answer.text
    assert await stocked.phases() == {}


async def test_made_up_methods_do_not_mint_metric_series(http) -> None:
    for method in ("FOO1", "FOO2"):
        await http.request(method, "/healthz")
    text = (await http.get("/metrics")).text
    assert "FOO1" not in text and "FOO2" not in text
    assert 'method="other",route="/healthz"' in text


async def test_a_restock_naming_another_product_is_refused(http, stocked) -> None:
    body = assert_error(
        await http.post(
            f"{API}/restock",
            json={"updates": [{"variantId": "shirt-m", "quantity": 1, "productId": "mugs"}]},
            headers=AUTH,
        ),
        409,
        "product_mismatch",
    )
    assert body["details"] == {
        "variantId": "shirt-m",
        "productId": "p-shirt-m",
        "requestedProductId": "mugs",
    }
    assert await stocked.stock("shirt-m") == (10, 0)


async def test_confirm_records_its_reason_and_checks_what_it_is_given(http, stocked) -> None:
    await reserve(http, reservation("o1", "shirt-m", 2))
    assert_error(
        await http.post(
            f"{API}/confirm-sale",
            json={"updates": [{"reservationId": "o1", "quantity": 9}]},
            headers=AUTH,
        ),
        422,
        "validation_failed",
    )  # a quantity is checked per line: it needs its variantId
    await http.post(
        f"{API}/confirm-sale",
        json={"updates": [{"reservationId": "o1", "reason": "Order #12345"}]},
        headers=AUTH,
    )
    [sale] = [row for row in await stocked.audit("shirt-m") if row.change_type == "SALE"]
    assert sale.reason == "Order #12345"
    # release takes only reservationId and reason; anything else is refused, not ignored.
    assert_error(
        await http.post(
            f"{API}/release",
            json={"updates": [{"reservationId": "o1", "variantId": "x", "quantity": 9}]},
            headers=AUTH,
        ),
        422,
        "validation_failed",
    )


async def test_streams_beyond_the_cap_are_refused(engine, api_settings) -> None:
    services = ApiServices.build(api_settings.model_copy(update={"stream_max_clients": 1}), engine)
    services.feed.subscribe()  # one stream is open already
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://stock") as http:
        answer = await http.get(f"{API}/stream")
    assert_error(answer, 503, "too_many_streams")
