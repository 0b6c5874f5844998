"""`GET /api/inventory/jobs`: the scheduled maintenance jobs (service/application/jobs.py).

Each job's last run is read from `job_runs`, whichever worker (or `stock prune`,
`stock jobs run`) made it; `schedulerRunning` says whether this process runs the
scheduler (a worker with `STOCK_JOBS_ENABLED`), since any process may answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends

from service.adapters.database import retry_transient
from service.application.jobs import JobStatus, job_statuses
from service.entrypoints.http.auth import require_read_token
from service.entrypoints.http.errors import DOCUMENTED_ERRORS
from service.entrypoints.http.models import _Answer
from service.entrypoints.http.services import ApiServices, services

router = APIRouter(dependencies=[Depends(require_read_token)], responses=DOCUMENTED_ERRORS)
Services = Annotated[ApiServices, Depends(services)]

#: Reads take a token only if STOCK_API_READS_REQUIRE_TOKEN (as inventory's reads).
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}


class JobRunAnswer(_Answer):
    started_at: datetime
    #: None while it runs.
    finished_at: datetime | None
    outcome: Literal["running", "succeeded", "failed"]
    #: `host/pid` of the worker (or command) that ran it.
    runner: str
    #: What the run did: prune's rows per table, reconcile's discrepancies, an error.
    detail: dict[str, Any]


class JobAnswer(_Answer):
    name: str
    description: str
    interval_hours: float
    #: None: it never ran.
    last_run: JobRunAnswer | None
    last_succeeded_at: datetime | None
    #: When a scheduler runs it next (now, or past, if it is due).
    next_due: datetime


class JobsAnswer(_Answer):
    #: STOCK_JOBS_ENABLED of this process.
    scheduler_enabled: bool
    #: Whether this process runs the scheduler now (a worker with jobs enabled).
    scheduler_running: bool
    jobs: list[JobAnswer]


def _job(status: JobStatus) -> JobAnswer:
    last = status.last
    return JobAnswer(
        name=status.name,
        description=status.description,
        interval_hours=status.interval.total_seconds() / 3600,
        last_run=None
        if last is None
        else JobRunAnswer(
            started_at=last.started_at,
            finished_at=last.finished_at,
            outcome=last.outcome,
            runner=last.runner,
            detail=last.detail,
        ),
        last_succeeded_at=None if last is None else last.last_succeeded_at,
        next_due=status.next_due,
    )


@router.get("/jobs", response_model=JobsAnswer, openapi_extra=OPTIONAL_BEARER)
async def jobs(svc: Services) -> JobsAnswer:
    """The scheduled jobs (`prune` daily, `reconcile` weekly): each one's last run,
    whichever worker made it, and when it is due next."""
    statuses = await retry_transient(
        lambda: job_statuses(svc.engine, svc.settings),
        what="jobs",
        initial_backoff=svc.settings.retry_initial_backoff_seconds,
        max_backoff=svc.settings.retry_max_backoff_seconds,
        give_up_after=svc.settings.http_database_timeout_seconds,
    )
    scheduler = svc.worker.scheduler if svc.worker is not None else None
    return JobsAnswer(
        scheduler_enabled=svc.settings.jobs_enabled,
        scheduler_running=bool(scheduler is not None and scheduler.running),
        jobs=[_job(status) for status in statuses],
    )
