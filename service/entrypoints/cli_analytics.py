"""`stock analytics`: each variant's figures over a window (docs/analytics.md), as a
table, or as the HTTP API's JSON (`--json`), or CSV (`--csv`).

The window is [--from, --to): `--to` defaults to now, `--from` to 30 days before
`--to`. A time may be a date (`2026-11-01`: midnight UTC) or an ISO date and time; one
without an offset is UTC. Refusals (a window that is empty, longer than 366 days or in
the future; an unknown variant or product) are one line with their code and exit
status 2, like every `stock` command. Registered by `service.entrypoints.cli._parser`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from service.config_errors import describe_database_error
from service.entrypoints.cli import ID_HELP, _identifier, _quoted, _say
from service.settings import Settings

if TYPE_CHECKING:  # imported when the command runs: `stock --help` stays quick
    from service.application.analytics import AnalyticsQuery, AnalyticsReport

#: How long an unreachable database is waited for (a command run by hand).
GIVE_UP_AFTER_SECONDS = 10.0
TIME_HELP = "an ISO date (midnight UTC) or date and time (UTC unless it has an offset)"


def add_analytics_command(commands: Any) -> None:
    """Add `analytics` to the `stock` parser's subcommands."""
    command = commands.add_parser(
        "analytics",
        help="each variant's figures over a window: units, levels, stockouts, ABC...",
        description="Each variant's figures over [--from, --to) from the audit log: units "
        "sold, returned, restocked and adjusted; time-weighted on hand and available; "
        "turnover, sell-through, stockouts, seconds out of stock, in-stock rate, days of "
        "cover, ABC class and count accuracy (docs/analytics.md defines each). Without "
        "--variant or --product, every variant, a page at a time (--limit, --after).",
    )
    command.add_argument("--from", dest="start", type=_time, help=f"default: --to - 30 days; "
                         f"{TIME_HELP}")
    command.add_argument("--to", dest="end", type=_time, help=f"default: now; {TIME_HELP}")
    command.add_argument("--variant", action="append", type=_identifier, default=[],
                         metavar="VARIANT", help=f"repeatable; {ID_HELP}")
    command.add_argument("--product", action="append", type=_identifier, default=[],
                         metavar="PRODUCT", help="every variant of it; repeatable")
    command.add_argument("--limit", type=_limit, default=None,
                         help="variants per page, 1 to 1000 (default 100)")
    command.add_argument("--after", type=_identifier, default=None, metavar="VARIANT",
                         help="only variants after this one (the previous page's last)")
    shown = command.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="the answer of the HTTP API")
    shown.add_argument("--csv", action="store_true", help="one CSV row per variant")
    command.set_defaults(handler=_analytics)


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: expected {TIME_HELP}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _limit(text: str) -> int:
    from service.application.analytics import MAX_LIMIT

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: a whole number from 1 to {MAX_LIMIT}")
    return value


def _analytics(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.analytics import (
        DEFAULT_LIMIT,
        MAX_IDS,
        AnalyticsQuery,
        InvalidWindow,
    )
    from service.domain.errors import DomainError

    if len(args.variant) + len(args.product) > MAX_IDS:
        print(f"error: at most {MAX_IDS} --variant and --product in all", file=sys.stderr)
        return 2
    query = AnalyticsQuery(
        start=args.start,
        end=args.end,
        variant_ids=tuple(args.variant),
        product_ids=tuple(args.product),
        limit=args.limit or DEFAULT_LIMIT,
        after=args.after or "",
    )
    try:
        report = asyncio.run(_run(settings, query))
    except (InvalidWindow, DomainError) as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is None:
            raise
        _say("stock analytics", problem)
        return 2
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif args.csv:
        _csv(report)
    else:
        _table(report)
    if report.next_after is not None and not args.json:
        print(f"more variants: --after {report.next_after}", file=sys.stderr)
    return 0


async def _run(settings: Settings, query: AnalyticsQuery) -> AnalyticsReport:
    from service.adapters.database import create_engine, retry_transient
    from service.application.analytics import analytics

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await retry_transient(
            lambda: analytics(engine, query),
            what="analytics",
            initial_backoff=settings.retry_initial_backoff_seconds,
            max_backoff=settings.retry_max_backoff_seconds,
            give_up_after=GIVE_UP_AFTER_SECONDS,
        )
    finally:
        await engine.dispose()


def _csv(report: AnalyticsReport) -> None:
    from service.application.analytics import camel_fields

    fields = ["from", "to", *camel_fields()]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for variant in report.variants:
        row = {"from": report.start.isoformat(), "to": report.end.isoformat(), **variant.as_json()}
        writer.writerow({k: "" if v is None else v for k, v in row.items()})


#: The table's columns: heading, field, format.
_COLUMNS = [
    ("variant", "variant_id", "{}"),
    ("sold", "units_sold", "{}"),
    ("returned", "units_returned", "{}"),
    ("restocked", "units_restocked", "{}"),
    ("adjusted", "net_adjusted", "{:+d}"),
    ("avg on hand", "average_on_hand", "{:.2f}"),
    ("avg avail", "average_available", "{:.2f}"),
    ("turnover", "turnover", "{:.2f}"),
    ("sell-thru", "sell_through", "{:.1%}"),
    ("stockouts", "stockouts", "{}"),
    ("out of stock", "out_of_stock_seconds", "seconds"),
    ("in stock", "in_stock_rate", "{:.1%}"),
    ("cover days", "days_of_cover", "{:.1f}"),
    ("abc", "abc_class", "{}"),
    ("accuracy", "accuracy", "{:.0%}"),
]


def _cell(value: Any, shape: str) -> str:
    if value is None:
        return "-"
    if shape == "seconds":
        return _duration(float(value))
    return shape.format(value)


def _duration(seconds: float) -> str:
    """12.5 s, 3h20m, 4d02h."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    hours = minutes // 60
    if hours < 24:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _table(report: AnalyticsReport) -> None:
    print(
        f"from {report.start.isoformat()} to {report.end.isoformat()} "
        f"({_duration(report.window_seconds)}), {len(report.variants)} variant"
        f"{'' if len(report.variants) == 1 else 's'}"
    )
    rows = [[heading for heading, _, _ in _COLUMNS]]
    for variant in report.variants:
        rows.append([_cell(getattr(variant, field), shape) for _, field, shape in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        print("  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip())
