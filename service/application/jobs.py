"""Scheduled maintenance: `prune` daily, `reconcile` and `shrinkage` weekly, run once per
period by one of however many workers there are.

Every worker runs a `JobScheduler` (unless `STOCK_JOBS_ENABLED=false`, for operators
who run `stock prune` and `stock reconcile` as Kubernetes CronJobs instead). Each
minute it asks, for each job, whether the job is due, and runs it if it wins the
claim. The claim is one short transaction:

1. `pg_try_advisory_xact_lock` on the job's key: a worker that does not get it skips
   the job this minute (another is claiming it right now);
2. the job's row in `job_runs` says when it last started, and how that run ended;
   the job is due when it never ran, when its last start is a period old, or when
   its last run failed and an hour (at most a period) has passed since;
3. the row is set to `running`, started now, by this runner (`host/pid`), and the
   transaction commits, which frees the lock.

A second worker that claims after that commit sees the new start and finds the job
not due, so N workers run it once per period, and a worker that restarts does not
run it again. Time is the database's (`now()`), so the workers' clocks do not matter.
The run happens outside the claim (prune commits batch by batch; reconcile is its
own transaction), then the row gets its outcome, its end and its detail (what was
deleted, what was found). A run interrupted by a stop is marked failed, so another
worker retries it within the hour; a worker that dies mid-run leaves its row
`running`, and the job runs again when its next period comes.

The hold sweeper (`expiry.py`) is not one of these: it runs every few seconds in every
worker, and FOR UPDATE SKIP LOCKED shares its work out instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics
from service.adapters.database import describe, is_transient, retry_transient
from service.application.retention import prune
from service.domain.model import SERVICE_ACTOR
from service.settings import Settings

log = logging.getLogger(__name__)

#: A failed run is tried again this long after it ended (or after a period, if shorter).
RETRY_FAILED_AFTER = timedelta(hours=1)
#: How often a scheduler looks for due jobs and re-reads the job metrics.
DEFAULT_TICK_SECONDS = 60.0

JobWork = Callable[[AsyncEngine, Settings, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    #: The setting (hours) that says how often it runs.
    interval_setting: str
    #: (engine, settings, actor) -> the run's detail, kept in job_runs (JSON).
    work: JobWork

    def interval(self, settings: Settings) -> timedelta:
        return timedelta(hours=float(getattr(settings, self.interval_setting)))


async def _prune(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
    return (await prune(engine, settings)).as_json()


async def _policies(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
    from service.application.policies import refresh_policies

    return (await refresh_policies(engine, settings)).as_json()


async def _reconcile(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
    from service.application.reconciliation import reconcile

    report = await reconcile(engine, settings, actor)
    found: dict[str, int] = {}
    for discrepancy in report.discrepancies:
        found[discrepancy.kind.value] = found.get(discrepancy.kind.value, 0) + 1
    return {
        "runId": report.run_id,
        "checkedVariants": report.checked_variants,
        "discrepancies": len(report.discrepancies),
        "kinds": found,
    }


async def _rollup(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
    from service.application.analytics import roll_up

    return (await roll_up(engine)).as_json()


def _report(kind: str) -> JobWork:
    async def work(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
        from service.application.reports import scheduled_report

        return await scheduled_report(engine, settings, kind)

    return work


async def _shrinkage(engine: AsyncEngine, settings: Settings, actor: str) -> dict[str, Any]:
    from service.application.anomaly_checks import check_shrinkage

    return (await check_shrinkage(engine, settings, actor)).as_json()


#: Every scheduled job, by name.
JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "prune",
            "delete processed events, dead letters, finished orders and published outbox "
            "rows past their retention",
            "job_prune_interval_hours",
            _prune,
        ),
        Job(
            "reconcile",
            "check every variant against the invariants; publish stock.anomaly per "
            "discrepancy",
            "job_reconcile_interval_hours",
            _reconcile,
        ),
        Job(
            "policies",
            "recompute every variant's 30-day demand, its supplier's measured lead time and "
            "its computed reorder point",
            "job_policies_interval_hours",
            _policies,
        ),
        Job(
            "shrinkage",
            "judge every variant's losses of the last complete ISO week against its 8 weeks "
            "before; publish stock.anomaly (unusual_shrinkage) per unusual variant, once a week",
            "job_shrinkage_interval_hours",
            _shrinkage,
        ),
        Job(
            "rollup",
            "add every whole past UTC day to variant_daily_sales (units sold per variant and "
            "day) and rank every variant's sales of the 90 days before this hour into "
            "abc_tiers, which abcClass reads",
            "job_rollup_interval_hours",
            _rollup,
        ),
        *(
            Job(
                f"report-{kind}",
                f"write the {kind} report of the last {period} that has ended (Markdown, CSV, "
                "PNG charts under STOCK_REPORTS_DIR) unless it is written already",
                "job_reports_interval_hours",
                _report(kind),
            )
            for kind, period in (("daily", "UTC day"), ("weekly", "ISO week"),
                                 ("monthly", "month"))
        ),
    )
}


def runner_name() -> str:
    """Who runs a job: this host and process."""
    return f"{socket.gethostname()}/{os.getpid()}"


def lock_key(job: str) -> int:
    """The job's advisory lock key: a stable signed 64-bit number from its name."""
    digest = hashlib.sha256(f"stock-job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ------------------------------------------------------------------ job_runs

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_NOW = text("SELECT now()")
_LAST_RUN = text(
    """
    SELECT job, started_at, finished_at, outcome, detail, runner, last_succeeded_at
    FROM job_runs WHERE job = :job
    """
)
_ALL_RUNS = text(
    """
    SELECT job, started_at, finished_at, outcome, detail, runner, last_succeeded_at
    FROM job_runs
    """
)
_START = text(
    """
    INSERT INTO job_runs AS r (job, started_at, outcome, detail, runner)
    VALUES (:job, now(), 'running', '{}'::jsonb, :runner)
    ON CONFLICT (job) DO UPDATE SET
        started_at = excluded.started_at, finished_at = NULL, outcome = 'running',
        detail = '{}'::jsonb, runner = excluded.runner
    RETURNING started_at
    """
)
# Only the run this runner started: a later run's row is not overwritten by a late end.
_FINISH = text(
    """
    UPDATE job_runs SET
        finished_at = now(), outcome = :outcome, detail = CAST(:detail AS jsonb),
        last_succeeded_at = CASE WHEN :outcome = 'succeeded' THEN now()
                                 ELSE last_succeeded_at END
    WHERE job = :job AND started_at = :started_at AND runner = :runner
    RETURNING finished_at
    """
)


@dataclass(frozen=True)
class LastRun:
    """A job's row of job_runs."""

    started_at: datetime
    finished_at: datetime | None
    outcome: str
    detail: dict[str, Any]
    runner: str
    last_succeeded_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> LastRun:
        detail = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
        return cls(
            row.started_at,
            row.finished_at,
            row.outcome,
            detail,
            row.runner,
            row.last_succeeded_at,
        )


def next_due(last: LastRun | None, interval: timedelta, now: datetime) -> datetime:
    """When a job with this last run is due (`now` if it never ran)."""
    if last is None:
        return now
    due = last.started_at + interval
    if last.outcome == "failed" and last.finished_at is not None:
        due = min(due, last.finished_at + min(interval, RETRY_FAILED_AFTER))
    return due


async def _claim(
    conn: AsyncConnection, job: Job, interval: timedelta, runner: str, force: bool
) -> datetime | None:
    """In the caller's transaction: the claim's start, or None (not due, or another
    worker is claiming it now)."""
    key = {"key": lock_key(job.name)}
    if force:
        await conn.execute(_LOCK, key)
    elif not (await conn.execute(_TRY_LOCK, key)).scalar_one():
        return None
    now: datetime = (await conn.execute(_NOW)).scalar_one()
    row = (await conn.execute(_LAST_RUN, {"job": job.name})).first()
    last = None if row is None else LastRun.of(row)
    if not force and next_due(last, interval, now) > now:
        return None
    started: datetime = (
        await conn.execute(_START, {"job": job.name, "runner": runner})
    ).scalar_one()
    return started


@dataclass(frozen=True)
class JobRun:
    """One run of a job, as it ended."""

    job: str
    runner: str
    started_at: datetime
    finished_at: datetime
    outcome: str
    detail: dict[str, Any]

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


async def run_job(
    engine: AsyncEngine,
    settings: Settings,
    job: Job,
    *,
    runner: str | None = None,
    actor: str = SERVICE_ACTOR,
    force: bool = False,
    give_up_after: float = 60.0,
) -> JobRun | None:
    """Claim `job` and run it if it is due (`force`: now, due or not); None if it was
    not claimed. A failure of the job itself is a `failed` run, not an exception; a
    database that cannot be reached to claim or to record the run, for
    `give_up_after` seconds, is `TransientDatabaseError`."""
    runner = runner or runner_name()
    interval = job.interval(settings)

    async def claim() -> datetime | None:
        async with engine.begin() as conn:
            return await _claim(conn, job, interval, runner, force)

    started_at = await retry_transient(
        claim,
        what=f"claim of job {job.name}",
        initial_backoff=settings.retry_initial_backoff_seconds,
        max_backoff=settings.retry_max_backoff_seconds,
        give_up_after=give_up_after,
    )
    if started_at is None:
        return None
    log.info("job %s: started by %s", job.name, runner)
    clock = time.monotonic()
    try:
        detail = await job.work(engine, settings, actor)
        outcome = "succeeded"
    except asyncio.CancelledError:
        # Stopped: say so, briefly, so another worker retries it within the hour.
        detail = {"error": "interrupted: the process stopped"}
        await asyncio.shield(
            _finish_quietly(engine, settings, job, runner, started_at, "failed", detail)
        )
        raise
    except Exception as error:
        log.error("job %s failed: %s", job.name, describe(error), exc_info=error)
        detail = {"error": describe(error)}
        outcome = "failed"
    finished_at = await _finish(
        engine, settings, job, runner, started_at, outcome, detail, give_up_after
    )
    seconds = time.monotonic() - clock
    metrics.JOB_RUNS.labels(job.name, outcome).inc()
    metrics.JOB_LAST_DURATION.labels(job.name).set(seconds)
    if outcome == "succeeded":
        metrics.JOB_LAST_SUCCESS.labels(job.name).set(finished_at.timestamp())
        log.info("job %s: succeeded in %.1fs", job.name, seconds)
    return JobRun(job.name, runner, started_at, finished_at, outcome, detail)


async def _finish(
    engine: AsyncEngine,
    settings: Settings,
    job: Job,
    runner: str,
    started_at: datetime,
    outcome: str,
    detail: dict[str, Any],
    give_up_after: float = 60.0,
) -> datetime:
    params = {
        "job": job.name,
        "runner": runner,
        "started_at": started_at,
        "outcome": outcome,
        "detail": json.dumps(detail, default=str),
    }

    async def finish() -> datetime:
        async with engine.begin() as conn:
            ended = (await conn.execute(_FINISH, params)).scalar_one_or_none()
            if ended is None:  # another run took the row meanwhile (`stock jobs run`)
                ended = (await conn.execute(_NOW)).scalar_one()
            return ended  # type: ignore[no-any-return]

    return await retry_transient(
        finish,
        what=f"end of job {job.name}",
        initial_backoff=settings.retry_initial_backoff_seconds,
        max_backoff=settings.retry_max_backoff_seconds,
        give_up_after=give_up_after,
    )


async def _finish_quietly(
    engine: AsyncEngine,
    settings: Settings,
    job: Job,
    runner: str,
    started_at: datetime,
    outcome: str,
    detail: dict[str, Any],
) -> None:
    try:
        await asyncio.wait_for(
            _finish(engine, settings, job, runner, started_at, outcome, detail), 2.0
        )
    except Exception as error:
        log.warning("job %s: its interruption was not recorded (%s)", job.name, describe(error))


# ------------------------------------------------------------------ status


@dataclass(frozen=True)
class JobStatus:
    """A job as `GET /api/inventory/jobs` and `stock jobs` show it."""

    name: str
    description: str
    interval: timedelta
    last: LastRun | None
    next_due: datetime

    def as_json(self) -> dict[str, Any]:
        last = self.last
        return {
            "name": self.name,
            "description": self.description,
            "intervalHours": self.interval / timedelta(hours=1),
            "lastRun": None
            if last is None
            else {
                "startedAt": last.started_at,
                "finishedAt": last.finished_at,
                "outcome": last.outcome,
                "runner": last.runner,
                "detail": last.detail,
            },
            "lastSucceededAt": None if last is None else last.last_succeeded_at,
            "nextDue": self.next_due,
        }


async def job_statuses(
    engine: AsyncEngine, settings: Settings, jobs: Mapping[str, Job] = JOBS
) -> list[JobStatus]:
    """Every job's last run (whichever worker or command made it) and next due time.
    Sets the job gauges of /metrics from them too."""
    async with engine.connect() as conn:
        now: datetime = (await conn.execute(_NOW)).scalar_one()
        rows = {row.job: LastRun.of(row) for row in await conn.execute(_ALL_RUNS)}
    statuses = [
        JobStatus(
            job.name,
            job.description,
            job.interval(settings),
            rows.get(job.name),
            next_due(rows.get(job.name), job.interval(settings), now),
        )
        for job in jobs.values()
    ]
    for status in statuses:
        _set_gauges(status)
    return statuses


def _set_gauges(status: JobStatus) -> None:
    last = status.last
    succeeded = None if last is None else last.last_succeeded_at
    metrics.JOB_LAST_SUCCESS.labels(status.name).set(
        0 if succeeded is None else succeeded.timestamp()
    )
    if last is not None and last.finished_at is not None:
        metrics.JOB_LAST_DURATION.labels(status.name).set(
            (last.finished_at - last.started_at).total_seconds()
        )


# ------------------------------------------------------------------ scheduler


@dataclass
class JobScheduler:
    """Runs each due job of `jobs`, checking every `tick_seconds`."""

    engine: AsyncEngine
    settings: Settings
    jobs: Mapping[str, Job] = field(default_factory=lambda: dict(JOBS))
    tick_seconds: float = DEFAULT_TICK_SECONDS
    runner: str = field(default_factory=runner_name)
    #: True while `run_forever` runs.
    running: bool = field(default=False, init=False)
    _outage: bool = field(default=False, init=False)

    async def run_due(self) -> dict[str, JobRun]:
        """One look: every due job this scheduler wins is run, one after the other."""
        ran: dict[str, JobRun] = {}
        for job in self.jobs.values():
            run = await run_job(self.engine, self.settings, job, runner=self.runner)
            if run is not None:
                ran[job.name] = run
        return ran

    async def refresh_metrics(self) -> None:
        await job_statuses(self.engine, self.settings, self.jobs)

    async def run_forever(self) -> None:
        self.running = True
        for job in self.jobs:  # every series exists from the start, at 0
            for outcome in ("succeeded", "failed"):
                metrics.JOB_RUNS.labels(job, outcome)
        log.info(
            "job scheduler: %s",
            ", ".join(
                f"{job.name} every {job.interval(self.settings) / timedelta(hours=1):g}h"
                for job in self.jobs.values()
            ),
        )
        try:
            await self._look(self.refresh_metrics)
            while True:
                await asyncio.sleep(self.tick_seconds)
                await self._look(self.run_due)
                await self._look(self.refresh_metrics)
        finally:
            self.running = False

    async def _look(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_transient(error):
                # The database's own outage lines say it is away; once here is enough.
                if not self._outage:
                    log.warning("job scheduler: waiting for the database (%s)", describe(error))
                self._outage = True
                return
            log.exception("job scheduler: %s; trying again in %gs", error, self.tick_seconds)
        else:
            self._outage = False
