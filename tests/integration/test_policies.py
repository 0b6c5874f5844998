"""Policies, suppliers, back in stock and reorder on the real database (issue 13 items
2 and 3; CONTRACT.md, "Policies, reorder and suppliers" and "Events added").

Through the real ASGI app, the batch consumer and the `policies` job; expectations are
read back with plain SQL and the outbox, and the computed figures are checked against
a history made up for the test and computed by hand.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.jobs import JOBS, run_job
from service.application.policies import refresh_policies
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.records import checkout, paid, payment_failed
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

API = "/api/inventory"
READ = {"Authorization": "Bearer r-secret"}
WRITE = {"Authorization": "Bearer w-secret"}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    tokens = "reader:r-secret:read,writer:w-secret:write"
    return settings.model_copy(update={"api_tokens": SecretStr(tokens)})


@pytest.fixture
async def http(engine: AsyncEngine, api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiServices.build(api_settings, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as client:
        yield client


@pytest.fixture
def s(engine: AsyncEngine, api_settings: Settings) -> Scenario:
    return Scenario(engine, api_settings)


def policy_url(variant_id: str) -> str:
    return f"{API}/variants/{variant_id}/policy"


async def put_policy(http: httpx.AsyncClient, variant_id: str, **body: Any) -> dict[str, Any]:
    answer = await http.put(policy_url(variant_id), json=body, headers=WRITE)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def restock(http: httpx.AsyncClient, *lines: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{API}/restock", json={"updates": list(lines)}, headers=WRITE)


async def sell(s: Scenario, order_id: str, variant_id: str, quantity: int) -> None:
    await s.deliver(checkout(order_id, {variant_id: quantity}))
    await s.deliver(paid(order_id))


# ------------------------------------------------------------------ the endpoint


async def test_a_policy_is_read_by_anyone_and_set_with_a_write_token(http, s) -> None:
    await s.restock(("tee", 40))
    fresh = await http.get(policy_url("tee"))
    assert fresh.status_code == 200, fresh.text
    assert fresh.json() == {
        "variantId": "tee",
        "productId": "p-tee",
        "lowStockThreshold": None,
        "reorderPoint": None,
        "maxStock": None,
        "leadTimeDays": None,
        "supplierId": None,
        "tolerancePercent": None,
        "effective": {
            "lowStockThreshold": 5,
            "tolerancePercent": 2.0,
            "reorderPoint": None,
            "reorderPointSource": None,
            "computedReorderPoint": None,
            "leadTimeDays": None,
            "measuredLeadTimeDays": None,
            "averageDailyDemand": None,
            "demandStdev": None,
            "available": 40,
            "daysOfCover": None,
            "suggestedQuantity": None,
            "outOfStockSince": None,
        },
    }

    body = {"reorderPoint": 10, "maxStock": 60, "supplierId": "acme"}
    assert (await http.put(policy_url("tee"), json=body)).status_code == 401
    refused = await http.put(policy_url("tee"), json=body, headers=READ)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")

    set_ = await put_policy(http, "tee", **body, lowStockThreshold=3, tolerancePercent=5,
                            leadTimeDays=2.5)
    assert (set_["reorderPoint"], set_["maxStock"], set_["supplierId"]) == (10, 60, "acme")
    assert (set_["lowStockThreshold"], set_["tolerancePercent"], set_["leadTimeDays"]) == (
        3, 5.0, 2.5)
    effective = set_["effective"]
    assert (effective["reorderPoint"], effective["reorderPointSource"]) == (10, "configured")
    assert (effective["lowStockThreshold"], effective["tolerancePercent"]) == (3, 5.0)
    # No sales yet: the figures are computed (0), a lead time makes a point of 0.
    assert (effective["averageDailyDemand"], effective["computedReorderPoint"]) == (0.0, 0)
    assert effective["suggestedQuantity"] == 20  # up to maxStock 60 from 40
    assert (await http.get(policy_url("tee"), headers=READ)).json() == set_

    # A field not sent stays; null clears one (back to the default, or the computed point).
    cleared = await put_policy(http, "tee", reorderPoint=None, lowStockThreshold=None)
    assert (cleared["reorderPoint"], cleared["lowStockThreshold"]) == (None, None)
    assert (cleared["maxStock"], cleared["supplierId"], cleared["leadTimeDays"]) == (
        60, "acme", 2.5)
    assert cleared["effective"]["reorderPoint"] == 0
    assert cleared["effective"]["reorderPointSource"] == "computed"
    assert cleared["effective"]["lowStockThreshold"] == 5
    # The columns the counts and stock.low use are the ones set.
    assert await s.scalar(
        "SELECT low_stock_threshold FROM variants WHERE variant_id = 'tee'") is None
    assert await s.scalar(
        "SELECT count_tolerance_percent FROM variants WHERE variant_id = 'tee'") == 5
    # Setting a policy is no stock change.
    assert await s.version("tee") == 1


async def test_policy_errors(http, s) -> None:
    await s.restock(("tee", 4))
    for method in ("get", "put"):
        kwargs: dict[str, Any] = {"headers": WRITE}
        if method == "put":
            kwargs["json"] = {"reorderPoint": 1}
        missing = await getattr(http, method)(policy_url("ghost"), **kwargs)
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_variant")
    await put_policy(http, "tee", reorderPoint=10)
    contradicts = await http.put(policy_url("tee"), json={"maxStock": 10}, headers=WRITE)
    assert (contradicts.status_code, contradicts.json()["code"]) == (422, "invalid_policy")
    both = await http.put(
        policy_url("tee"), json={"maxStock": 5, "reorderPoint": 8}, headers=WRITE
    )
    assert both.json()["code"] == "invalid_policy"
    for bad in ({"reorderPoint": -1}, {"maxStock": 0}, {"leadTimeDays": 400},
                {"tolerancePercent": 101}, {"supplierId": " x"}, {"reorderPoint": "3"},
                {"reorderPoint": 1.5}, {"effective": {}}):
        answer = await http.put(policy_url("tee"), json=bad, headers=WRITE)
        assert (answer.status_code, answer.json()["code"]) == (422, "validation_failed"), bad
    # Nothing of the refused requests was kept.
    assert (await http.get(policy_url("tee"))).json()["maxStock"] is None
    # Its path has two methods, and a 405 says so.
    other = await http.delete(policy_url("tee"), headers=WRITE)
    assert (other.status_code, other.json()["code"]) == (405, "method_not_allowed")
    assert other.headers["allow"] == "GET, PUT"


# ------------------------------------------------------------------ restocks


async def test_a_restock_names_its_supplier_and_order_time_and_the_job_measures_it(
    http, s, engine, api_settings
) -> None:
    now = datetime.now(UTC)
    first = await restock(http, {
        "variantId": "mug", "productId": "p-mug", "quantity": 10, "supplierId": "acme",
        "orderedAt": (now - timedelta(days=3)).isoformat(),
    })
    assert first.status_code == 200, first.text
    await put_policy(http, "mug", supplierId="acme")
    # Another variant's delivery from the same supplier counts toward its average.
    second = await restock(http, {
        "variantId": "cup", "productId": "p-cup", "quantity": 5, "supplierId": "acme",
        "orderedAt": (now - timedelta(days=5)).isoformat(),
    }, {"variantId": "cup", "quantity": 1, "supplierId": "other",
        "orderedAt": (now - timedelta(days=30)).isoformat()})
    assert second.status_code == 200, second.text

    rows = await s.audit("cup")
    assert [(r.supplier_id, r.ordered_at is not None) for r in rows] == [
        ("acme", True), ("other", True)]
    log = (await http.get(f"{API}/logs/cup")).json()["entries"]
    assert [e["supplierId"] for e in log] == ["other", "acme"]
    assert datetime.fromisoformat(log[1]["orderedAt"]) == now - timedelta(days=5)

    run = await run_job(engine, api_settings, JOBS["policies"], force=True)
    assert run is not None and run.outcome == "succeeded", run
    assert run.detail["variants"] == 2
    policy = (await http.get(policy_url("mug"))).json()
    measured = policy["effective"]["measuredLeadTimeDays"]
    assert measured == pytest.approx(4.0, abs=1e-3)  # (3 + 5) / 2
    assert policy["effective"]["leadTimeDays"] == pytest.approx(measured)
    # A configured lead time wins; the measured one is still shown.
    configured = await put_policy(http, "mug", leadTimeDays=2)
    assert configured["effective"]["leadTimeDays"] == 2.0
    assert configured["effective"]["measuredLeadTimeDays"] == pytest.approx(4.0, abs=1e-3)


async def test_an_order_time_in_the_future_is_refused_and_nothing_is_applied(http, s) -> None:
    await s.restock(("mug", 1))
    answer = await restock(
        http,
        {"variantId": "mug", "quantity": 2},
        {"variantId": "mug", "quantity": 3, "supplierId": "acme",
         "orderedAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    )
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_ordered_at")
    assert answer.json()["details"] == {"variantId": "mug"}
    assert await s.stock("mug") == (1, 0)
    for not_a_time in ("2026-01-01T00:00:00", 0, True):  # no offset; a bare number
        answer = await restock(
            http, {"variantId": "mug", "quantity": 2, "orderedAt": not_a_time}
        )
        assert answer.json()["code"] == "validation_failed", not_a_time


# ------------------------------------------------------------------ the computed point


async def _history(s: Scenario, now: datetime) -> None:
    """Variant `hist` (supplier acme, two deliveries of 3 and 5 days' lead time) and
    its sales over 40 days, written as audit rows consistent with its versions."""
    day = timedelta(days=1)
    moves: list[tuple[timedelta, str, int, str | None, timedelta | None]] = [
        # (age, change type, delta on hand, supplier, lead time)
        (40 * day, "RESTOCK", 100, "acme", 3 * day),
        (35 * day, "SALE", -50, None, None),  # before the window: not counted
        (34 * day, "RESTOCK", 50, "acme", 5 * day),
        (29.5 * day, "SALE", -4, None, None),
        (20.2 * day, "SALE", -3, None, None),  # the same day as the next: 8
        (20.1 * day, "SALE", -5, None, None),
        (10.5 * day, "SALE", -6, None, None),
        (3.3 * day, "SALE", -2, None, None),
        (1.5 * day, "RETURN", 2, None, None),  # returns are not netted out
        (0.5 * day, "SALE", -10, None, None),
    ]
    await s.execute(
        "INSERT INTO variants (variant_id, product_id, on_hand, supplier_id) "
        "VALUES ('hist', 'p-hist', 0, 'acme')"
    )
    on_hand = 0
    for version, (age, change_type, delta, supplier, lead) in enumerate(moves, start=1):
        on_hand += delta
        at = now - age
        await s.execute(
            """
            INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                on_hand_after, reserved_after, version, actor, created_at, supplier_id,
                ordered_at)
            VALUES ('hist', :type, :delta, 0, :on_hand, 0, :version, 'test', :at, :supplier,
                    :ordered)
            """,
            type=change_type, delta=delta, on_hand=on_hand, version=version, at=at,
            supplier=supplier, ordered=None if lead is None else at - lead,
        )
    await s.execute(
        "UPDATE variants SET on_hand = :on_hand, version = :version WHERE variant_id = 'hist'",
        on_hand=on_hand, version=len(moves),
    )


async def test_the_computed_reorder_point_matches_a_hand_computation(
    http, s, engine, api_settings
) -> None:
    now = datetime.now(UTC)
    await _history(s, now)
    assert await invariant_violations(engine) == []

    done = await refresh_policies(engine, api_settings, now=now)
    assert (done.variants, done.changed) == (1, 1)
    # By hand: the 30 daily totals are 4, 8, 6, 2, 10 and 25 zeros.
    # Mean 30 / 30 = 1. Sample variance (220 - 30^2 / 30) / 29 = 190 / 29.
    # Lead time: acme's deliveries, (3 + 5) / 2 = 4 days.
    # Point: 1 * 4 + 1.65 * sqrt(190 / 29) * sqrt(4) = 4 + 8.4468 = 12.4468 -> 13.
    stdev = math.sqrt(190 / 29)
    effective = (await http.get(policy_url("hist"))).json()["effective"]
    assert effective["averageDailyDemand"] == pytest.approx(1.0)
    assert effective["demandStdev"] == pytest.approx(stdev)
    assert effective["measuredLeadTimeDays"] == pytest.approx(4.0)
    assert effective["computedReorderPoint"] == 13
    assert (effective["reorderPoint"], effective["reorderPointSource"]) == (13, "computed")
    assert effective["available"] == 72
    assert effective["daysOfCover"] == 72.0
    # Run again: nothing changed, nothing written.
    assert (await refresh_policies(engine, api_settings, now=now)).changed == 0

    # Selling 60 takes available from 72 to 12: across 13, one stock.reorder.
    await sell(s, "o1", "hist", 60)
    [event] = [row.data for row in await s.outbox(api_settings.topic_stock_reorder)]
    # Suggested, without maxStock: 1 * (4 + 7) + 1.65 * stdev * 2 = 19.4468, minus 12
    # available = 7.4468 -> 8 (above the 2 that lifts it over the point).
    assert event == {
        "variant_id": "hist",
        "product_id": "p-hist",
        "supplier_id": "acme",
        "available": 12,
        "reorder_point": 13,
        "suggested_quantity": 8,
        "days_of_cover": 12.0,
        "lead_time_days": pytest.approx(4.0),
    }
    [message] = await s.outbox(api_settings.topic_stock_reorder)
    assert message.key == b"hist" and message.event["type"] == "stock.reorder"

    # Further down: no second one; back above the point and down again: a second one.
    await sell(s, "o2", "hist", 7)
    assert len(await s.outbox(api_settings.topic_stock_reorder)) == 1
    await s.admin.restock("hist", 20)  # 25
    await sell(s, "o3", "hist", 12)  # 13: at the point again
    events = [row.data for row in await s.outbox(api_settings.topic_stock_reorder)]
    assert [(e["available"], e["reorder_point"]) for e in events] == [(12, 13), (13, 13)]
    # With maxStock: up to it. (A PUT recomputes the figures with today's sales; the
    # configured point keeps this one where it was.)
    await put_policy(http, "hist", maxStock=100, reorderPoint=13)
    await s.admin.restock("hist", 10)  # 23
    await sell(s, "o4", "hist", 11)  # 12
    assert (await s.outbox(api_settings.topic_stock_reorder))[-1].data[
        "suggested_quantity"] == 88
    assert await invariant_violations(engine) == []


async def test_no_reorder_point_no_reorder(http, s, api_settings) -> None:
    await s.restock(("plain", 10))
    await sell(s, "o1", "plain", 10)
    assert await s.outbox(api_settings.topic_stock_reorder) == []


# ------------------------------------------------------------------ back in stock


async def test_sold_out_and_restocked_twice_publishes_two_replenished(
    http, s, api_settings
) -> None:
    await s.restock(("cap", 2))  # the first delivery: not "back" in stock
    assert await s.outbox(api_settings.topic_stock_replenished) == []
    await sell(s, "o1", "cap", 2)
    since = await s.scalar("SELECT out_of_stock_since FROM variants WHERE variant_id = 'cap'")
    assert since is not None
    # As if it had been out for an hour.
    await s.execute(
        "UPDATE variants SET out_of_stock_since = out_of_stock_since - interval '1 hour' "
        "WHERE variant_id = 'cap'"
    )
    answer = await restock(http, {"variantId": "cap", "quantity": 3})
    assert answer.status_code == 200, answer.text
    [first] = await s.outbox(api_settings.topic_stock_replenished)
    assert first.key == b"cap" and first.event["type"] == "stock.replenished"
    assert first.data["available"] == 3 and first.data["product_id"] == "p-cap"
    assert 3600 <= first.data["out_of_stock_seconds"] < 3700
    assert await s.scalar(
        "SELECT out_of_stock_since FROM variants WHERE variant_id = 'cap'") is None

    await restock(http, {"variantId": "cap", "quantity": 1})  # in stock already
    await sell(s, "o2", "cap", 4)
    await restock(http, {"variantId": "cap", "quantity": 1})
    replenished = [row.data for row in await s.outbox(api_settings.topic_stock_replenished)]
    assert [r["available"] for r in replenished] == [3, 1]
    assert 0 <= replenished[1]["out_of_stock_seconds"] < 60


async def test_a_released_hold_brings_a_variant_back_in_stock(s, api_settings) -> None:
    await s.restock(("pen", 1))
    await s.deliver(checkout("o1", {"pen": 1}))
    assert await s.outbox(api_settings.topic_stock_replenished) == []
    await s.deliver(payment_failed("o1"))
    [back] = await s.outbox(api_settings.topic_stock_replenished)
    assert back.data["available"] == 1


async def test_the_migration_marks_variants_out_of_stock_from_the_audit_log(s) -> None:
    """0003's backfill: a variant out of stock gets the time of the first change after
    its last one with stock; one never stocked, or in stock, gets nothing."""
    await s.restock(("gone", 2), ("here", 2))
    await sell(s, "o1", "gone", 1)
    await sell(s, "o2", "gone", 1)  # out with this sale's RESERVE
    await s.execute(
        "INSERT INTO variants (variant_id, product_id, on_hand) VALUES ('never', 'p', 0)"
    )
    rows = await s.audit("gone")
    out_at = next(r.created_at for r in rows if r.on_hand_after == r.reserved_after)
    await s.execute("UPDATE variants SET out_of_stock_since = NULL")

    path = Path(__file__).parents[2] / "service/migrations/versions/0003_insight.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    [backfill] = [st for st in migration.UPGRADE if "SET out_of_stock_since" in st]
    await s.execute(backfill)
    got = {
        variant: await s.scalar(
            "SELECT out_of_stock_since FROM variants WHERE variant_id = :v", v=variant)
        for variant in ("gone", "here", "never")
    }
    assert got == {"gone": out_at, "here": None, "never": None}


async def test_the_job_walks_every_variant_batch_by_batch(s, engine, api_settings) -> None:
    await s.restock(("a", 10), ("b", 10), ("c", 10), ("d", 10), ("e", 10))
    for number, (variant, units) in enumerate([("a", 3), ("c", 6), ("e", 9)]):
        await sell(s, f"o{number}", variant, units)
    done = await refresh_policies(engine, api_settings, batch_size=2)
    assert (done.variants, done.changed) == (5, 5)
    averages = {
        v: await s.scalar("SELECT avg_daily_demand FROM variants WHERE variant_id = :v", v=v)
        for v in "abcde"
    }
    assert {v: float(a) for v, a in averages.items()} == pytest.approx(
        {"a": 0.1, "b": 0.0, "c": 0.2, "d": 0.0, "e": 0.3}
    )
    assert (await refresh_policies(engine, api_settings, batch_size=2)).changed == 0
