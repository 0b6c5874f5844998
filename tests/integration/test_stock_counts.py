"""CONTRACT.md, "Stock counts (stocktake)", on the real database through the real ASGI
app: a count opened, sales made while counting (through the batch consumer, and over
HTTP), lines recorded and applied; approvals by scope, blind counts, cancel, repeats,
and every bad input refused with its code and nothing changed.

Expectations are read back with plain SQL (`Scenario`), not the service's queries.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from stock_schemas.events import MAX_QUANTITY

from service.settings import Settings
from tests.integration.test_http_api import API, client_for
from tests.support.invariants import invariant_violations
from tests.support.records import checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

WRITER, ADMIN, READER = "w-secret", "a-secret", "r-secret"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


W, A = bearer(WRITER), bearer(ADMIN)


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    tokens = f"till:{WRITER}:write, boss:{ADMIN}:admin, shelf:{READER}:read"
    return settings.model_copy(update={"api_tokens": SecretStr(tokens)})


@pytest.fixture
async def http(engine: AsyncEngine, scoped: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, scoped) as client:
        yield client


@pytest.fixture
def s(engine: AsyncEngine, scoped: Settings) -> Scenario:
    return Scenario(engine, scoped)


async def _stock(s: Scenario, product: str, *levels: tuple[str, int]) -> None:
    for variant_id, quantity in levels:
        await s.admin.restock(variant_id, quantity, product_id=product)


async def _open(http: httpx.AsyncClient, body: dict[str, Any], headers: Any = W) -> dict[str, Any]:
    answer = await http.post(f"{API}/counts", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    opened: dict[str, Any] = answer.json()
    return opened


async def _record(
    http: httpx.AsyncClient, count_id: str, lines: dict[str, int], headers: Any = W
) -> httpx.Response:
    return await http.put(
        f"{API}/counts/{count_id}/lines",
        json={"lines": [{"variantId": v, "counted": c} for v, c in lines.items()]},
        headers=headers,
    )


async def _apply(
    http: httpx.AsyncClient, count_id: str, headers: Any = W, **body: Any
) -> httpx.Response:
    return await http.post(f"{API}/counts/{count_id}/apply", json=body or None, headers=headers)


def _lines(count: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["variantId"]: line for line in count["lines"]}


async def _sell_over_http(http: httpx.AsyncClient, order_id: str, lines: dict[str, int]) -> None:
    reserved = await http.post(
        f"{API}/reserve",
        json={
            "reservations": [
                {"reservationId": order_id, "variantId": v, "quantity": q}
                for v, q in lines.items()
            ]
        },
        headers=W,
    )
    assert reserved.status_code == 200, reserved.text
    sold = await http.post(
        f"{API}/confirm-sale", json={"updates": [{"reservationId": order_id}]}, headers=W
    )
    assert sold.status_code == 200, sold.text


async def _everything(s: Scenario) -> dict[str, Any]:
    """Every row a count could change, to show that a refusal changed nothing."""
    tables = {
        "counts": "SELECT * FROM stock_counts ORDER BY count_id",
        "lines": "SELECT * FROM stock_count_lines ORDER BY count_id, variant_id",
        "variants": "SELECT variant_id, on_hand, reserved, version FROM variants "
        "ORDER BY variant_id",
        "audit": "SELECT count(*) FROM audit_log",
        "outbox": "SELECT count(*) FROM outbox",
    }
    found: dict[str, Any] = {}
    async with s.engine.connect() as conn:
        for name, sql in tables.items():
            found[name] = [tuple(row) for row in await conn.execute(text(sql))]
    return found


async def _adjustments(s: Scenario, count_id: str) -> list[Any]:
    return [row for row in await s.audit() if row.reference == count_id]


# ------------------------------------------------------------- the full flow


async def test_a_count_keeps_the_sales_made_while_counting_and_after(http, s, engine) -> None:
    await _stock(s, "tees", ("tee-m", 100), ("tee-l", 10), ("tee-s", 5))

    opened = await _open(
        http, {"variantIds": ["tee-m", "tee-l", "tee-m", "tee-s"], "reason": "quarterly"}
    )
    count_id = opened["countId"]
    assert count_id.startswith("cnt-")
    assert opened["status"] == "OPEN" and opened["openedBy"] == "api:till"
    assert list(_lines(opened)) == ["tee-l", "tee-m", "tee-s"]  # merged, in key order
    assert all(line["counted"] is None and line["expected"] is None for line in opened["lines"])

    # While the shelf is counted, the shop sells 3 of tee-m through Kafka.
    await s.deliver(checkout("o-kafka", {"tee-m": 3}, source="shop-web"), paid("o-kafka"))
    assert await s.stock("tee-m") == (97, 0)

    recorded = await _record(http, count_id, {"tee-m": 96, "tee-l": 7})
    assert recorded.status_code == 200, recorded.text
    lines = _lines(recorded.json())
    assert lines["tee-m"] | {"countedAt": None} == {
        "variantId": "tee-m",
        "counted": 96,
        "expected": 97,  # the snapshot (100) plus the sale made since (-3)
        "variance": -1,
        "withinTolerance": True,  # 1 <= 2% of 97
        "tolerancePercent": 2.0,
        "countedAt": None,
        "countedBy": "api:till",
        "appliedVersion": None,
    }
    assert (lines["tee-l"]["expected"], lines["tee-l"]["variance"]) == (10, -3)
    assert lines["tee-l"]["withinTolerance"] is False
    assert lines["tee-s"]["counted"] is None  # never counted: skipped by the apply
    # The expected quantity is the contract's: snapshot + every delta_on_hand since it.
    moved = await s.scalar(
        "SELECT l.snapshot_on_hand + coalesce(sum(a.delta_on_hand), 0) "
        "FROM stock_count_lines l LEFT JOIN audit_log a ON a.variant_id = l.variant_id "
        "AND a.version > l.snapshot_version "
        "WHERE l.count_id = :c AND l.variant_id = 'tee-m' GROUP BY l.snapshot_on_hand",
        c=count_id,
    )
    assert moved == 97

    # After counting, before applying: 2 of tee-m and 1 of tee-l sold over HTTP.
    await _sell_over_http(http, "o-http", {"tee-m": 2, "tee-l": 1})
    before = await _everything(s)

    refused = await _apply(http, count_id)
    assert refused.status_code == 409
    assert refused.json()["code"] == "approval_required"
    assert refused.json()["details"] == {
        "countId": count_id,
        "lines": [
            {"variantId": "tee-l", "counted": 7, "expected": 10, "variance": -3,
             "tolerancePercent": 2.0}
        ],
    }
    forbidden = await _apply(http, count_id, approve=True)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    assert await _everything(s) == before

    applied = await _apply(http, count_id, headers=A, approve=True)
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["status"] == "APPLIED"
    assert body["closedBy"] == "api:boss" and body["approvedBy"] == "api:boss"
    # Exactly the counted shelf plus what moved after it was counted.
    assert await s.stock("tee-m") == (96 - 2, 0)
    assert await s.stock("tee-l") == (7 - 1, 0)
    assert await s.stock("tee-s") == (5, 0)

    adjustments = await _adjustments(s, count_id)
    assert [
        (a.variant_id, a.change_type, a.delta_on_hand, a.reason, a.actor) for a in adjustments
    ] == [
        ("tee-l", "ADJUSTMENT", -3, "cycle_count", "api:boss"),
        ("tee-m", "ADJUSTMENT", -1, "cycle_count", "api:boss"),
    ]
    assert {v: line["appliedVersion"] for v, line in _lines(body).items()} == {
        "tee-l": adjustments[0].version,
        "tee-m": adjustments[1].version,
        "tee-s": None,
    }
    anomalies = [r.data for r in await s.outbox(s.settings.topic_stock_anomaly)]
    assert anomalies == [
        {
            "variant_id": "tee-l",
            "product_id": "tees",
            "rule": "count_variance",
            "observed": 7,
            "expected": 10,
            "score": None,
            "reference": count_id,
        }
    ]
    changed = [c for c in await s.changes() if c["reference"] == count_id]
    assert [(c["variant_id"], c["change_type"], c["on_hand"]) for c in changed] == [
        ("tee-l", "ADJUSTMENT", 6),
        ("tee-m", "ADJUSTMENT", 94),
    ]

    # Applying again answers the applied count and changes nothing.
    after = await _everything(s)
    again = await _apply(http, count_id)
    assert again.status_code == 200 and again.json() == body
    assert await _everything(s) == after
    shown = await http.get(f"{API}/counts/{count_id}")
    assert shown.status_code == 200 and shown.json() == body

    # An applied count is immutable.
    for late in (
        await _record(http, count_id, {"tee-m": 1}),
        await http.post(f"{API}/counts/{count_id}/cancel", headers=W),
    ):
        assert late.status_code == 409
        assert late.json()["code"] == "count_closed"
        assert late.json()["details"] == {"countId": count_id, "status": "APPLIED"}
    assert await _everything(s) == after
    assert await invariant_violations(engine) == []


async def test_lines_within_tolerance_apply_without_approval(http, s) -> None:
    await _stock(s, "mugs", ("mug", 50))
    count_id = (await _open(http, {"productId": "mugs"}))["countId"]
    await _record(http, count_id, {"mug": 49})  # 1 <= 2% of 50, inclusive
    applied = await _apply(http, count_id)
    assert applied.status_code == 200, applied.text
    assert applied.json()["approvedBy"] is None
    assert await s.stock("mug") == (49, 0)
    assert await s.outbox(s.settings.topic_stock_anomaly) == []


async def test_a_recount_overwrites_and_takes_the_expected_of_its_moment(http, s) -> None:
    await _stock(s, "caps", ("cap", 20))
    count_id = (await _open(http, {"variantIds": ["cap"]}))["countId"]
    first = _lines((await _record(http, count_id, {"cap": 15})).json())["cap"]
    assert (first["expected"], first["variance"]) == (20, -5)
    await s.deliver(checkout("o1", {"cap": 4}), paid("o1"))
    second = _lines((await _record(http, count_id, {"cap": 16})).json())["cap"]
    assert (second["counted"], second["expected"], second["variance"]) == (16, 16, 0)
    assert second["withinTolerance"] is True
    assert (await _apply(http, count_id)).status_code == 200
    assert await s.stock("cap") == (16, 0)
    # One audit row per line, even when the count matches: evidence that it happened.
    [row] = await _adjustments(s, count_id)
    assert (row.delta_on_hand, row.reason) == (0, "cycle_count")


async def test_a_variant_s_own_tolerance_wins_over_the_default(http, s) -> None:
    await _stock(s, "socks", ("sock-a", 10), ("sock-b", 10))
    await s.execute("UPDATE variants SET count_tolerance_percent = 30 WHERE variant_id = 'sock-a'")
    count_id = (await _open(http, {"productId": "socks"}))["countId"]
    lines = _lines((await _record(http, count_id, {"sock-a": 7, "sock-b": 9})).json())
    assert (lines["sock-a"]["tolerancePercent"], lines["sock-a"]["withinTolerance"]) == (30, True)
    assert (lines["sock-b"]["tolerancePercent"], lines["sock-b"]["withinTolerance"]) == (2, False)


async def test_an_expected_of_zero_tolerates_no_difference(http, s) -> None:
    await _stock(s, "pins", ("pin", 1))
    await s.admin.adjust("pin", 0, reason="lost")
    count_id = (await _open(http, {"variantIds": ["pin"]}))["countId"]
    line = _lines((await _record(http, count_id, {"pin": 1})).json())["pin"]
    assert (line["expected"], line["variance"], line["withinTolerance"]) == (0, 1, False)
    assert (await _apply(http, count_id)).json()["code"] == "approval_required"
    assert (await _apply(http, count_id, headers=A, approve=True)).status_code == 200
    assert await s.stock("pin") == (1, 0)


# ------------------------------------------------------------------- blind


async def test_a_blind_count_hides_expected_and_variance_until_applied(http, s) -> None:
    await _stock(s, "bags", ("bag", 40))
    opened = await _open(http, {"variantIds": ["bag"], "blind": True})
    count_id = opened["countId"]
    assert opened["blind"] is True
    recorded = _lines((await _record(http, count_id, {"bag": 30})).json())["bag"]
    assert recorded["counted"] == 30
    assert (recorded["expected"], recorded["variance"], recorded["withinTolerance"]) == (
        None,
        None,
        None,
    )
    shown = _lines((await http.get(f"{API}/counts/{count_id}")).json())["bag"]
    assert shown["expected"] is None and shown["variance"] is None
    refused = await _apply(http, count_id)
    assert refused.json()["code"] == "approval_required"
    assert refused.json()["details"]["lines"] == [
        {"variantId": "bag", "counted": 30, "expected": None, "variance": None,
         "tolerancePercent": 2.0}
    ]
    assert "variance" not in refused.json()["message"]
    applied = _lines((await _apply(http, count_id, headers=A, approve=True)).json())["bag"]
    assert (applied["expected"], applied["variance"], applied["withinTolerance"]) == (
        40,
        -10,
        False,
    )


# ------------------------------------------------------------------ cancel


async def test_a_cancelled_count_changes_nothing_and_frees_its_variants(http, s) -> None:
    await _stock(s, "hats", ("hat", 8))
    count_id = (await _open(http, {"variantIds": ["hat"]}))["countId"]
    await _record(http, count_id, {"hat": 2})
    cancelled = await http.post(f"{API}/counts/{count_id}/cancel", headers=W)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["closedBy"] == "api:till"
    assert await s.stock("hat") == (8, 0)
    assert await _adjustments(s, count_id) == []

    before = await _everything(s)
    again = await http.post(f"{API}/counts/{count_id}/cancel", headers=W)
    assert again.status_code == 200 and again.json() == cancelled.json()
    for refused in (await _apply(http, count_id), await _record(http, count_id, {"hat": 8})):
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "count_closed"
        assert refused.json()["details"] == {"countId": count_id, "status": "CANCELLED"}
    assert await _everything(s) == before
    # The variant can be counted again.
    assert (await _open(http, {"variantIds": ["hat"]}))["status"] == "OPEN"


# --------------------------------------------------------------- bad input


async def test_every_bad_input_is_a_4xx_with_its_code_and_changes_nothing(http, s) -> None:
    await _stock(s, "cups", ("cup", 10), ("saucer", 4))
    count_id = (await _open(http, {"variantIds": ["cup"]}))["countId"]
    before = await _everything(s)

    async def refused(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
        assert answer.status_code == status, answer.text
        assert answer.json()["code"] == code, answer.text
        assert await _everything(s) == before
        details: dict[str, Any] = answer.json()["details"]
        return details

    for answer in (
        await http.get(f"{API}/counts/cnt-nope"),
        await _record(http, "cnt-nope", {"cup": 1}),
        await _apply(http, "cnt-nope"),
        await http.post(f"{API}/counts/cnt-nope/cancel", headers=W),
    ):
        assert await refused(answer, 404, "unknown_count") == {"countId": "cnt-nope"}

    unknown = await http.post(
        f"{API}/counts", json={"variantIds": ["ghost", "cup", "spectre"]}, headers=W
    )
    assert (await refused(unknown, 404, "unknown_variant")) == {"variantIds": ["ghost", "spectre"]}
    no_product = await http.post(f"{API}/counts", json={"productId": "nothing"}, headers=W)
    assert await refused(no_product, 404, "unknown_product") == {"productId": "nothing"}
    for body in (
        {},
        {"variantIds": ["cup"], "productId": "cups"},
        {"variantIds": []},
        {"variantIds": ["saucer"], "blind": "yes"},
        {"variantIds": ["saucer"], "colour": "red"},
    ):
        await refused(
            await http.post(f"{API}/counts", json=body, headers=W), 422, "validation_failed"
        )
    overlap = await http.post(f"{API}/counts", json={"productId": "cups"}, headers=W)
    assert await refused(overlap, 409, "count_overlap") == {
        "counts": [{"variantId": "cup", "countId": count_id}]
    }

    for quantity in (-1, MAX_QUANTITY + 1, 2.5, "3"):
        await refused(
            await http.put(
                f"{API}/counts/{count_id}/lines",
                json={"lines": [{"variantId": "cup", "counted": quantity}]},
                headers=W,
            ),
            422,
            "validation_failed",
        )
    foreign = await _record(http, count_id, {"cup": 9, "saucer": 4})
    assert await refused(foreign, 422, "variant_not_in_count") == {
        "countId": count_id,
        "variantIds": ["saucer"],
    }
    nothing = await _apply(http, count_id)
    assert await refused(nothing, 409, "nothing_counted") == {"countId": count_id}
    assert (await _apply(http, count_id, approve="yes")).status_code == 422
    await refused(
        await http.put(f"{API}/counts/{count_id}/lines", json={"lines": []}, headers=W),
        422,
        "validation_failed",
    )

    # Scopes: a read token writes nothing; no token is 401.
    assert (await _record(http, count_id, {"cup": 1}, headers=bearer(READER))).status_code == 403
    assert (await http.post(f"{API}/counts", json={"variantIds": ["cup"]})).status_code == 401
    assert await _everything(s) == before


async def test_a_count_that_would_go_below_reserved_is_refused(http, s, engine) -> None:
    await _stock(s, "jugs", ("jug", 10), ("lid", 10))
    count_id = (await _open(http, {"variantIds": ["jug", "lid"]}))["countId"]
    await _record(http, count_id, {"jug": 2, "lid": 10})
    soon = datetime.now(UTC) + timedelta(minutes=5)
    await s.deliver(checkout("o-hold", {"jug": 4}, expires_at=soon))  # held, not sold
    before = await _everything(s)

    refused = await _apply(http, count_id, headers=A, approve=True)
    assert refused.status_code == 409
    assert refused.json()["code"] == "count_below_reserved"
    assert refused.json()["details"] == {
        "variantId": "jug",
        "counted": 2,
        "reserved": 4,
        "onHandAfter": 2,
    }
    assert await _everything(s) == before  # lid's good line was not applied either
    assert await invariant_violations(engine) == []


async def test_reads_need_a_token_when_reads_require_one(engine, scoped, s) -> None:
    await _stock(s, "forks", ("fork", 3))
    locked = scoped.model_copy(update={"api_reads_require_token": True})
    async with client_for(engine, locked) as http:
        count_id = (await _open(http, {"variantIds": ["fork"]}))["countId"]
        assert (await http.get(f"{API}/counts/{count_id}")).status_code == 401
        shown = await http.get(f"{API}/counts/{count_id}", headers=bearer(READER))
        assert shown.status_code == 200 and shown.json()["countId"] == count_id


async def test_two_counts_opened_at_once_for_one_variant_cannot_both_open(http, s) -> None:
    await _stock(s, "rugs", ("rug", 6), ("mat", 6))
    answers = await asyncio.gather(
        *(
            http.post(f"{API}/counts", json={"variantIds": ["mat", "rug"]}, headers=W)
            for _ in range(4)
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"count_overlap"}
    assert await s.scalar("SELECT count(*) FROM stock_counts") == 1


# ---------------------------------------------------------------------- CLI


def _stock_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    stock = Path(sys.executable).parent / "stock"
    env = {**os.environ, "STOCK_DATABASE_URL": database_url, "STOCK_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [str(stock), "count", *args], capture_output=True, text=True, env=env, timeout=60
    )


async def test_the_cli_opens_records_applies_and_shows_a_count(s, database_url) -> None:
    await _stock(s, "pens", ("pen-blue", 30), ("pen-red", 12))
    opened = _stock_cli(database_url, "open", "--product", "pens", "--actor", "ana", "--json")
    assert opened.returncode == 0, opened.stderr
    count = json.loads(opened.stdout)
    count_id = count["countId"]
    assert count["openedBy"] == "cli:ana" and count["status"] == "OPEN"

    await s.deliver(checkout("o-pen", {"pen-blue": 5}), paid("o-pen"))
    recorded = _stock_cli(database_url, "record", count_id, "pen-blue=25", "pen-red=9")
    assert recorded.returncode == 0, recorded.stderr
    assert "pen-red" in recorded.stdout and "-3" in recorded.stdout

    refused = _stock_cli(database_url, "apply", count_id)
    assert refused.returncode == 2
    assert "approval_required" in refused.stderr and "pen-red" in refused.stderr
    assert await s.stock("pen-red") == (12, 0)

    applied = _stock_cli(database_url, "apply", count_id, "--approve", "--actor", "bo", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["approvedBy"] == "cli:bo"
    assert await s.stock("pen-blue") == (25, 0) and await s.stock("pen-red") == (9, 0)
    assert {row.actor for row in await _adjustments(s, count_id)} == {"cli:bo"}

    shown = _stock_cli(database_url, "show", count_id)
    assert shown.returncode == 0, shown.stderr
    assert "APPLIED" in shown.stdout and "pen-blue" in shown.stdout

    bad = [
        _stock_cli(database_url, "record", count_id, "pen-blue=1"),
        _stock_cli(database_url, "show", "cnt-nope"),
        _stock_cli(database_url, "record", count_id, "pen-blue=-1"),
        _stock_cli(database_url, "record", count_id, "pen-blue"),
    ]
    assert [b.returncode for b in bad] == [2, 2, 2, 2]
    assert "count_closed" in bad[0].stderr and "unknown_count" in bad[1].stderr
    assert "Traceback" not in "".join(b.stderr for b in bad)

    second = json.loads(
        _stock_cli(database_url, "open", "pen-red", "--blind", "--json").stdout
    )
    cancelled = _stock_cli(database_url, "cancel", second["countId"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
