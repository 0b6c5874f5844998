"""CONTRACT.md, "Reconciliation", on the real database: every invariant checked, each
discrepancy kept with the run and published as `stock.anomaly` (`ledger_mismatch`)
through the outbox, nothing repaired; through the application, HTTP and the CLI.

The stock is made by the service itself (restocks, a consumed checkout and payment,
an adjustment), then broken behind its back with plain SQL, as a person with psql would.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.application.reconciliation import latest_run, reconcile
from service.settings import Settings
from tests.integration.test_http_api import API, client_for
from tests.support.invariants import invariant_violations
from tests.support.records import checkout, paid
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READER, WRITER, ADMIN = "r-secret", "w-secret", "a-secret"


async def _moved_shop(engine: AsyncEngine, settings: Settings) -> Scenario:
    """Three variants moved by the service: restocks, a hold, a sale, an adjustment."""
    s = Scenario(engine, settings)
    await s.restock(("shirt-m", 10), ("shirt-l", 4), ("poster", 2))
    await s.deliver(checkout("o-held", {"shirt-m": 3}))
    await s.deliver(checkout("o-sold", {"shirt-l": 1, "poster": 1}))
    await s.deliver(paid("o-sold"))
    await s.admin.adjust("poster", 5, reason="found a box")
    assert await invariant_violations(engine) == []
    return s


#: Each check is made twice: by a first run, which reads every audit row, and by a run
#: after a clean one, which reads each variant's log from the checkpoint that run left.
NEVER_RECONCILED, RECONCILED_BEFORE = "never reconciled", "reconciled before"


@pytest.fixture(params=[NEVER_RECONCILED, RECONCILED_BEFORE])
async def shop(request, engine: AsyncEngine, settings: Settings) -> Scenario:
    s = await _moved_shop(engine, settings)
    if request.param == RECONCILED_BEFORE:
        assert (await reconcile(engine, settings, "cli:earlier")).clean
        assert await s.scalar("SELECT count(*) FROM ledger_checkpoints") == 3
        # one more change after the checkpoints, read from the log
        await s.deliver(checkout("o-late", {"poster": 1}))
        await s.deliver(paid("o-late"))
    return s


@pytest.fixture
async def fresh_shop(engine: AsyncEngine, settings: Settings) -> Scenario:
    return await _moved_shop(engine, settings)


def found(report) -> set[tuple[str, str, int, int]]:
    return {(d.variant_id, d.kind.value, d.expected, d.actual) for d in report.discrepancies}


async def anomalies(s: Scenario) -> list[dict]:
    return [m.data for m in await s.outbox(s.settings.topic_stock_anomaly)]


async def append_by_hand(
    s: Scenario, variant_id: str, *, version: int, delta: int, on_hand_after: int
) -> None:
    """An ADJUSTMENT row appended with psql: the log refuses edits, not inserts."""
    await s.execute(
        """INSERT INTO audit_log (variant_id, change_type, delta_on_hand, delta_reserved,
               on_hand_after, reserved_after, version, actor)
           VALUES (:variant, 'ADJUSTMENT', :delta, 0, :after, 0, :v, 'psql')""",
        variant=variant_id, delta=delta, after=on_hand_after, v=version,
    )


# ------------------------------------------------------------------ the checks


async def test_a_consistent_database_is_clean_and_the_run_is_kept(engine, settings, shop) -> None:
    report = await reconcile(engine, settings, "cli:tester")
    assert report.clean and report.checked_variants == 3
    assert await anomalies(shop) == []
    latest = await latest_run(engine)
    assert latest is not None
    assert (latest.run_id, latest.actor, latest.checked_variants, latest.discrepancies) == (
        report.run_id, "cli:tester", 3, ()
    )


async def test_on_hand_changed_behind_the_service_is_a_ledger_mismatch(
    engine, settings, shop
) -> None:
    await shop.execute("UPDATE variants SET on_hand = on_hand + 7 WHERE variant_id = 'shirt-m'")
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {("shirt-m", "ledger_mismatch", 10, 17)}
    assert report.checked_variants == 3
    [anomaly] = await anomalies(shop)
    assert anomaly == {
        "variant_id": "shirt-m",
        "product_id": "p-shirt-m",
        "rule": "ledger_mismatch",
        "observed": 17,
        "expected": 10,
        "score": None,
        "reference": report.run_id,
    }
    assert await shop.stock("shirt-m") == (17, 3)  # nothing repaired


async def test_reserved_changed_behind_the_service_is_a_reserved_mismatch(
    engine, settings, shop
) -> None:
    await shop.execute("UPDATE variants SET reserved = 1 WHERE variant_id = 'poster'")
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {("poster", "reserved_mismatch", 0, 1)}


async def test_reserved_above_on_hand_is_out_of_bounds(engine, settings, shop) -> None:
    await shop.execute("ALTER TABLE variants DROP CONSTRAINT reserved_within_on_hand")
    await shop.execute("UPDATE variants SET reserved = 12 WHERE variant_id = 'shirt-m'")
    await shop.execute("ALTER TABLE variants DROP CONSTRAINT on_hand_not_negative")
    await shop.execute("UPDATE variants SET on_hand = -1 WHERE variant_id = 'shirt-l'")
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {
        ("shirt-m", "bounds", 10, 12),  # at most on_hand may be reserved
        ("shirt-m", "reserved_mismatch", 3, 12),
        ("shirt-l", "bounds", 0, -1),
        ("shirt-l", "ledger_mismatch", 3, -1),
    }
    assert len(await anomalies(shop)) == 4


async def test_a_version_out_of_step_with_the_audit_log_is_a_version_gap(
    engine, settings, shop
) -> None:
    versions = await shop.version("shirt-m")
    await shop.execute("UPDATE variants SET version = version + 1 WHERE variant_id = 'shirt-m'")
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {("shirt-m", "version_gap", versions, versions + 1)}


async def test_a_gap_in_the_audit_versions_is_a_version_gap(engine, settings, shop) -> None:
    # The log refuses edits, not inserts: a row appended by hand, skipping versions.
    n = await shop.version("poster")
    await append_by_hand(shop, "poster", version=n + 3, delta=0, on_hand_after=5)
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {("poster", "version_gap", n + 1, n + 3)}


async def test_a_deleted_variant_row_is_found_from_its_audit_log(engine, settings, shop) -> None:
    n = await shop.version("shirt-l")
    await shop.execute("DELETE FROM variants WHERE variant_id = 'shirt-l'")
    # Found from its checkpoint; a variant never reconciled has none, and only a full
    # run, reading every audit row, finds a log left without its row.
    checkpointed = await shop.scalar(
        "SELECT count(*) FROM ledger_checkpoints WHERE variant_id = 'shirt-l'"
    )
    report = await reconcile(engine, settings, "cli:tester", full=not checkpointed)
    assert found(report) == {
        ("shirt-l", "ledger_mismatch", 3, 0),
        ("shirt-l", "version_gap", n, 0),
    }
    assert report.checked_variants == 2
    assert {a["product_id"] for a in await anomalies(shop)} == {"shirt-l"}


async def test_a_held_line_of_an_unknown_variant_is_a_reserved_mismatch(
    engine, settings, shop
) -> None:
    await shop.execute("INSERT INTO order_lines VALUES ('o-held', 'ghost', 2)")
    report = await reconcile(engine, settings, "cli:tester")
    assert found(report) == {("ghost", "reserved_mismatch", 2, 0)}


# ------------------------------------------------------------------ the checkpoints


async def checkpoints(s: Scenario) -> dict[str, tuple[int, int]]:
    async with s.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT variant_id, through_version, on_hand_moves FROM ledger_checkpoints")
        )
        return {row.variant_id: (row.through_version, row.on_hand_moves) for row in rows}


async def variant_rows(s: Scenario) -> dict[str, tuple[int, int]]:
    async with s.engine.connect() as conn:
        rows = await conn.execute(text("SELECT variant_id, version, on_hand FROM variants"))
        return {row.variant_id: (row.version, row.on_hand) for row in rows}


async def test_each_run_moves_the_checkpoints_to_where_it_read(
    engine, settings, fresh_shop
) -> None:
    assert await checkpoints(fresh_shop) == {}
    assert (await reconcile(engine, settings, "cli:a")).clean
    assert await checkpoints(fresh_shop) == await variant_rows(fresh_shop)

    await fresh_shop.restock(("poster", 3))
    await fresh_shop.deliver(checkout("o-next", {"shirt-m": 2}))
    await fresh_shop.deliver(paid("o-next"))
    assert (await reconcile(engine, settings, "cli:b")).clean
    assert await checkpoints(fresh_shop) == await variant_rows(fresh_shop)


async def test_a_run_trusts_the_checkpoint_and_a_full_one_reads_the_log_again(
    engine, settings, fresh_shop
) -> None:
    assert (await reconcile(engine, settings, "cli:a")).clean
    # A checkpoint made wrong by hand: the next run adds to it and does not re-read the
    # versions below it, which is the point of keeping it.
    await fresh_shop.execute(
        "UPDATE ledger_checkpoints SET on_hand_moves = on_hand_moves + 5"
        " WHERE variant_id = 'shirt-m'"
    )
    assert found(await reconcile(engine, settings, "cli:b")) == {
        ("shirt-m", "ledger_mismatch", 15, 10)
    }
    # A full run reads every audit row, finds the stock right, and rewrites the checkpoint.
    assert (await reconcile(engine, settings, "cli:c", full=True)).clean
    assert await checkpoints(fresh_shop) == await variant_rows(fresh_shop)
    assert (await reconcile(engine, settings, "cli:d")).clean


async def test_a_log_with_a_gap_keeps_its_checkpoint_and_is_reported_every_run(
    engine, settings, fresh_shop
) -> None:
    assert (await reconcile(engine, settings, "cli:a")).clean
    n = await fresh_shop.version("poster")
    await append_by_hand(fresh_shop, "poster", version=n + 2, delta=0, on_hand_after=5)
    # Its row moved along, so a run reads the variant's log past the checkpoint.
    await fresh_shop.execute(
        "UPDATE variants SET version = :v WHERE variant_id = 'poster'", v=n + 2
    )
    for actor in ("cli:b", "cli:c"):
        report = await reconcile(engine, settings, actor)
        assert found(report) == {("poster", "version_gap", n + 1, n + 2)}
        assert (await checkpoints(fresh_shop))["poster"] == (n, 5)


async def test_audit_rows_appended_by_hand_to_a_variant_that_did_not_move_need_a_full_run(
    engine, settings, fresh_shop
) -> None:
    assert (await reconcile(engine, settings, "cli:a")).clean
    n = await fresh_shop.version("poster")
    await append_by_hand(fresh_shop, "poster", version=n + 1, delta=4, on_hand_after=9)
    # A run reads the logs of the variants whose row moved; this one's did not.
    assert (await reconcile(engine, settings, "cli:b")).clean
    assert found(await reconcile(engine, settings, "cli:c", full=True)) == {
        ("poster", "ledger_mismatch", 9, 5),
        ("poster", "version_gap", n + 1, n),
    }


async def test_every_run_is_kept_and_the_latest_is_shown(engine, settings, fresh_shop) -> None:
    assert await latest_run(engine) is None
    first = await reconcile(engine, settings, "cli:a")
    await fresh_shop.execute("UPDATE variants SET on_hand = 0 WHERE variant_id = 'poster'")
    second = await reconcile(engine, settings, "cli:b")
    latest = await latest_run(engine)
    assert latest is not None and latest.run_id == second.run_id != first.run_id
    assert found(latest) == {("poster", "ledger_mismatch", 5, 0)}
    assert await fresh_shop.scalar("SELECT count(*) FROM reconciliation_runs") == 2
    stored = await fresh_shop.scalar(
        "SELECT discrepancies FROM reconciliation_runs WHERE run_id = :r", r=second.run_id
    )
    assert stored == [
        {
            "variant_id": "poster",
            "product_id": "p-poster",
            "kind": "ledger_mismatch",
            "expected": 5,
            "actual": 0,
        }
    ]


# ------------------------------------------------------------------ HTTP


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    tokens = f"shelf:{READER}:read, till:{WRITER}:write, boss:{ADMIN}:admin"
    return settings.model_copy(
        update={"api_tokens": SecretStr(tokens), "api_reads_require_token": True}
    )


@pytest.fixture
async def http(engine: AsyncEngine, scoped: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, scoped) as client:
        yield client


async def test_http_finds_a_change_behind_the_service_with_an_admin_token(
    http, fresh_shop
) -> None:
    latest = await http.get(f"{API}/reconciliation/latest", headers=bearer(READER))
    assert latest.status_code == 404
    assert latest.json()["code"] == "no_reconciliation_run"

    await fresh_shop.execute("UPDATE variants SET on_hand = 1 WHERE variant_id = 'poster'")
    refused = await http.post(f"{API}/reconciliation", headers=bearer(WRITER))
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert await fresh_shop.scalar("SELECT count(*) FROM reconciliation_runs") == 0

    answer = await http.post(f"{API}/reconciliation", headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    run = answer.json()
    assert run["checkedVariants"] == 3
    assert run["actor"] == "api:boss"
    assert run["discrepancies"] == [
        {"variantId": "poster", "kind": "ledger_mismatch", "expected": 5, "actual": 1}
    ]
    [anomaly] = await anomalies(fresh_shop)
    assert anomaly["reference"] == run["runId"]

    latest = await http.get(f"{API}/reconciliation/latest", headers=bearer(READER))
    assert latest.status_code == 200
    assert latest.json() == run

    whole = await http.post(f"{API}/reconciliation?full=true", headers=bearer(ADMIN))
    assert whole.status_code == 200, whole.text
    assert whole.json()["discrepancies"] == run["discrepancies"]
    runs = await fresh_shop.scalar("SELECT count(*) FROM reconciliation_runs")
    unclear = await http.post(f"{API}/reconciliation?full=maybe", headers=bearer(ADMIN))
    assert unclear.status_code in (400, 422), unclear.text
    assert unclear.json()["code"] and "full" in unclear.text
    assert await fresh_shop.scalar("SELECT count(*) FROM reconciliation_runs") == runs
    assert (await http.get(f"{API}/reconciliation/latest")).status_code == 401


# ------------------------------------------------------------------ the CLI


async def stock(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCK_")}
    env["STOCK_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.entrypoints.cli", *args,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_exits_0_when_clean_and_1_on_a_change_behind_the_service(
    database_url, fresh_shop
) -> None:
    code, out, err = await stock(database_url, "reconcile")
    assert code == 0, err
    assert "3 variants checked" in out and "0 discrepancies" in out

    await fresh_shop.execute(
        "UPDATE variants SET on_hand = on_hand + 2 WHERE variant_id = 'shirt-l'"
    )
    code, out, err = await stock(database_url, "reconcile", "--json", "--actor", "night-shift")
    assert code == 1, err
    run = json.loads(out)
    assert run["actor"] == "cli:night-shift"
    assert run["checkedVariants"] == 3
    assert run["discrepancies"] == [
        {"variantId": "shirt-l", "kind": "ledger_mismatch", "expected": 3, "actual": 5}
    ]
    assert "Traceback" not in err
    [anomaly] = await fresh_shop.outbox("stock.anomaly")  # the process's topic: the default
    assert anomaly.data["reference"] == run["runId"]

    for full in ((), ("--full",)):
        code, out, _ = await stock(database_url, "reconcile", *full)
        assert code == 1
        assert "shirt-l: ledger_mismatch expected=3 actual=5" in out


async def test_the_cli_without_the_schema_says_to_migrate(postgres_admin_url) -> None:
    code, out, err = await stock(postgres_admin_url, "reconcile")  # no stock tables there
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    first, hint = err.splitlines()
    assert first.startswith("stock reconcile: cannot use postgresql://")
    assert "stock migrate" in hint


async def test_a_person_accepts_an_outside_change_into_the_log_and_the_check_is_clean(
    database_url, engine, fresh_shop
) -> None:
    await fresh_shop.execute(
        "UPDATE variants SET on_hand = on_hand + 2 WHERE variant_id = 'shirt-l'"
    )
    # An adjust measures from the row, so it cannot close the gap: the log stays short.
    await fresh_shop.admin.adjust("shirt-l", 5, reason="recount")
    assert found(await reconcile(engine, fresh_shop.settings, "cli:t")) == {
        ("shirt-l", "ledger_mismatch", 3, 5)
    }

    code, out, err = await stock(
        database_url, "reconcile", "--accept", "shirt-l", "--accept", "poster", "--actor", "ana"
    )
    assert code == 0, err
    assert "shirt-l: +2 booked as ADJUSTMENT (ledger_correction)" in out
    assert "poster" not in out  # its log adds up: nothing to accept

    assert (await reconcile(engine, fresh_shop.settings, "cli:t")).clean
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT delta_on_hand, on_hand_after, reason, actor FROM audit_log"
                    " WHERE variant_id = 'shirt-l' ORDER BY version DESC LIMIT 1"
                )
            )
        ).one()
    assert tuple(row) == (2, 5, "ledger_correction", "cli:ana")
    assert await fresh_shop.stock("shirt-l") == (5, 0)
