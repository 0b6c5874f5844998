"""`stock reconcile [--json]`: check every variant against the invariants.

Exit status: 0 when every check holds, 1 when any discrepancy is found (each is also
kept with the run and published as `stock.anomaly`), 2 when the check could not run
(no database, no schema). Registered by `service.entrypoints.cli._parser` (which
imports this module when it builds the parser: this one imports `cli` at its top).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from service.config_errors import describe_database_error
from service.entrypoints.cli import (
    _add_actor_option,
    _admin_run,
    _identifier,
    _Refused,
    _say,
    cli_actor,
)
from service.settings import Settings

if TYPE_CHECKING:  # imported when the command runs: `stock --help` stays quick
    from service.application.reconciliation import ReconciliationReport

#: How long an unreachable database is waited for before the command gives up (status
#: 2): a one-shot check run by hand or by a CronJob, not a worker that must not skip.
GIVE_UP_AFTER_SECONDS = 10.0


def add_reconcile_command(commands: Any) -> None:
    """Add `reconcile` to the `stock` parser's subcommands."""
    reconcile = commands.add_parser(
        "reconcile",
        help="check every variant against the invariants (exit 1 on a discrepancy)",
        description="Check every variant: 0 <= reserved <= on_hand, reserved equals the "
        "lines of RESERVED orders, on_hand equals the sum of its audit log, audit versions "
        "run 1..N. Nothing is repaired; each discrepancy is kept with the run and "
        "published as stock.anomaly. Exit status 0: clean, 1: a discrepancy, 2: the "
        "check could not run.",
    )
    reconcile.add_argument("--json", action="store_true", help="the run as JSON")
    reconcile.add_argument(
        "--full",
        action="store_true",
        help="read every variant's whole audit log, not only what follows its checkpoint "
        "(the same checks; also finds the log of a variant whose row was deleted before "
        "any run)",
    )
    reconcile.add_argument(
        "--accept",
        metavar="VARIANT",
        action="append",
        type=_identifier,
        help="instead of checking: accept VARIANT's row as right after a ledger_mismatch "
        "(a change made outside the service) and record the difference in its audit log "
        "as an ADJUSTMENT, reason ledger_correction (repeatable)",
    )
    _add_actor_option(reconcile)
    reconcile.set_defaults(handler=_reconcile)


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    if args.accept:
        return _accept(args, settings)
    try:
        report = asyncio.run(_run(settings, cli_actor(args), full=args.full))
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is None:
            raise
        _say("stock reconcile", problem)
        return 2
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print(report)
    return 0 if report.clean else 1


def _accept(args: argparse.Namespace, settings: Settings) -> int:
    from service.application.reconciliation import accept_outside_changes

    async def go(admin: Any) -> Any:
        return await accept_outside_changes(
            admin.engine, settings, cli_actor(args), args.accept
        )

    try:
        changes = _admin_run(settings, go, "stock reconcile", cli_actor(args))
    except _Refused as refused:
        return refused.status
    for change in changes:
        print(
            f"{change.variant_id}: {change.delta_on_hand:+d} booked as {change.change_type.value}"
            f" ({change.reason}), version {change.version}"
        )
    if not changes:
        print("nothing to accept: each named variant's audit log adds up to its row")
    return 0


async def _run(settings: Settings, actor: str, *, full: bool) -> ReconciliationReport:
    from service.adapters.database import create_engine
    from service.application.reconciliation import reconcile

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await reconcile(
            engine, settings, actor, full=full, give_up_after=GIVE_UP_AFTER_SECONDS
        )
    finally:
        await engine.dispose()


def _print(report: ReconciliationReport) -> None:
    found = len(report.discrepancies)
    seconds = (report.finished_at - report.started_at).total_seconds()
    print(
        f"reconciliation {report.run_id}: {report.checked_variants} variants checked in "
        f"{seconds:.1f}s, {found} discrepanc{'y' if found == 1 else 'ies'}"
    )
    for d in report.discrepancies:
        print(f"  {d.variant_id}: {d.kind.value} expected={d.expected} actual={d.actual}")
    if found:
        print(
            "each is published as stock.anomaly (ledger_mismatch); nothing was repaired. "
            "A row changed outside the service: `stock reconcile --accept VARIANT` books "
            "the change in its log; the shelf: a count or `stock adjust`",
            file=sys.stderr,
        )
