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

from service import tracing
from service.config_errors import (
    ConfigurationError,
    describe_database_error,
    hide_password,
    load_settings,
    unknown_variables,
)
from service.logs import configure_logging
from service.settings import Settings

T = TypeVar("T")
log = logging.getLogger("stock")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as error:
        for line in error.lines:
            print(f"stock: {line}", file=sys.stderr)
        return 2
    configure_logging(settings)
    for warning in unknown_variables(os.environ):
        log.warning(warning)
    if args.handler in (_run, _relay, _api, _dev):  # the long-running processes
        try:
            tracing.configure_from_environment()
        except tracing.TracingConfigurationError as error:
            print(f"stock: {error}", file=sys.stderr)
            return 2
    try:
        result: int = args.handler(args, settings)
        return result
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stock tail | head`: the reader has gone, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


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
    docs.add_argument("--yaml", action="store_true", help="YAML instead of JSON")
    docs.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    docs.set_defaults(handler=_docs)

    dev = commands.add_parser(
        "dev", help="embedded PostgreSQL + tansu broker + sample catalogue, then run"
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("STOCK_DEV_DATA_DIR") or ".stock-dev"),
        help="where the embedded PostgreSQL and the API token (DATA_DIR/token) are kept "
        "(default: STOCK_DEV_DATA_DIR, else .stock-dev)",
    )
    dev.add_argument(
        "--http-port",
        type=int,
        help="HTTP API port (default: STOCK_HTTP_PORT, else 8000; 0: any free port)",
    )
    dev.add_argument(
        "--kafka-port",
        type=int,
        help="broker port (default: STOCK_DEV_KAFKA_PORT, else 9092, or a free one if 9092 "
        "is taken; 0: any free port)",
    )
    dev.set_defaults(handler=_dev)

    restock = commands.add_parser("restock", help="add received units (creates the variant)")
    restock.add_argument("variant", type=_identifier, help=ID_HELP)
    restock.add_argument("quantity", type=int)
    restock.add_argument(
        "--product",
        type=_identifier,
        help="product id (for a new variant; default: the variant id)",
    )
    restock.add_argument("--reason", type=_reason, default=None, help=REASON_HELP)
    _add_actor_option(restock)
    restock.set_defaults(handler=_restock)

    adjust = commands.add_parser("adjust", help="set on_hand to a counted quantity")
    adjust.add_argument("variant", type=_identifier, help=ID_HELP)
    adjust.add_argument("quantity", type=int)
    adjust.add_argument("--reason", type=_reason, required=True, help=REASON_HELP)
    _add_actor_option(adjust)
    adjust.set_defaults(handler=_adjust)

    show = commands.add_parser("show", help="stock level and recent audit trail of a variant")
    show.add_argument("variant", type=_identifier, help=ID_HELP)
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--limit",
        type=_limit,
        default=10,
        help=f"audit rows to show, 1 to {MAX_AUDIT_ROWS} (default 10)",
    )
    show.set_defaults(handler=_show)

    publish = commands.add_parser(
        "publish", help="publish a consumed event by hand (its CloudEvent envelope is added)"
    )
    publish.add_argument("type", help="order.checkout, payment.succeeded, payment.failed, ...")
    publish.add_argument("data", help="the event's `data`: a JSON object")
    publish.add_argument("--source", default="stock-cli")
    publish.add_argument("--id", dest="event_id", help="event id (default: a new UUID)")
    publish.set_defaults(handler=_publish)

    tail = commands.add_parser("tail", help="print the messages of topics from the beginning")
    tail.add_argument("topics", nargs="*", help="default: every topic this worker publishes")
    tail.add_argument("--seconds", type=float, help="stop after this long (default: never)")
    tail.set_defaults(handler=_tail)

    from service.entrypoints.cli_counts import add_count_commands

    add_count_commands(commands)

    from service.entrypoints.cli_reconcile import add_reconcile_command

    add_reconcile_command(commands)

    from service.entrypoints.cli_jobs import add_jobs_commands

    add_jobs_commands(commands)

    from service.entrypoints.cli_analytics import add_analytics_command

    add_analytics_command(commands)

    from service.entrypoints.cli_reports import add_report_command

    add_report_command(commands)
    return parser


# ------------------------------------------------------------ argument rules

ID_HELP = "1 to 200 characters, no white space at either end, no control characters"
REASON_HELP = "why (kept in the audit log): not blank, at most 500 characters"
#: The most audit rows `show` prints: the HTTP API's page size limit.
MAX_AUDIT_ROWS = 1000


def _identifier(text: str) -> str:
    """The id rule of every entrypoint (`stock_schemas.events.Identifier`)."""
    from pydantic import TypeAdapter, ValidationError
    from stock_schemas.events import Identifier

    try:
        return TypeAdapter(Identifier).validate_python(text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: {_pydantic_message(error)}") from None


def _reason(text: str) -> str:
    """A reason as the HTTP API takes it (its `adjust` line's rule), and not blank."""
    from pydantic import ValidationError

    from service.entrypoints.http.models import CountLine

    if not text.strip():
        raise argparse.ArgumentTypeError("a reason must say something; this one is blank")
    try:
        CountLine(variant_id="any", quantity=0, reason=text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(f"{_quoted(text)}: {_pydantic_message(error)}") from None
    return text


def _limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_AUDIT_ROWS:
        raise argparse.ArgumentTypeError(
            f"{_quoted(text)}: expected a whole number from 1 to {MAX_AUDIT_ROWS}"
        )
    return limit


def _quoted(text: str) -> str:
    """`text` as an error message shows it: quoted, escaped, long ones cut."""
    return repr(text) if len(text) <= 40 else f"{text[:30]!r}... ({len(text)} characters)"


def _pydantic_message(error: Any) -> str:
    message = str(error.errors()[0]["msg"])
    return message[:1].lower() + message[1:]


# ------------------------------------------------------------------ commands


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 2 when the database cannot be used (unreachable, missing, the login
    refused: fix STOCK_DATABASE_URL or the server), 1 when a migration itself fails."""
    from service.adapters.migrate import upgrade_to_head

    try:
        upgrade_to_head(settings.database_url)
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is not None:
            _say("stock migrate", problem)
            return 2
        log.debug("migration failed", exc_info=True)
        _say(
            "stock migrate",
            [
                f"a migration of {hide_password(settings.database_url)} failed: "
                f"{type(error).__name__}: {_first_line(error)}",
                "hint: STOCK_LOG_LEVEL=DEBUG shows the traceback",
            ],
        )
        return 1
    print("database schema is at head")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.process import StockProcess, run

    process = StockProcess(
        settings, api=not args.no_api, sweep=not args.no_sweeper, relay=not args.no_relay
    )
    run(process.run_until_signalled(), settings)
    return 0


def _relay(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.process import run
    from service.entrypoints.relay import RelayProcess

    run(RelayProcess(settings).run_until_signalled(), settings)
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from service.entrypoints.process import StockProcess, run

    run(StockProcess(settings, worker=False).run_until_signalled(), settings)
    return 0


def _docs(args: argparse.Namespace, settings: Settings) -> int:
    if args.yaml:
        try:
            import yaml  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            _say("stock docs", ["--yaml needs PyYAML, a dependency: pip install pyyaml"])
            return 2
    if args.kind == "asyncapi":
        from service.entrypoints.asyncapi import asyncapi_specification

        spec = asyncapi_specification(settings)
        text = spec.to_yaml() if args.yaml else spec.to_json()
    else:
        from service.entrypoints.http.app import create_app
        from service.entrypoints.http.services import ApiServices

        app = create_app(ApiServices.build(settings, engine=None))  # type: ignore[arg-type]
        document = app.openapi()
        text = _yaml(document) if args.yaml else json.dumps(document, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _yaml(document: Any) -> str:
    """`document` as YAML, in its order, with multi-line text as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):  # type: ignore[misc]
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar(
            "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
        )

    Dumper.add_representer(str, text)
    dumped: str = yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True)
    return dumped.rstrip("\n")


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from service.adapters.migrate import upgrade_to_head
    from service.devstack import stack
    from service.devstack.servers import (
        DevStackMissing,
        EmbeddedPostgres,
        TansuBroker,
        require_dev_stack,
    )

    try:
        require_dev_stack()
    except DevStackMissing as error:
        print(f"stock dev: {error}", file=sys.stderr)
        return 2
    data_dir = args.data_dir.resolve()
    broker_host = "127.0.0.1"
    lock = stack.DataDirLock(data_dir)
    try:
        # Before anything starts or prints: a busy port, or another `stock dev` here.
        ports = stack.claim_ports(
            settings, http_port=args.http_port, kafka_port=args.kafka_port, kafka_host=broker_host
        )
        stack.check_data_dir(data_dir)
        lock.acquire()
    except stack.DevStackRefused as error:
        print(f"stock dev: {error}", file=sys.stderr)
        return 2
    try:
        with stack.sigterm_interrupts():
            postgres = EmbeddedPostgres(data_dir / "pg")
            broker = TansuBroker(ports.kafka, host=broker_host)
            try:
                database_url = postgres.start()
                bootstrap = broker.start()
                given = settings.api_token_list
                # STOCK_API_TOKENS as given (names and scopes kept), else a generated
                # token for an admin named `dev` (counts, approvals, reconciliation).
                tokens = (
                    settings.api_tokens if given else SecretStr(f"dev:{_dev_token(data_dir)}:admin")
                )
                settings = settings.model_copy(
                    update={
                        "database_url": database_url,
                        "kafka_bootstrap_servers": bootstrap,
                        "kafka_enable_idempotence": False,
                        "http_port": ports.http,
                        "api_tokens": tokens,
                    }
                )
                upgrade_to_head(database_url)
                added = asyncio.run(_load_catalogue(settings))
                banner = stack.banner(
                    settings,
                    added=added,
                    token_file=None if given else data_dir / "token",
                    kafka_note=ports.kafka_note,
                    stock_command=_stock_command(),
                )
                asyncio.run(stack.serve(settings, banner))
            finally:
                broker.stop()
                postgres.stop()
    finally:
        lock.release()
    return 0


def _stock_command() -> str:
    """How the user ran `stock`, for the commands the dev banner suggests."""
    name = Path(sys.argv[0])
    return str(name) if name.name == "stock" else "stock"


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


def _add_actor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        type=_identifier,
        default=None,
        help="who is doing this, for the audit log (recorded as cli:ACTOR; "
        "default: cli:<your login name>)",
    )


def cli_actor(args: argparse.Namespace) -> str:
    """The audit log's actor for a CLI change: `cli:<--actor>`, else `cli:<login name>`.
    Always `cli:`-prefixed, so the CLI cannot pass itself off as a token or a producer."""
    import getpass

    name = getattr(args, "actor", None)
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no login name (a container with a bare uid)
            name = "unknown"
    return f"cli:{name}"


def _restock(args: argparse.Namespace, settings: Settings) -> int:
    async def go(admin: Any) -> Any:
        return await admin.restock(
            args.variant,
            args.quantity,
            product_id=args.product,
            reason=args.reason,
            reference="cli",
        )

    return _print_change(go, settings, "stock restock", cli_actor(args))


def _adjust(args: argparse.Namespace, settings: Settings) -> int:
    async def go(admin: Any) -> Any:
        return await admin.adjust(args.variant, args.quantity, reason=args.reason, reference="cli")

    return _print_change(go, settings, "stock adjust", cli_actor(args))


def _print_change(
    go: Callable[[Any], Awaitable[Any]], settings: Settings, command: str, actor: str
) -> int:
    try:
        change = _admin_run(settings, go, command, actor)
    except _Refused as refused:
        return refused.status
    print(
        f"{change.variant_id}: {change.change_type.value} {change.delta_on_hand:+d} -> "
        f"on_hand={change.on_hand} reserved={change.reserved} "
        f"available={change.available} version={change.version}"
    )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    async def go(admin: Any) -> tuple[Any, list[dict[str, Any]]]:
        level = await admin.stock_level(args.variant)
        return level, await admin.audit_trail(args.variant, args.limit)

    try:
        level, trail = _admin_run(settings, go, "stock show")
    except _Refused as refused:
        return refused.status
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
            f"ref={row['reference'] or '-'} reason={row['reason'] or '-'} by={row['actor']}"
        )
    return 0


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka.errors import KafkaError

    from service.devstack.console import publish_event

    try:
        data = json.loads(args.data)
    except ValueError as error:
        _say("stock publish", [f"data is not JSON ({error})", PUBLISH_EXAMPLE])
        return 2
    if not isinstance(data, dict):
        _say(
            "stock publish",
            [f"data must be a JSON object, not {_json_kind(data)}", PUBLISH_EXAMPLE],
        )
        return 2
    try:
        event = asyncio.run(
            publish_event(settings, args.type, data, source=args.source, event_id=args.event_id)
        )
    except ValueError as error:
        _say("stock publish", [str(error)])
        return 2
    except KafkaError as error:
        _say("stock publish", _broker_problem(error, settings))
        return 2
    print(json.dumps(event))
    return 0


PUBLISH_EXAMPLE = (
    """example: stock publish order.checkout '{"order_id": "o1", """
    """"lines": [{"variant_id": "v1", "quantity": 2}]}'"""
)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 2 when a topic does not exist (the broker is not asked to create it)."""
    from aiokafka.errors import KafkaError

    from service.devstack.console import UnknownTopics, tail_topics

    topics = args.topics or settings.published_topics
    try:
        asyncio.run(tail_topics(settings, topics, seconds=args.seconds))
    except UnknownTopics as error:
        hint = (
            "hint: `stock run` creates the worker's topics when it starts"
            if set(error.missing) & {*settings.published_topics, *settings.consumed_topics}
            else "hint: check the name; nothing has been created"
        )
        _say("stock tail", [str(error), hint])
        return 2
    except KafkaError as error:
        _say("stock tail", _broker_problem(error, settings))
        return 2
    return 0


def _broker_problem(error: Exception, settings: Settings) -> list[str]:
    return [
        f"cannot reach the broker at {settings.kafka_bootstrap_servers} ({_first_line(error)})",
        "hint: is it running? STOCK_KAFKA_BOOTSTRAP_SERVERS names it (and "
        "STOCK_KAFKA_SECURITY_PROTOCOL how to connect)",
    ]


class _Refused(Exception):
    """The command was refused and the user told why: exit with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


def _admin_run(
    settings: Settings,
    go: Callable[[Any], Awaitable[T]],
    command: str,
    actor: str | None = None,
) -> T:
    """`go` with a `StockAdmin`; a refusal or a database that cannot be used is said in
    a line or two and raised as `_Refused(2)`."""
    from service.domain.errors import DomainError

    try:
        return asyncio.run(_with_admin(settings, go, actor))
    except DomainError as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        raise _Refused(2) from None
    except Exception as error:
        problem = describe_database_error(error, settings.database_url)
        if problem is None:
            raise
        _say(command, problem)
        raise _Refused(2) from None


async def _with_admin(
    settings: Settings, go: Callable[[Any], Awaitable[T]], actor: str | None = None
) -> T:
    from service.adapters.database import create_engine
    from service.application.admin import StockAdmin

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await go(StockAdmin(engine, settings, actor=actor))
    finally:
        await engine.dispose()


def _say(command: str, lines: list[str]) -> None:
    """An error for the user: the first line after the command's name, the rest indented."""
    first, *rest = lines
    print(f"{command}: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line}", file=sys.stderr)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
