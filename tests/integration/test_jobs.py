"""Scheduled jobs (`service/application/jobs.py`) on the real database: leader
election by advisory lock and `job_runs`, outcomes, `/metrics`, `GET /api/inventory/jobs`
and the `stock prune` / `stock jobs` commands.

Several schedulers on one database stand for several workers: each has its own
engine (its own connections), as separate processes would.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.adapters.database import create_engine
from service.application.jobs import JOBS, Job, JobScheduler, job_statuses, run_job
from service.entrypoints.http.app import create_app
from service.entrypoints.http.services import ApiServices
from service.settings import Settings
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
READER = "reader:read-secret:read"


class CountingJob:
    """A job that counts its runs (and takes a little time, so runs would overlap)."""

    def __init__(self, name: str = "count", seconds: float = 0.2, fail: bool = False) -> None:
        self.runs: list[str] = []
        self.started = asyncio.Event()
        self.seconds = seconds
        self.fail = fail
        self.job = Job(name, "counts its runs", "job_prune_interval_hours", self.work)

    async def work(self, engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
        self.runs.append(actor)
        self.started.set()
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("the shelf fell over")
        return {"run": len(self.runs)}


@pytest.fixture
async def workers(database_url: str) -> AsyncIterator[list[AsyncEngine]]:
    """Three engines on the test database: three workers' pools."""
    engines = [create_engine(database_url, pool_size=2) for _ in range(3)]
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.dispose()


async def job_row(s: Scenario, job: str) -> Any:
    async with s.engine.connect() as conn:
        return (
            await conn.execute(text("SELECT * FROM job_runs WHERE job = :j"), {"j": job})
        ).first()


# ------------------------------------------------------------------ leader election


async def test_schedulers_of_several_workers_run_a_due_job_once(
    engine, settings, workers
) -> None:
    counting = CountingJob()
    schedulers = [
        JobScheduler(e, settings, jobs={"count": counting.job}, runner=f"worker-{n}")
        for n, e in enumerate(workers)
    ]
    # Every worker looks at the same moment, several times over.
    results = await asyncio.gather(*[sch.run_due() for sch in schedulers for _ in range(3)])
    assert len(counting.runs) == 1
    [run] = [r["count"] for r in results if "count" in r]
    assert run.outcome == "succeeded" and run.detail == {"run": 1}
    s = Scenario(engine, settings)
    row = await job_row(s, "count")
    assert (row.outcome, row.runner, row.detail) == ("succeeded", run.runner, {"run": 1})
    assert row.finished_at >= row.started_at and row.last_succeeded_at == row.finished_at

    # Not due again within its period, not even for a worker that restarted.
    restarted = JobScheduler(workers[0], settings, jobs={"count": counting.job}, runner="new")
    assert await asyncio.gather(restarted.run_due(), *[sch.run_due() for sch in schedulers]) == [
        {}, {}, {}, {}
    ]
    assert len(counting.runs) == 1

    # A period later (24 hours by default) it is due again: once more, once.
    await s.execute("UPDATE job_runs SET started_at = started_at - interval '24 hours'")
    await asyncio.gather(restarted.run_due(), *[sch.run_due() for sch in schedulers])
    assert len(counting.runs) == 2


async def test_the_prune_job_runs_once_for_two_workers_and_records_what_it_deleted(
    engine, settings, workers
) -> None:
    s = Scenario(engine, settings)
    await s.execute(
        "INSERT INTO processed_events (source, event_id, processed_at) "
        "SELECT 'seed', 'e' || n, now() - interval '9 days' FROM generate_series(1, 5) AS n"
    )
    first, second = (
        JobScheduler(e, settings, jobs={"prune": JOBS["prune"]}, runner=f"w{n}")
        for n, e in enumerate(workers[:2])
    )
    ran = await asyncio.gather(first.run_due(), second.run_due())
    [run] = [r["prune"] for r in ran if r]
    assert run.outcome == "succeeded"
    assert run.detail["tables"]["processed_events"]["deleted"] == 5
    row = await job_row(s, "prune")
    assert row.detail["tables"]["processed_events"]["deleted"] == 5
    assert row.detail["dryRun"] is False


async def test_the_reconcile_job_records_its_run_and_what_it_found(engine, settings) -> None:
    s = Scenario(engine, settings)
    await s.restock(("a", 10), ("b", 5))
    run = await run_job(engine, settings, JOBS["reconcile"])
    assert run is not None and run.outcome == "succeeded"
    assert run.detail == {
        "runId": run.detail["runId"], "checkedVariants": 2, "discrepancies": 0, "kinds": {}
    }
    actor = await s.scalar(
        "SELECT actor FROM reconciliation_runs WHERE run_id = :r", r=run.detail["runId"]
    )
    assert actor == "stock-service"
    # A change behind the service's back is found; the job itself still succeeded.
    await s.execute("UPDATE variants SET on_hand = 11 WHERE variant_id = 'a'")
    again = await run_job(engine, settings, JOBS["reconcile"], force=True)
    assert again is not None and again.outcome == "succeeded"
    assert again.detail["discrepancies"] == 1
    assert again.detail["kinds"] == {"ledger_mismatch": 1}
    assert (await job_row(s, "reconcile")).detail["discrepancies"] == 1


