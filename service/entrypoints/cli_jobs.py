"""`stock prune [--dry-run] [--json]` and `stock jobs [run NAME]`: retention and the
scheduled jobs by hand, or from a Kubernetes CronJob (with `STOCK_JOBS_ENABLED=false`).

A prune (not a dry run) and `stock jobs run` are recorded in `job_runs` like a run of
the scheduler, so `stock jobs` and `GET /api/inventory/jobs` show them and no worker
runs the same job again before its next period. Exit status: 0 done, 1 the job failed,
2 the database cannot be used. Registered by `service.entrypoints.cli._parser` (which
imports this module when it builds the parser: this one imports `cli` at its top).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from service.config_errors import describe_database_error
from service.entrypoints.cli import _add_actor_option, _say, cli_actor
from service.settings import Settings

T = TypeVar("T")

#: How long an unreachable database is waited for before the command gives up (status
#: 2): a command run by hand or by a CronJob, which retries it itself.
GIVE_UP_AFTER_SECONDS = 10.0


def add_jobs_commands(commands: Any) -> None:
    """Add `prune` and `jobs` to the `stock` parser's subcommands."""
    from service.application.jobs import JOBS

    prune = commands.add_parser(
        "prune",
        help="delete what is past its retention (STOCK_RETENTION_*): processed events, "
        "dead letters, finished orders, published outbox rows",
        description="Delete, in small batches, the consumed event ids, dead letters, "
        "finished orders (with their lines) and published outbox rows older than their "
        "STOCK_RETENTION_* setting (STOCK_OUTBOX_RETENTION_HOURS for the outbox). The "
        "audit log is never pruned. Recorded as a run of the `prune` job.",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
    )
    prune.add_argument("--json", action="store_true", help="the report as JSON")
    prune.set_defaults(handler=_prune)

    jobs = commands.add_parser(
        "jobs",
        help="the scheduled jobs (prune, reconcile): last runs; `jobs run NAME` runs one now",
        description="Without an action: each scheduled job's last run (whichever worker "
        "made it) and when it is due next. `stock jobs run NAME`: run it now, here, "
        "whether it is due or not.",
    )
    jobs.add_argument("--json", action="store_true", help="as JSON")
    jobs.set_defaults(handler=_list_jobs)
    actions = jobs.add_subparsers(metavar="ACTION")
    run = actions.add_parser("run", help="run a job now")
    run.add_argument("name", choices=sorted(JOBS), help="the job")
    run.add_argument("--json", action="store_true", help="the run as JSON")
    _add_actor_option(run)
    run.set_defaults(handler=_run_job)


# ------------------------------------------------------------------ prune


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.jobs import JOBS, run_job
    from service.application.retention import prune

    async def go(engine: Any) -> tuple[str, dict[str, Any]]:
        if args.dry_run:
            report = await prune(engine, settings, dry_run=True)
            return "succeeded", report.as_json()
        run = await run_job(
            engine,
            settings,
            JOBS["prune"],
            actor=cli_actor(args),
            runner=_runner(args),
            force=True,
            give_up_after=GIVE_UP_AFTER_SECONDS,
        )
        assert run is not None  # forced: always claimed
        return run.outcome, run.detail

    try:
        outcome, detail = _with_engine(settings, go)
    except _Refused as refused:
        _say("stock prune", refused.lines)
        return 2
    if args.json:
        print(json.dumps(detail, indent=2, default=str))
    elif outcome == "succeeded":
        _print_prune(detail)
    if outcome != "succeeded":
        _say("stock prune", [f"failed: {detail.get('error', 'see the log')}"])
        return 1
    return 0


def _print_prune(report: dict[str, Any]) -> None:
    verb = "would delete" if report["dryRun"] else "deleted"
    batches = "" if report["dryRun"] else f" in {report['batches']} batches"
    print(f"prune: {verb} {report['deleted']} rows{batches}")
    for name, table in report["tables"].items():
        if name == "order_lines":
            print(f"  {name}: {table['deleted']} (the lines of those orders)")
            continue
        if "phases" in table:
            print(f"  {name}: {table['deleted']} (RESERVED and PENDING orders are kept)")
            for phase, part in table["phases"].items():
                print(f"    {phase}: {part['deleted']} {_kept(part)}")
            continue
        print(f"  {name}: {table['deleted']} {_kept(table, hours=name == 'outbox')}")


