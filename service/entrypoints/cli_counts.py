"""`stock count open|record|apply|cancel|show`: stock counts from the command line.

The same commands as `/api/inventory/counts`, through the same `StockCounts`. The CLI
reaches the database itself, so it acts as an admin: `--approve` needs no token.
Refusals are one line with their code and exit status 2, like every `stock` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.entrypoints.cli import (
    ID_HELP,
    REASON_HELP,
    _add_actor_option,
    _admin_run,
    _identifier,
    _quoted,
    _reason,
    _Refused,
    cli_actor,
)
from service.settings import Settings

LINE_HELP = "VARIANT=COUNTED, such as tee-m=12 (0 to 1000000000)"


def add_count_commands(commands: Any) -> None:
    """Register `stock count ...` on the `stock` parser's subcommands."""
    count = commands.add_parser(
        "count", help="stock counts (stocktakes): open, record, apply, cancel, show"
    )
    actions = count.add_subparsers(required=True, metavar="ACTION")

    opening = actions.add_parser(
        "open", help="open a count of some variants, or of every variant of a product"
    )
    opening.add_argument("variants", nargs="*", type=_identifier, metavar="VARIANT", help=ID_HELP)
    opening.add_argument("--product", type=_identifier, help="count every variant of it")
    opening.add_argument(
        "--blind", action="store_true", help="hide expected quantities until applied"
    )
    opening.add_argument("--reason", type=_reason, default=None, help=REASON_HELP)
    _common(opening)
    opening.set_defaults(handler=_open)

    record = actions.add_parser("record", help="record counted quantities (a recount overwrites)")
    record.add_argument("count_id", type=_identifier, metavar="COUNT")
    record.add_argument("lines", nargs="+", type=_counted_line, metavar="LINE", help=LINE_HELP)
    _common(record)
    record.set_defaults(handler=_record)

    apply = actions.add_parser(
        "apply", help="move each counted line's on_hand by its variance, all or nothing"
    )
    apply.add_argument("count_id", type=_identifier, metavar="COUNT")
    apply.add_argument(
        "--approve", action="store_true", help="apply lines out of tolerance too"
    )
    _common(apply)
    apply.set_defaults(handler=_apply)

    cancel = actions.add_parser("cancel", help="close a count without applying it")
    cancel.add_argument("count_id", type=_identifier, metavar="COUNT")
    _common(cancel)
    cancel.set_defaults(handler=_cancel)

    show = actions.add_parser("show", help="a count and its lines")
    show.add_argument("count_id", type=_identifier, metavar="COUNT")
    show.add_argument("--json", action="store_true", help="the count as the HTTP API answers it")
    show.set_defaults(handler=_show)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the count as the HTTP API answers it")
    _add_actor_option(parser)


def _counted_line(text: str) -> tuple[str, int]:
    from stock_schemas.events import MAX_QUANTITY

    variant, equals, quantity = text.rpartition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: expected {LINE_HELP}")
    try:
        counted = int(quantity)
    except ValueError:
        counted = -1
    if not 0 <= counted <= MAX_QUANTITY:
        raise argparse.ArgumentTypeError(
            f"{_quoted(text)}: the counted quantity must be a whole number from 0 to "
            f"{MAX_QUANTITY}"
        )
    return _identifier(variant), counted


# ------------------------------------------------------------------ commands


def _open(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.variants) == (args.product is not None):
        print(
            "stock count open: name the variants to count, or --product, not both",
            file=sys.stderr,
        )
        return 2
    return _run(
        settings,
        "stock count open",
        args,
        lambda counts, actor: counts.open(
            actor=actor,
            variant_ids=args.variants,
            product_id=args.product,
            blind=args.blind,
            reason=args.reason,
        ),
    )


def _record(args: argparse.Namespace, settings: Settings) -> int:
    return _run(
        settings,
        "stock count record",
        args,
        lambda counts, actor: counts.record(args.count_id, args.lines, actor=actor),
    )


def _apply(args: argparse.Namespace, settings: Settings) -> int:
    return _run(
        settings,
        "stock count apply",
        args,
        lambda counts, actor: counts.apply(args.count_id, actor=actor, approve=args.approve),
    )


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    return _run(
        settings,
        "stock count cancel",
        args,
        lambda counts, actor: counts.cancel(args.count_id, actor=actor),
    )


def _show(args: argparse.Namespace, settings: Settings) -> int:
    return _run(settings, "stock count show", args, lambda counts, actor: counts.get(args.count_id))


def _run(settings: Settings, command: str, args: argparse.Namespace, call: Any) -> int:
    """`call(counts, actor)` through `StockCounts`, then the count printed."""
    from service.application.counts import StockCounts

    actor = cli_actor(args)

    async def go(admin: Any) -> Any:
        counts = StockCounts(admin.engine, admin.settings, source=admin.source)
        return await call(counts, actor)

    try:
        count = _admin_run(settings, go, command, actor)
    except _Refused as refused:
        return refused.status
    _print(count, as_json=args.json)
    return 0


def _print(count: Any, *, as_json: bool) -> None:
    from service.domain.counts import shown_lines
    from service.entrypoints.http.counts import count_answer

    if as_json:
        print(json.dumps(count_answer(count).model_dump(mode="json", by_alias=True), indent=2))
        return
    blind = " blind" if count.blind else ""
    print(
        f"{count.count_id}: {count.status.value}{blind}, opened by {count.opened_by} at "
        f"{count.opened_at:%Y-%m-%d %H:%M:%S}"
        + (f" for product {count.product_id}" if count.product_id else "")
        + (f", reason: {count.reason}" if count.reason else "")
    )
    if count.closed_by:
        approved = f", approved by {count.approved_by}" if count.approved_by else ""
        print(f"  closed by {count.closed_by} at {count.closed_at:%Y-%m-%d %H:%M:%S}{approved}")
    print(f"  {'variant':<24} {'counted':>9} {'expected':>9} {'variance':>9} {'tolerance':>9}  ok")
    for line in shown_lines(count):
        print(
            f"  {line.variant_id:<24} {_cell(line.counted):>9} {_cell(line.expected):>9} "
            f"{_cell(line.variance, signed=True):>9} "
            f"{_cell(line.tolerance_percent, suffix='%'):>9}  "
            f"{ {True: 'yes', False: 'NO', None: '-'}[line.within_tolerance] }"
        )


def _cell(value: Any, *, signed: bool = False, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{suffix}"
    return f"{value:+d}" if signed else f"{value}{suffix}"