async def test_a_failed_run_is_recorded_and_tried_again_an_hour_later(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    failing = CountingJob(seconds=0, fail=True)
    scheduler = JobScheduler(engine, settings, jobs={"count": failing.job})
    run = (await scheduler.run_due())["count"]
    assert run.outcome == "failed"
    assert run.detail == {"error": "RuntimeError: the shelf fell over"}
    row = await job_row(s, "count")
    assert (row.outcome, row.detail, row.last_succeeded_at) == (
        "failed", {"error": "RuntimeError: the shelf fell over"}, None
    )
    assert await scheduler.run_due() == {}  # not at once: it would fail in a loop
    await s.execute("UPDATE job_runs SET finished_at = finished_at - interval '61 minutes'")
    failing.fail = False
    assert (await scheduler.run_due())["count"].outcome == "succeeded"
    row = await job_row(s, "count")
    assert row.last_succeeded_at is not None


async def test_a_run_stopped_half_way_is_marked_failed_for_another_worker_to_retry(
    engine, settings
) -> None:
    s = Scenario(engine, settings)
    slow = CountingJob(seconds=30)
    scheduler = JobScheduler(engine, settings, jobs={"count": slow.job})
    task = asyncio.create_task(scheduler.run_due())
    await asyncio.wait_for(slow.started.wait(), 10)
    assert (await job_row(s, "count")).outcome == "running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await job_row(s, "count")
    assert row.outcome == "failed" and "interrupted" in row.detail["error"]
    [status] = await job_statuses(engine, settings, {"count": slow.job})
    assert status.next_due == row.finished_at + timedelta(hours=1)


async def test_the_scheduler_loop_runs_due_jobs_and_stops_cleanly(engine, settings) -> None:
    counting = CountingJob(seconds=0)
    scheduler = JobScheduler(engine, settings, jobs={"count": counting.job}, tick_seconds=0.1)
    task = asyncio.create_task(scheduler.run_forever())
    await asyncio.wait_for(counting.started.wait(), 10)
    assert scheduler.running
    await asyncio.sleep(0.3)  # several more ticks: still one run
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counting.runs == ["stock-service"]
    assert not scheduler.running


# ------------------------------------------------------------------ what shows


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_tokens": SecretStr(READER)})


async def test_jobs_show_in_metrics_and_in_the_jobs_endpoint(engine, api_settings) -> None:
    scheduler = JobScheduler(engine, api_settings, jobs={"prune": JOBS["prune"]})
    run = (await scheduler.run_due())["prune"]
    app = create_app(ApiServices.build(api_settings, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        answer = await http.get("/api/inventory/jobs")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        metrics = (await http.get("/metrics")).text

    assert (body["schedulerEnabled"], body["schedulerRunning"]) == (True, False)
    jobs = {job["name"]: job for job in body["jobs"]}
    assert set(jobs) == {
        "prune", "reconcile", "policies", "shrinkage", "rollup",
        "report-daily", "report-weekly", "report-monthly",
    }
    prune = jobs["prune"]
    assert prune["intervalHours"] == 24
    assert prune["lastRun"]["outcome"] == "succeeded"
    assert prune["lastRun"]["runner"] == run.runner
    assert prune["lastRun"]["detail"]["tables"]["processed_events"]["retentionDays"] == 8
    assert prune["lastSucceededAt"] == prune["lastRun"]["finishedAt"]
    started = prune["lastRun"]["startedAt"]
    assert _seconds(prune["nextDue"]) - _seconds(started) == 24 * 3600
    reconcile = jobs["reconcile"]
    assert reconcile["intervalHours"] == 168
    assert reconcile["lastRun"] is None and reconcile["lastSucceededAt"] is None

    assert 'stock_job_runs_total{job="prune",outcome="succeeded"}' in metrics
    [success] = [
        line for line in metrics.splitlines()
        if line.startswith('stock_job_last_success_timestamp_seconds{job="prune"}')
    ]
    assert float(success.split()[-1]) == pytest.approx(run.finished_at.timestamp())
    assert 'stock_job_last_duration_seconds{job="prune"}' in metrics
    assert 'stock_job_last_success_timestamp_seconds{job="reconcile"} 0.0' in metrics
    assert 'stock_pruned_rows_total{table="processed_events"}' in metrics


async def test_the_jobs_endpoint_is_a_read(engine, api_settings) -> None:
    needs_token = api_settings.model_copy(update={"api_reads_require_token": True})
    app = create_app(ApiServices.build(needs_token, engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stock"
    ) as http:
        assert (await http.get("/api/inventory/jobs")).status_code == 401
        answer = await http.get(
            "/api/inventory/jobs", headers={"Authorization": "Bearer read-secret"}
        )
        assert answer.status_code == 200


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------ the commands


async def _stock(database_url: str, *args: str, **env_extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    env.update(STOCK_DATABASE_URL=database_url, **env_extra)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.entrypoints.cli", *args,
        cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_stock_prune_dry_run_then_prune_and_stock_jobs(
    engine, settings, database_url
) -> None:
    s = Scenario(engine, settings)
    await s.execute(
        "INSERT INTO processed_events (source, event_id, processed_at) "
        "SELECT 'seed', 'e' || n, now() - interval '9 days' FROM generate_series(1, 4) AS n"
    )
    code, out, err = await _stock(database_url, "prune", "--dry-run", "--json")
    assert code == 0, err
    dry = json.loads(out)
    assert dry["dryRun"] is True and dry["tables"]["processed_events"]["deleted"] == 4
    assert await s.scalar("SELECT count(*) FROM processed_events") == 4
    assert await job_row(s, "prune") is None  # a dry run is not a run of the job

    code, out, err = await _stock(database_url, "prune")
    assert code == 0, err
    assert out.startswith("prune: deleted 4 rows in ")
    assert "  processed_events: 4 (older than 8 days: before " in out
    assert "    CONFIRMED: 0 (older than 365 days: before " in out
    assert "  outbox: 0 (older than 24 hours: before " in out
    assert await s.scalar("SELECT count(*) FROM processed_events") == 0
    row = await job_row(s, "prune")
    assert row.outcome == "succeeded" and row.runner.startswith("cli:")

    code, out, err = await _stock(database_url, "jobs")
    assert code == 0, err
    assert "in-process scheduler: on" in out
    assert "prune: every 24h" in out and "last run: succeeded" in out
    assert "reconcile: every 168h" in out and "last run: never" in out

    code, out, err = await _stock(
        database_url, "jobs", "--json", STOCK_JOBS_ENABLED="false"
    )
    assert code == 0, err
    listed = json.loads(out)
    assert listed["schedulerEnabled"] is False
    assert [job["name"] for job in listed["jobs"]] == [
        "prune", "reconcile", "policies", "shrinkage", "rollup",
        "report-daily", "report-weekly", "report-monthly"]


async def test_stock_jobs_run_runs_a_job_now_even_if_it_is_not_due(
    engine, settings, database_url
) -> None:
    s = Scenario(engine, settings)
    await run_job(engine, settings, JOBS["prune"])
    first = await job_row(s, "prune")
    code, out, err = await _stock(database_url, "jobs", "run", "prune", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert (run["job"], run["outcome"]) == ("prune", "succeeded")
    second = await job_row(s, "prune")
    assert second.started_at > first.started_at and second.runner == run["runner"]

    code, out, err = await _stock(database_url, "jobs", "run", "nightly")
    assert code == 2 and "invalid choice: 'nightly'" in err


async def test_stock_prune_without_a_database_says_so(database_url) -> None:
    code, _, err = await _stock("postgresql://postgres@127.0.0.1:1/nowhere", "prune", "--json")
    assert code == 2
    assert "stock prune: cannot reach postgresql://postgres@127.0.0.1:1/nowhere" in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------ in the worker


@pytest.mark.parametrize("enabled", [True, False], ids=["jobs-enabled", "jobs-disabled"])
async def test_stock_jobs_enabled_decides_whether_a_worker_runs_the_scheduler(
    engine, kafka_settings, enabled
) -> None:
    from service.entrypoints.worker import Worker

    settings = kafka_settings.model_copy(update={"jobs_enabled": enabled})
    worker = Worker(settings, sweep=False, relay=False)
    await worker.start()
    try:
        tasks = {task.get_name() for task in worker._tasks}
        if enabled:
            assert worker.scheduler is not None and "jobs" in tasks
            for _ in range(50):
                if worker.scheduler.running:
                    break
                await asyncio.sleep(0.05)
        else:
            assert worker.scheduler is None and "jobs" not in tasks
        app = create_app(ApiServices.build(settings, engine, worker))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://stock"
        ) as http:
            body = (await http.get("/api/inventory/jobs")).json()
        assert (body["schedulerEnabled"], body["schedulerRunning"]) == (enabled, enabled)
    finally:
        await worker.stop()
    if enabled:
        assert worker.scheduler is not None and not worker.scheduler.running