def _kept(table: dict[str, Any], *, hours: bool = False) -> str:
    """`hours`: as its setting says it (STOCK_OUTBOX_RETENTION_HOURS)."""
    days = table["retentionDays"]
    if days is None:
        return "(kept for ever)"
    age = timedelta(days=days)
    if hours or age % timedelta(days=1):
        words = f"{age / timedelta(hours=1):g} hours"
    else:
        words = f"{age.days} day{'s' if age.days != 1 else ''}"
    cutoff = datetime.fromisoformat(table["cutoff"])
    return f"(older than {words}: before {cutoff:%Y-%m-%d %H:%M:%S %Z})"


# ------------------------------------------------------------------ jobs


def _list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.jobs import JobStatus, job_statuses

    async def go(engine: Any) -> list[JobStatus]:
        return await job_statuses(engine, settings)

    try:
        statuses = _with_engine(settings, go)
    except _Refused as refused:
        _say("stock jobs", refused.lines)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "schedulerEnabled": settings.jobs_enabled,
                    "jobs": [status.as_json() for status in statuses],
                },
                indent=2,
                default=_iso,
            )
        )
        return 0
    scheduler = "on" if settings.jobs_enabled else "off (STOCK_JOBS_ENABLED=false)"
    print(f"in-process scheduler: {scheduler}")
    for status in statuses:
        every = status.interval / timedelta(hours=1)
        print(f"{status.name}: every {every:g}h; {status.description}")
        last = status.last
        if last is None:
            print("  last run: never")
        else:
            ended = f", ended {_time(last.finished_at)}" if last.finished_at else ""
            print(
                f"  last run: {last.outcome}, started {_time(last.started_at)}{ended} "
                f"by {last.runner}"
            )
            if last.outcome == "failed":
                print(f"  error: {last.detail.get('error', '?')}")
            if last.last_succeeded_at is not None and last.outcome != "succeeded":
                print(f"  last success: {_time(last.last_succeeded_at)}")
        print(f"  next due: {_time(status.next_due)}")
    return 0


def _run_job(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.jobs import JOBS, JobRun, run_job

    async def go(engine: Any) -> JobRun | None:
        return await run_job(
            engine,
            settings,
            JOBS[args.name],
            actor=cli_actor(args),
            runner=_runner(args),
            force=True,
            give_up_after=GIVE_UP_AFTER_SECONDS,
        )

    try:
        run = _with_engine(settings, go)
    except _Refused as refused:
        _say(f"stock jobs run {args.name}", refused.lines)
        return 2
    assert run is not None  # forced: always claimed
    if args.json:
        print(
            json.dumps(
                {
                    "job": run.job,
                    "runner": run.runner,
                    "startedAt": run.started_at,
                    "finishedAt": run.finished_at,
                    "outcome": run.outcome,
                    "detail": run.detail,
                },
                indent=2,
                default=_iso,
            )
        )
    else:
        print(f"{run.job}: {run.outcome} in {run.seconds:.1f}s")
        print(json.dumps(run.detail, indent=2, default=str))
    return 0 if run.outcome == "succeeded" else 1


# ------------------------------------------------------------------ plumbing


class _Refused(Exception):
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines


def _with_engine(settings: Settings, go: Callable[[Any], Awaitable[T]]) -> T:
    """`go` with an engine; a database that cannot be used is `_Refused` with the lines
    that say why."""
    from service.adapters.database import create_engine

    async def run() -> T:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await go(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is None:
            raise
        raise _Refused(problem) from None


def _runner(args: argparse.Namespace) -> str:
    """`cli:<user>@host/pid`: a run of the CLI, told apart from a worker's."""
    from service.application.jobs import runner_name

    return f"{cli_actor(args)}@{runner_name()}"


def _time(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S %Z}"


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
