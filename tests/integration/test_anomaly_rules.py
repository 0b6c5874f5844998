"""`stock.anomaly` `large_adjustment` (an adjust request) and `unusual_shrinkage` (the
weekly `shrinkage` job) on the real database: each kept in `anomalies` and published
once through the outbox, in the transaction of its cause.

Histories are planted as a variant would have lived them: the audit log refuses edits,
not inserts, so past rows are appended with past `created_at`, versions 1..N and the
variant row at version N with the sum of their deltas (the invariants hold: checked).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from service.adapters import anomaly_sql
from service.application.admin import StockAdmin
from service.application.counts import StockCounts
from service.application.jobs import JOBS, run_job
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.invariants import invariant_violations
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

TOKEN = "ops:ops-secret:write"
AUTH = {"Authorization": "Bearer ops-secret"}
API = "/api/inventory"

#: (when, change_type, delta_on_hand, reason)
Move = tuple[datetime, str, int, str | None]


async def db_now(s: Scenario) -> datetime:
    value: datetime = await s.scalar("SELECT now()")
    return value


async def plant(s: Scenario, variant_id: str, product_id: str, moves: Sequence[Move]) -> int:
    """A variant that lived `moves` (in time order); returns its on_hand."""
    ordered = sorted(moves, key=lambda m: m[0])
    on_hand, rows = 0, []
    for version, (at, change_type, delta, reason) in enumerate(ordered, start=1):
        on_hand += delta
        assert on_hand >= 0, f"{variant_id}: the planted history goes below 0"
        rows.append((version, at, change_type, delta, on_hand, reason))
    await s.execute(
        "INSERT INTO variants (variant_id, product_id, on_hand, version) "
        "VALUES (:v, :p, :on_hand, :n)",
        v=variant_id, p=product_id, on_hand=on_hand, n=len(rows),
    )
    await s.execute(
        """
        INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
                               on_hand_after, reserved_after, version, reason, created_at,
                               actor)
        SELECT :v, t.change_type, t.delta, 0, t.after, 0, t.version, t.reason, t.at, 'planted'
        FROM unnest(CAST(:versions AS bigint[]), CAST(:ats AS timestamptz[]),
                    CAST(:types AS text[]), CAST(:deltas AS bigint[]),
                    CAST(:afters AS bigint[]), CAST(:reasons AS text[]))
             AS t(version, at, change_type, delta, after, reason)
        """,
        v=variant_id,
        versions=[r[0] for r in rows],
        ats=[r[1] for r in rows],
        types=[r[2] for r in rows],
        deltas=[r[3] for r in rows],
        afters=[r[4] for r in rows],
        reasons=[r[5] for r in rows],
    )
    return on_hand


async def kept(s: Scenario, rule: str | None = None) -> list[Any]:
    sql = "SELECT * FROM anomalies"
    if rule is not None:
        sql += " WHERE rule = :r"
    async with s.engine.connect() as conn:
        return list(await conn.execute(text(sql + " ORDER BY variant_id, id"), {"r": rule}))


async def published(s: Scenario) -> list[dict[str, Any]]:
    return [m.data for m in await s.outbox(s.settings.topic_stock_anomaly)]


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(TOKEN)})


@pytest.fixture
async def http(engine, api_settings) -> Any:
    app = create_app(ApiServices.build(api_settings, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as client:
        yield client


async def adjust(http: httpx.AsyncClient, *lines: tuple[str, int], **headers: str) -> Any:
    answer = await http.put(
        f"{API}/adjust",
        json={
            "updates": [
                {"variantId": v, "quantity": q, "reason": "shelf check"} for v, q in lines
            ]
        },
        headers={**AUTH, **headers},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def mug_moves(now: datetime) -> list[Move]:
    """200 days of a quiet mug: a first delivery of 100 long ago; in the last 90 days a
    delivery of 20 every 10 days (days 5, 15, ..., 85 before now), a -3 correction
    (day 12) and a return of 2 (day 40); sales of 2 every 3 days, which are no
    non-sale change. docs/design.md works this history by hand: meanAD 185/90."""
    day = timedelta(days=1)
    moves: list[Move] = [(now - 200 * day, "RESTOCK", 100, "first delivery")]
    moves += [(now - (d + 0.5) * day, "RESTOCK", 20, "delivery") for d in range(5, 90, 10)]
    moves += [
        (now - 12.5 * day, "ADJUSTMENT", -3, "broken"),
        (now - 40.5 * day, "RETURN", 2, None),
    ]
    moves += [(now - (d + 0.25) * day, "SALE", -2, None) for d in range(1, 90, 3)]
    return moves


# ------------------------------------------------------------------ large_adjustment


async def test_a_60_unit_write_off_is_an_anomaly_and_a_2_unit_recount_is_not(
    engine, api_settings, http
) -> None:
    s = Scenario(engine, api_settings)
    on_hand = await plant(s, "mug-blue", "mug", mug_moves(await db_now(s)))
    assert await invariant_violations(engine) == []

    await adjust(http, ("mug-blue", on_hand - 60))

    [event] = await published(s)
    [row] = await kept(s)
    [audit] = [a for a in await s.audit("mug-blue") if a.actor != "planted"]
    assert event["variant_id"] == "mug-blue" and event["product_id"] == "mug"
    assert event["rule"] == "large_adjustment"
    assert (event["observed"], event["expected"]) == (-60, 0)
    # 0.7979 * -60 / (185 / 90): the sales are not in the history.
    assert event["score"] == pytest.approx(0.7979 * -60 / (185 / 90))
    assert event["reference"] == audit.source_event_id  # the eventId in GET logs
    assert (row.variant_id, row.rule, row.observed, row.expected) == (
        "mug-blue", "large_adjustment", -60, 0
    )
    assert float(row.score) == pytest.approx(event["score"])
    assert row.reference == audit.source_event_id and row.actor == "api:ops"
    [message] = await s.outbox(api_settings.topic_stock_anomaly)
    assert message.key == b"mug-blue"

    # The recount a moment later: 2 units, no anomaly (and no history read).
    await adjust(http, ("mug-blue", on_hand - 62))
    assert len(await published(s)) == 1 and len(await kept(s)) == 1
    assert await invariant_violations(engine) == []


async def test_a_variant_that_moves_in_big_lots_takes_a_60_unit_correction_calmly(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    now, day = await db_now(s), timedelta(days=1)
    moves: list[Move] = [(now - (d + 0.5) * day, "RESTOCK", 100, None) for d in range(3, 120, 7)]
    moves += [(now - (d + 0.1) * day, "SALE", -90, None) for d in range(3, 120, 7)]
    on_hand = await plant(s, "crate", "crates", moves)

    # Through StockAdmin, as `stock adjust` does.
    admin = StockAdmin(engine, settings, actor="cli:ana")
    await admin.adjust("crate", on_hand - 60, reason="stocktake")  # z -3.31: calm
    assert await kept(s) == []
    # The -60 is history now (meanAD 1360/90): -75 scores -3.96.
    await admin.adjust("crate", on_hand - 60 - 75, reason="stocktake")
    [row] = await kept(s)
    assert (row.rule, row.observed, row.actor) == ("large_adjustment", -75, "cli:ana")
    assert float(row.score) == pytest.approx(0.7979 * -75 / (1360 / 90))


async def test_a_young_variant_is_judged_by_the_unit_threshold_alone(
    engine, api_settings, http
) -> None:
    s = Scenario(engine, api_settings)
    await s.restock(("new-lamp", 50))  # one day of history: no "usual" yet

    await adjust(http, ("new-lamp", 41))  # -9: below the threshold
    assert await published(s) == []
    await adjust(http, ("new-lamp", 31))  # -10: at it
    [event] = await published(s)
    assert (event["rule"], event["observed"], event["expected"], event["score"]) == (
        "large_adjustment", -10, 0, None
    )
    # Two lines for one variant in one request are one adjustment: 31 -> 20 -> 28 is -3.
    await adjust(http, ("new-lamp", 20), ("new-lamp", 28))
    assert len(await published(s)) == 1


async def test_an_adjust_retried_with_its_key_raises_its_anomaly_once(
    engine, api_settings, http
) -> None:
    s = Scenario(engine, api_settings)
    await s.restock(("vase", 40))
    first = await adjust(http, ("vase", 10), **{"Idempotency-Key": "count-7"})
    again = await adjust(http, ("vase", 10), **{"Idempotency-Key": "count-7"})
    assert first == again
    assert [e["observed"] for e in await published(s)] == [-30]
    assert len(await kept(s)) == 1


async def test_a_count_apply_raises_count_variance_not_large_adjustment(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("chair", 100))
    counts = StockCounts(engine, settings)
    count = await counts.open(actor="cli:ana", variant_ids=["chair"])
    await counts.record(count.count_id, [("chair", 40)], actor="cli:ana")
    await counts.apply(count.count_id, actor="cli:ana", approve=True)
    assert [(r.rule, r.observed, r.expected) for r in await kept(s)] == [
        ("count_variance", 40, 100)
    ]


# ------------------------------------------------------------------ unusual_shrinkage

STEADY = [20, 22, 18, 20, 21, 19, 20, 23]  # weeks 1..8 before: median 20, MAD 1


async def plant_weeks(s: Scenario) -> tuple[datetime, str]:
    """Nine weeks of made-up losses. Week 0 is the last complete ISO week, weeks 1..8
    the baseline; each variant starts with 1000 units ten weeks before."""
    async with s.engine.connect() as conn:
        week_start, label = await anomaly_sql.last_complete_week(conn)
    day = timedelta(days=1)

    def week(k: int, hours: float = 0) -> datetime:
        """A moment in the middle of week k (0: the judged week)."""
        return week_start - 7 * k * day + 2 * day + timedelta(hours=hours)

    def losses(weekly: Sequence[int]) -> list[Move]:
        return [(week(k), "ADJUSTMENT", -n, "damaged") for k, n in enumerate(weekly) if n]

    start: list[Move] = [(week_start - 70 * day, "RESTOCK", 1000, "opening stock")]
    variants: dict[str, list[Move]] = {
        "steady": losses([24, *STEADY]),  # z 2.70: usual
        "spike": losses([45, *STEADY]),  # z 16.86: unusual
        "leaky": losses([30, 0, 0, 3, 0, 0, 0, 0, 0]),  # meanAD 3/8: unusual
        # A count apply is an ADJUSTMENT with reason cycle_count: a loss too.
        "counted": [(week(0), "ADJUSTMENT", -15, "cycle_count")],
        # Losses add up over the week; 8 quiet weeks before.
        "split": [(week(0), "ADJUSTMENT", -6, "damaged"), (week(0, 30), "ADJUSTMENT", -7, None)],
        "small": losses([6]),  # below the unit threshold
        # Gains do not offset losses, and are none: 4 lost, below the threshold.
        "gainer": [(week(0), "ADJUSTMENT", 50, "found"), (week(0, 5), "ADJUSTMENT", -4, None)],
        "old": [(week(9), "ADJUSTMENT", -40, "damaged")],  # before the baseline
        "sold": [(week(0), "SALE", -100, None)],  # sales are not shrinkage
    }
    for variant_id, moves in variants.items():
        await plant(s, variant_id, f"p-{variant_id}", start + moves)
    return week_start, label


async def test_the_shrinkage_job_raises_exactly_the_unusual_weeks_once(engine, settings) -> None:
    s = Scenario(engine, settings)
    week_start, label = await plant_weeks(s)
    assert await invariant_violations(engine) == []

    run = await run_job(engine, settings, JOBS["shrinkage"])
    assert run is not None and run.outcome == "succeeded", run
    raised = ["counted", "leaky", "spike", "split"]
    assert run.detail == {
        "week": label,
        "weekStart": week_start.isoformat(),
        "candidates": 5,  # steady, spike, leaky, counted, split lost 10 or more
        "raised": 4,
        "alreadyRaised": 0,
        "variantIds": raised,
        "minUnits": 10,
        "z": 3.5,
    }
    rows = {r.variant_id: r for r in await kept(s)}
    assert sorted(rows) == raised
    assert {(r.rule, r.reference, r.actor) for r in rows.values()} == {
        ("unusual_shrinkage", label, "stock-service")
    }
    spike = rows["spike"]
    assert (spike.observed, spike.expected) == (45, 20)
    assert float(spike.score) == pytest.approx(0.6745 * 25)
    assert (rows["counted"].observed, rows["counted"].expected, rows["counted"].score) == (
        15, 0, None
    )
    assert rows["split"].observed == 13
    assert float(rows["leaky"].score) == pytest.approx(0.7979 * 30 / (3 / 8))
    events = {e["variant_id"]: e for e in await published(s)}
    assert sorted(events) == raised
    assert events["spike"] == {
        "variant_id": "spike", "product_id": "p-spike", "rule": "unusual_shrinkage",
        "observed": 45, "expected": 20, "score": pytest.approx(16.8625), "reference": label,
    }
    job = await s.scalar("SELECT outcome FROM job_runs WHERE job = 'shrinkage'")
    assert job == "succeeded"

    # Not due again this period; run by hand the same week it raises nothing twice.
    assert await run_job(engine, settings, JOBS["shrinkage"]) is None
    again = await run_job(engine, settings, JOBS["shrinkage"], force=True)
    assert again is not None and again.outcome == "succeeded"
    assert (again.detail["raised"], again.detail["alreadyRaised"]) == (0, 4)
    assert len(await kept(s)) == 4 and len(await published(s)) == 4


async def test_the_shrinkage_job_on_a_shop_without_losses_raises_nothing(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 10))
    run = await run_job(engine, settings, JOBS["shrinkage"])
    assert run is not None and run.outcome == "succeeded"
    assert (run.detail["candidates"], run.detail["raised"]) == (0, 0)
    assert await kept(s) == []


async def test_the_shrinkage_check_reads_the_losses_from_their_index(engine, settings) -> None:
    # A log of sales with a few losses among them: the weeks' losses are found from
    # `audit_log_losses`, not by a scan of the whole log (which grows for ever).
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,"
            " on_hand_after, reserved_after, version, actor, created_at)"
            " SELECT 'v' || (i % 500), CASE WHEN i % 1000 = 0 THEN 'ADJUSTMENT' ELSE 'SALE' END,"
            " -1, 0, 0, 0, i, 'test', now() - interval '1 minute' * i"
            " FROM generate_series(1, 20000) AS i"
        ))
        await conn.execute(text("ANALYZE audit_log"))
        week_start = (await conn.execute(anomaly_sql.LAST_COMPLETE_WEEK)).one().start
        plan = (await conn.execute(
            text("EXPLAIN (FORMAT JSON) " + str(anomaly_sql.WEEKLY_LOSSES.text)),
            {"week_start": week_start, "min_units": 1, "label": "2026-W01"},
        )).scalar_one()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    on_audit = [n for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "audit_log"]
    assert [n.get("Index Name") for n in on_audit] == ["audit_log_losses"], on_audit


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
