"""CONTRACT.md, "Who did it" and "Optimistic concurrency", on the real database through
the real ASGI app: named tokens with scopes, an actor on every audit row, and
`expectedVersion` refused with the current versions when stale."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.admin import StockAdmin
from service.application.expiry import HoldSweeper
from service.settings import Settings
from tests.integration.test_http_api import API, client_for
from tests.support.records import checkout
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

READER, WRITER, ADMIN, BARE = "r-secret", "w-secret", "a-secret", "bare-secret"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    tokens = f"shelf:{READER}:read, till:{WRITER}:write, boss:{ADMIN}:admin, {BARE}"
    return settings.model_copy(
        update={"api_tokens": SecretStr(tokens), "api_reads_require_token": True}
    )


@pytest.fixture
async def http(engine: AsyncEngine, scoped: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, scoped) as client:
        yield client


async def _actors(engine: AsyncEngine, variant_id: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT actor FROM audit_log WHERE variant_id = :v ORDER BY version"),
            {"v": variant_id},
        )
        return [row.actor for row in rows]


def _restock(variant_id: str, quantity: int, **extra: object) -> dict[str, object]:
    return {"updates": [{"variantId": variant_id, "quantity": quantity, **extra}]}


# ------------------------------------------------------------------ scopes


async def test_each_scope_does_what_it_allows_and_no_more(http, engine, scoped) -> None:
    await StockAdmin(engine, scoped).restock("mug", 5, product_id="mugs")

    read = await http.get(f"{API}/check/mug", headers=bearer(READER))
    assert read.status_code == 200
    refused = await http.post(f"{API}/restock", json=_restock("mug", 1), headers=bearer(READER))
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    assert "'shelf'" in refused.json()["message"] and "'write'" in refused.json()["message"]

    for secret in (WRITER, ADMIN, BARE):
        answer = await http.post(f"{API}/restock", json=_restock("mug", 1), headers=bearer(secret))
        assert answer.status_code == 200, answer.text
    assert (await http.get(f"{API}/check/mug")).status_code == 401  # reads need a token here
    assert (await http.get(f"{API}/check/mug", headers=bearer("nope"))).status_code == 401


async def test_every_audit_row_names_its_actor(http, engine, scoped) -> None:
    await StockAdmin(engine, scoped, actor="cli:ana").restock("tee", 10, product_id="tees")
    await http.post(f"{API}/restock", json=_restock("tee", 2), headers=bearer(WRITER))
    bare_name = "token-" + hashlib.sha256(BARE.encode()).hexdigest()[:8]
    await http.put(
        f"{API}/adjust",
        json={"updates": [{"variantId": "tee", "quantity": 11, "reason": "recount"}]},
        headers=bearer(BARE),
    )
    soon = datetime.now(UTC) + timedelta(minutes=1)
    s = Scenario(engine, scoped)
    await s.deliver(s.record(checkout("o-1", {"tee": 1}, source="shop-web", expires_at=soon)))
    await HoldSweeper(engine, scoped).sweep_once(now=soon + timedelta(seconds=1))

    assert await _actors(engine, "tee") == [
        "cli:ana",
        "api:till",
        f"api:{bare_name}",
        "shop-web",  # a Kafka event: its source
        "stock-service",  # the expiry sweep
    ]
    logs = (await http.get(f"{API}/logs/tee", headers=bearer(READER))).json()
    assert [e["actor"] for e in logs["entries"]][:2] == ["stock-service", "shop-web"]
    assert logs["version"] == 5
    assert secret_free(logs)


def secret_free(payload: object) -> bool:
    return all(secret not in str(payload) for secret in (READER, WRITER, ADMIN, BARE))


def test_a_token_entry_with_an_unknown_scope_is_refused_at_start(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="name:secret:scope"):
        Settings(api_tokens="ops:s3cret:root")  # type: ignore[arg-type]
    assert settings.model_copy(update={"api_tokens": SecretStr("a:b:c:d")}).api_token_entries[
        0
    ].scope == "write"  # not name:secret:scope: a bare secret with colons in it


# ---------------------------------------------------------------- versions


async def test_a_stale_expected_version_is_refused_and_changes_nothing(
    http, engine, scoped
) -> None:
    await StockAdmin(engine, scoped).restock("cap", 5, product_id="caps")
    await StockAdmin(engine, scoped).restock("hat", 5, product_id="caps")
    version = (await http.get(f"{API}/check/cap", headers=bearer(READER))).json()["version"]
    assert version == 1

    fresh = await http.post(
        f"{API}/restock", json=_restock("cap", 1, expectedVersion=1), headers=bearer(WRITER)
    )
    assert fresh.status_code == 200 and fresh.json()["changes"][0]["version"] == 2

    # Someone else's change came first: this request read version 1.
    stale = await http.put(
        f"{API}/adjust",
        json={
            "updates": [
                {"variantId": "hat", "quantity": 4, "reason": "recount", "expectedVersion": 1},
                {"variantId": "cap", "quantity": 9, "reason": "recount", "expectedVersion": 1},
            ]
        },
        headers=bearer(WRITER),
    )
    assert stale.status_code == 409
    body = stale.json()
    assert body["code"] == "version_conflict"
    assert body["details"] == {"current": [{"variantId": "cap", "version": 2}]}
    async with engine.connect() as conn:
        levels = dict(
            (await conn.execute(text("SELECT variant_id, on_hand FROM variants"))).all()
        )
    assert levels == {"cap": 6, "hat": 5}  # all or nothing: hat's good line was not applied

    product = (await http.get(f"{API}/product/caps", headers=bearer(READER))).json()
    assert {v["variantId"]: v["version"] for v in product["variants"]} == {"cap": 2, "hat": 1}


async def test_a_restock_creating_a_variant_expects_version_zero(http, engine) -> None:
    created = await http.post(
        f"{API}/restock",
        json=_restock("new-one", 3, productId="p", expectedVersion=0),
        headers=bearer(WRITER),
    )
    assert created.status_code == 200, created.text
    again = await http.post(
        f"{API}/restock",
        json=_restock("new-one", 3, expectedVersion=0),
        headers=bearer(WRITER),
    )
    assert again.status_code == 409
    assert again.json()["details"]["current"] == [{"variantId": "new-one", "version": 1}]
