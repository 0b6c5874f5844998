"""`stock report daily|weekly|monthly [--out DIR] [--at TIME] [--json]`: write a report
(service/application/reports.py) as Markdown, CSV files and PNG charts under
`<DIR>/<kind>/<period>/` and keep its figures for `GET reports/latest/{kind}`.

The period is the one holding the instant before `--at` (default: now), up to it: the
UTC day, the ISO week or the calendar month so far. `--at` on a boundary (such as
`2026-11-30`, midnight UTC) writes the period before it, whole. Without matplotlib
(the `reports` extra) the charts are skipped, said on stderr, and the rest written.
Exit status 0 when written, 2 when it could not be (a time in the future, no
database). Registered by `service.entrypoints.cli._parser`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config_errors import describe_database_error
from service.entrypoints.cli import _quoted, _say
from service.settings import Settings

if TYPE_CHECKING:  # imported when the command runs: `stock --help` stays quick
    from service.application.reports import WrittenReport

#: How long an unreachable database is waited for (a command run by hand or by cron).
GIVE_UP_AFTER_SECONDS = 10.0
TIME_HELP = "an ISO date (midnight UTC) or date and time (UTC unless it has an offset)"
KINDS = ("daily", "weekly", "monthly")


def add_report_command(commands: Any) -> None:
    """Add `report` to the `stock` parser's subcommands."""
    command = commands.add_parser(
        "report",
        help="write the daily, weekly or monthly report (Markdown, CSV, PNG charts)",
        description="Write a report under DIR/<kind>/<period>/: report.md, one CSV file "
        "per table and PNG charts (with the reports extra, matplotlib). daily: low stock "
        "with days of cover and reorder suggestions; weekly: top movers, stockouts, "
        "anomalies, reconciliation, count accuracy; monthly: ABC classes, recommended "
        "against configured reorder points, supplier lead times. The period is the one "
        "holding the instant before --at, up to --at.",
    )
    command.add_argument("kind", choices=KINDS)
    command.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="where to write (default: STOCK_REPORTS_DIR, else ./reports)",
    )
    command.add_argument(
        "--at", type=_time, default=None, metavar="TIME",
        help=f"as of this moment (default: now); {TIME_HELP}",
    )
    command.add_argument(
        "--json", action="store_true",
        help="print the figures and files as JSON (GET reports/latest/{kind}'s answer)",
    )
    command.set_defaults(handler=_report)


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: expected {TIME_HELP}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.reports import InvalidReportTime

    try:
        written = asyncio.run(_run(settings, args.kind, args.at, args.out))
    except InvalidReportTime as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is None and isinstance(error, OSError):  # the directory, not the database
            problem = [f"cannot write the report: {error}"]
        if problem is None:
            raise
        _say("stock report", problem)
        return 2
    files = written.files
    if args.json:
        print(json.dumps(written.as_json(), indent=2))
    else:
        period = written.report.period
        state = "whole" if period.complete else f"so far, to {period.end.isoformat()}"
        print(f"{period.kind.value} report {period.label} ({state}): {written.directory}")
        for name in [files["markdown"], *files["csv"], *files["charts"]]:
            print(f"  {name}")
    if files.get("chartsSkipped"):
        print(f"charts skipped: {files['chartsSkipped']}", file=sys.stderr)
    return 0


async def _run(
    settings: Settings, kind: str, at: datetime | None, out: Path | None
) -> WrittenReport:
    from service.adapters.database import create_engine, retry_transient
    from service.application.reports import write_report

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await retry_transient(
            lambda: write_report(engine, settings, kind, at=at, out=out),
            what="report",
            initial_backoff=settings.retry_initial_backoff_seconds,
            max_backoff=settings.retry_max_backoff_seconds,
            give_up_after=GIVE_UP_AFTER_SECONDS,
        )
    finally:
        await engine.dispose()
