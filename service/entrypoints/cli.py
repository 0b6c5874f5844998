"""`stock`: migrate, run the worker and its HTTP API, the embedded dev stack, admin, docs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from service.logs import configure_logging
from service.settings import Settings

T = TypeVar("T")
log = logging.getLogger("stock")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    try:
        result: int = args.handler(args, settings)
        return result
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stock", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.set_defaults(handler=_migrate)

    run = commands.add_parser(
        "run", help="run the worker and the HTTP API (STOCK_DATABASE_URL, STOCK_KAFKA_*, ...)"
    )
    run.add_argument("--no-sweeper", action="store_true", help="do not expire holds here")
    run.add_argument("--no-api", action="store_true", help="the worker alone, no HTTP server")
    run.add_argument(
        "--no-relay", action="store_true", help="leave publishing to `stock relay` processes"
    )
    run.set_defaults(handler=_run)

    relay = commands.add_parser("relay", help="run the outbox relay alone")
    relay.set_defaults(handler=_relay)

    api = commands.add_parser("api", help="run the HTTP API alone (no consumer, no relay)")
    api.set_defaults(handler=_api)

    docs = commands.add_parser("docs", help="write the API documents")
    docs.add_argument("kind", choices=["asyncapi", "openapi"])
    docs.add_argument("--yaml", action="store_true", help="YAML instead of JSON (asyncapi)")
    docs.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    docs.set_defaults(handler=_docs)

    dev = commands.add_parser(
        "dev", help="embedded PostgreSQL + tansu broker + sample catalogue, then run"
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".stock-dev"),
        help="where the embedded PostgreSQL keeps its data (default .stock-dev)",
    )
    dev.add_argument(
        "--kafka-port",
        type=int,
        default=int(os.environ.get("STOCK_DEV_KAFKA_PORT", "9092")),
        help="broker port (default 9092, or a free one if taken)",
    )
    dev.set_defaults(handler=_dev)

    restock = commands.add_parser("restock", help="add received units (creates the variant)")
    restock.add_argument("variant")
    restock.add_argument("quantity", type=int)
    restock.add_argument(
        "--product", help="product id (for a new variant; default: the variant id)"
    )
    restock.add_argument("--reason", default=None)
    restock.set_defaults(handler=_restock)

    adjust = commands.add_parser("adjust", help="set on_hand to a counted quantity")
    adjust.add_argument("variant")
    adjust.add_argument("quantity", type=int)
    adjust.add_argument("--reason", required=True)
    adjust.set_defaults(handler=_adjust)

    show = commands.add_parser("show", help="stock level and recent audit trail of a variant")
    show.add_argument("variant")
    show.add_argument("--json", action="store_true")
    show.add_argument("--limit", type=int, default=10, help="audit rows to show")
    show.set_defaults(handler=_show)

    publish = commands.add_parser(
        "publish", help="publish a consumed event by hand (its CloudEvent envelope is added)"
    )
    publish.add_argument("type", help="order.checkout, payment.succeeded, payment.failed, ...")
    publish.add_argument("data", help="the event's `data` as JSON")
    publish.add_argument("--source", default="stock-cli")
    publish.add_argument("--id", dest="event_id", help="event id (default: a new UUID)")
    publish.set_defaults(handler=_publish)

    tail = commands.add_parser("tail", help="print the messages of topics from the beginning")
    tail.add_argument("topics", nargs="*", help="default: every topic this worker publishes")
    tail.add_argument("--seconds", type=float, help="stop after this long (default: never)")
    tail.set_defaults(handler=_tail)
    return parser


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.adapters.migrate import upgrade_to_head

    upgrade_to_head(settings.database_url)
    print("database schema is at head")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.process import StockProcess

    process = StockProcess(
        settings, api=not args.no_api, sweep=not args.no_sweeper, relay=not args.no_relay
    )
    asyncio.run(process.run_until_signalled())
    return 0


def _relay(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.relay import RelayProcess

    asyncio.run(RelayProcess(settings).run_until_signalled())
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.process import StockProcess

    asyncio.run(StockProcess(settings, worker=False).run_until_signalled())
    return 0


def _docs(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind == "asyncapi":
        from service.entrypoints.asyncapi import asyncapi_specification

        spec = asyncapi_specification(settings)
        text = spec.to_yaml() if args.yaml else spec.to_json()
    else:
        from service.entrypoints.http.app import create_app
        from service.entrypoints.http.services import ApiServices

        app = create_app(ApiServices.build(settings, engine=None))  # type: ignore[arg-type]
        text = json.dumps(app.openapi(), indent=2)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from service.adapters.migrate import upgrade_to_head
    from service.devstack.servers import (
        DevStackMissing,
        EmbeddedPostgres,
        TansuBroker,
        port_is_free,
        require_dev_stack,
    )
    from service.entrypoints.process import StockProcess

    try:
        require_dev_stack()
    except DevStackMissing as error:
        print(f"stock dev: {error}", file=sys.stderr)
        return 2
    postgres = EmbeddedPostgres(args.data_dir.resolve() / "pg")
    broker = TansuBroker(args.kafka_port if port_is_free(args.kafka_port) else None)
    database_url = postgres.start()
    try:
        bootstrap = broker.start()
        token = settings.api_token_list[0] if settings.api_token_list else _dev_token(args.data_dir)
        settings = settings.model_copy(
            update={
                "database_url": database_url,
                "kafka_bootstrap_servers": bootstrap,
                "kafka_enable_idempotence": False,
                "api_tokens": SecretStr(",".join(settings.api_token_list or [token])),
            }
        )
        api = f"http://{settings.http_host}:{settings.http_port}"
        upgrade_to_head(database_url)
        added = asyncio.run(_load_catalogue(settings))
        print(
            "\n".join(
                [
                    "",
                    "stock dev: everything is up",
                    f"  PostgreSQL  STOCK_DATABASE_URL='{database_url}'",
                    f"  Kafka       STOCK_KAFKA_BOOTSTRAP_SERVERS={bootstrap}  (tansu, in memory)",
                    f"  catalogue   {added} sample variants added this time",
                    f"  consumes    {', '.join(settings.consumed_topics)}",
                    f"  publishes   {', '.join(settings.published_topics)}",
                    f"  HTTP API    {api}  (docs {api}/docs, AsyncAPI {api}/asyncapi)",
                    f"  API token   {token}",
                    "  From another shell:",
                    f"    export STOCK_DATABASE_URL='{database_url}'",
                    f"    export STOCK_TOKEN={token}",
                    "    .venv/bin/stock show tshirt-classic-black-m",
                    f"    curl -s {api}/api/inventory/check/tshirt-classic-black-m?quantity=2",
                    "  Ctrl-C stops the worker, the broker and the database.",
                    "",
                ]
            ),
            flush=True,
        )
        asyncio.run(StockProcess(settings).run_until_signalled())
    finally:
        broker.stop()
        postgres.stop()
    return 0


def _dev_token(data_dir: Path) -> str:
    """A generated token, kept in the data directory so that a shell's
    `export STOCK_TOKEN=...` keeps working when `stock dev` restarts."""
    import secrets

    path = data_dir / "token"
    if path.exists():
        return path.read_text().strip()
    token = f"dev-{secrets.token_urlsafe(24)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


async def _load_catalogue(settings: Settings) -> int:
    from service.devstack.catalogue import load_sample_catalogue

    return await _with_admin(settings, load_sample_catalogue)


def _restock(args: argparse.Namespace, settings: Settings) -> int:
    async def go(admin: Any) -> Any:
        return await admin.restock(
            args.variant,
            args.quantity,
            product_id=args.product,
            reason=args.reason,
            reference="cli",
        )

    return _print_change(go, settings)


def _adjust(args: argparse.Namespace, settings: Settings) -> int:
    async def go(admin: Any) -> Any:
        return await admin.adjust(args.variant, args.quantity, reason=args.reason, reference="cli")

    return _print_change(go, settings)


def _print_change(go: Callable[[Any], Awaitable[Any]], settings: Settings) -> int:
    from service.domain.errors import DomainError

    try:
        change = asyncio.run(_with_admin(settings, go))
    except DomainError as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    print(
        f"{change.variant_id}: {change.change_type.value} {change.delta_on_hand:+d} -> "
        f"on_hand={change.on_hand} reserved={change.reserved} "
        f"available={change.available} version={change.version}"
    )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from service.domain.errors import DomainError

    async def go(admin: Any) -> tuple[Any, list[dict[str, Any]]]:
        level = await admin.stock_level(args.variant)
        return level, await admin.audit_trail(args.variant, args.limit)

    try:
        level, trail = asyncio.run(_with_admin(settings, go))
    except DomainError as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**dataclasses.asdict(level), "audit": trail}, default=str, indent=2))
        return 0
    print(
        f"{level.variant_id} (product {level.product_id}): on_hand={level.on_hand} "
        f"reserved={level.reserved} available={level.available} version={level.version} "
        f"low-stock threshold={level.low_stock_threshold}"
    )
    for row in trail:
        print(
            f"  v{row['version']:<5} {row['created_at']:%Y-%m-%d %H:%M:%S} "
            f"{row['change_type']:<10} "
            f"on_hand {row['delta_on_hand']:+d} reserved {row['delta_reserved']:+d} "
            f"ref={row['reference'] or '-'} reason={row['reason'] or '-'}"
        )
    return 0


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from service.devstack.console import publish_event

    try:
        data = json.loads(args.data)
        event = asyncio.run(
            publish_event(settings, args.type, data, source=args.source, event_id=args.event_id)
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(event))
    return 0


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from service.devstack.console import tail_topics

    asyncio.run(
        tail_topics(settings, args.topics or settings.published_topics, seconds=args.seconds)
    )
    return 0


async def _with_admin(settings: Settings, go: Callable[[Any], Awaitable[T]]) -> T:
    from service.adapters.database import create_engine
    from service.application.admin import StockAdmin

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await go(StockAdmin(engine, settings))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
