"""What `stock dev` says about itself, and only when it is true.

- Ports are checked before anything starts: a second `stock dev` (or anything else on
  the port) is one line naming the port and the flag or setting that changes it.
- One `stock dev` per data directory (a lock in it), since two would share one
  PostgreSQL and stop it under each other.
- The banner is printed once every part answers: the database a query, the broker
  a metadata request, the HTTP API `/readyz` (which also wants the consumer's
  partitions), polled over a real connection.
- On Ctrl-C or SIGTERM, once the worker has finished the batch in hand and before
  the broker stops, the records it will never apply are counted and named: tansu
  keeps them in memory, so they go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from service.settings import Settings

log = logging.getLogger(__name__)

#: The broker port `stock dev` tries first; when it is taken and no port was asked
#: for, a free one is used instead (the banner says which).
DEFAULT_KAFKA_PORT = 9092
#: After this long without every part answering, say which does not (once), and wait on.
SLOW_START_SECONDS = 30.0
#: How long the count of unapplied records may take at Ctrl-C.
COUNT_SECONDS = 2.0


class DevStackRefused(Exception):
    """`stock dev` cannot start as asked; the message is the one line to print."""


# --------------------------------------------------------------------------- ports


@dataclasses.dataclass(frozen=True)
class DevPorts:
    http: int
    kafka: int
    #: Why the broker is not on the port asked for (empty when it is).
    kafka_note: str = ""


def _listen_problem(host: str, port: int) -> OSError | None:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as uvicorn and
    tansu bind: a port held only by closing connections counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error
    return None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_from_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise DevStackRefused(f"{name}={raw!r} is not a port number (0 to 65535; 0: any free port)")
    return port


def claim_ports(
    settings: Settings, *, http_port: int | None, kafka_port: int | None, kafka_host: str
) -> DevPorts:
    """The ports `stock dev` will use, checked before anything starts.

    `http_port`: --http-port, else STOCK_HTTP_PORT (settings). `kafka_port`:
    --kafka-port, else STOCK_DEV_KAFKA_PORT, else 9092 or a free port when 9092 is
    taken. A port asked for that is taken is refused; 0 means any free port.
    """
    for flag, value in (("--http-port", http_port), ("--kafka-port", kafka_port)):
        if value is not None and not 0 <= value <= 65535:
            raise DevStackRefused(f"{flag} {value} is not a port number (0 to 65535)")
    http_host = settings.http_host
    http = settings.http_port if http_port is None else http_port
    if http == 0:
        http = _free_port(http_host)
    else:
        _refuse_if_taken(
            http_host, http, "HTTP API", "--http-port or STOCK_HTTP_PORT", "STOCK_HTTP_HOST"
        )
    asked = kafka_port if kafka_port is not None else _port_from_env("STOCK_DEV_KAFKA_PORT")
    note = ""
    if asked is None:
        kafka = DEFAULT_KAFKA_PORT
        if _listen_problem(kafka_host, kafka) is not None:
            kafka = _free_port(kafka_host)
            note = f"{DEFAULT_KAFKA_PORT} was taken"
    elif asked == 0:
        kafka = _free_port(kafka_host)
    else:
        kafka = asked
        _refuse_if_taken(
            kafka_host, kafka, "Kafka broker", "--kafka-port or STOCK_DEV_KAFKA_PORT", None
        )
    if kafka == http and kafka_host == http_host:
        raise DevStackRefused(
            f"the HTTP API and the broker cannot share port {http}: "
            "change --http-port or --kafka-port"
        )
    return DevPorts(http=http, kafka=kafka, kafka_note=note)


def _refuse_if_taken(
    host: str, port: int, what: str, change: str, host_setting: str | None
) -> None:
    problem = _listen_problem(host, port)
    if problem is None:
        return
    if problem.errno == errno.EADDRINUSE:
        raise DevStackRefused(
            f"port {port} ({what}) is already in use on {host}, perhaps by another "
            f"`stock dev`: stop that, or choose another port with {change} "
            "(0: any free port)"
        )
    where = f", or set {host_setting}" if host_setting else ""
    raise DevStackRefused(
        f"the {what} cannot listen on {host}:{port} ({problem.strerror}): "
        f"choose another port with {change}{where}"
    )


# ---------------------------------------------------------------- data directory


def check_data_dir(data_dir: Path) -> None:
    """Refuse a directory the embedded PostgreSQL cannot start in (its socket
    directory is passed to the server through pg_ctl -o, split on spaces)."""
    if any(character.isspace() for character in str(data_dir)):
        raise DevStackRefused(
            f"the embedded PostgreSQL cannot use a directory whose path has a space "
            f"({data_dir}): choose another with --data-dir or STOCK_DEV_DATA_DIR"
        )


class DataDirLock:
    """One `stock dev` per data directory: an flock on `D/stock-dev.pid`, released
    by the kernel when the process ends however it ends (nothing stale to clean up)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "stock-dev.pid"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DevStackRefused(
                f"{self.path.parent} is in use by another `stock dev` (pid {holder}): stop "
                "that, or give this one its own directory with --data-dir or "
                "STOCK_DEV_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM as Ctrl-C while `stock dev` starts (PostgreSQL, broker, migrations):
    the `finally` that stops the servers runs instead of the process just dying."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------- banner


def banner(
    settings: Settings,
    *,
    added: int,
    token_file: Path | None,
    kafka_note: str = "",
    stock_command: str = ".venv/bin/stock",
) -> str:
    """The lines printed once everything answers, with commands that work as printed
    (absolute paths: the token is read from its file, whatever the data directory)."""
    api = f"http://{_client_host(settings.http_host)}:{settings.http_port}"
    bootstrap = settings.kafka_bootstrap_servers
    note = f"; {kafka_note}" if kafka_note else ""
    if token_file is not None:
        token_line = f"  API token   kept in {token_file}"
        export_token = f'    export STOCK_TOKEN="$(cat {shlex.quote(str(token_file))})"'
    else:
        token_line = "  API token   the first of STOCK_API_TOKENS"
        first = settings.api_tokens.get_secret_value().split(",")[0].strip()
        if settings.api_token_entries and settings.api_token_entries[0].secret != first:
            # A named entry, `name:secret:scope`: the bearer is its secret alone.
            export_token = (
                '    export STOCK_TOKEN="$(echo "${STOCK_API_TOKENS%%,*}" | cut -d: -f2)"'
            )
        else:
            export_token = '    export STOCK_TOKEN="${STOCK_API_TOKENS%%,*}"'
    restock = json.dumps(
        {"updates": [{"variantId": "tshirt-classic-black-m", "quantity": 5, "reason": "delivery"}]},
        separators=(",", ":"),
    )
    return "\n".join(
        [
            "",
            "stock dev: everything is up (database, broker and /readyz answer)",
            f"  PostgreSQL  STOCK_DATABASE_URL='{settings.database_url}'",
            f"  Kafka       STOCK_KAFKA_BOOTSTRAP_SERVERS={bootstrap}  (tansu, in memory{note})",
            f"  catalogue   {added} sample variants added this time",
            f"  consumes    {', '.join(settings.consumed_topics)}",
            f"  publishes   {', '.join(settings.published_topics)}",
            f"  HTTP API    {api}  (docs {api}/docs, AsyncAPI {api}/asyncapi)",
            f"  dashboard   {api}/dashboard  (paste the API token once)",
            token_line,
            "  From another shell:",
            f"    export STOCK_DATABASE_URL='{settings.database_url}'",
            f"    export STOCK_KAFKA_BOOTSTRAP_SERVERS={bootstrap}",
            export_token,
            f"    {stock_command} show tshirt-classic-black-m",
            f"    curl -s '{api}/api/inventory/check/tshirt-classic-black-m?quantity=2'",
            f"    curl -s -X POST {api}/api/inventory/restock"
            ' -H "Authorization: Bearer $STOCK_TOKEN"'
            f" -H 'Content-Type: application/json' -d '{restock}'",
            "  Ctrl-C stops the worker, the broker and the database.",
            "",
        ]
    )


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


# ------------------------------------------------------------------- readiness


async def database_answers(database_url: str, within: float = 2.0) -> str | None:
    """None when the database runs a query, else what went wrong."""
    import asyncpg

    from service.adapters.database import asyncpg_dsn

    try:
        async with asyncio.timeout(within):
            conn = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
    except Exception as error:
        return f"database: {type(error).__name__} {error}".strip()
    return None


async def broker_answers(settings: Settings, within: float = 2.0) -> str | None:
    """None when the broker answers a metadata request, else what went wrong."""
    from aiokafka.admin import AIOKafkaAdminClient

    from service.adapters.kafka import kafka_client_options

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-dev",
        request_timeout_ms=int(within * 1000),
        **kafka_client_options(settings),
    )
    try:
        async with asyncio.timeout(within):
            await admin.start()
            await admin.list_topics()
    except Exception as error:
        return f"broker: {type(error).__name__} {error}".strip()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), 1.0)
    return None


async def http_get(host: str, port: int, path: str, within: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP/1.1 GET: no client library in the runtime."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {head[:80]!r}")
    return int(status_line[1]), body


async def readyz_answers(host: str, port: int, within: float = 2.0) -> str | None:
    """None when GET /readyz answers 200, else what it said."""
    try:
        status, body = await http_get(_client_host(host), port, "/readyz", within)
    except Exception as error:
        return f"HTTP API /readyz: {type(error).__name__} {error}".strip()
    if status == 200:
        return None
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP API /readyz: {status} {message}".strip()


async def wait_until_everything_answers(
    settings: Settings, stopping: asyncio.Event, *, poll: float = 0.1
) -> bool:
    """Poll the database, the broker, then /readyz until all answer. False when
    `stopping` is set first. Says once which part is slow after SLOW_START_SECONDS."""
    loop = asyncio.get_running_loop()
    slow_at = loop.time() + SLOW_START_SECONDS
    said = False
    checks: list[Callable[[], Awaitable[str | None]]] = [
        lambda: database_answers(settings.database_url),
        lambda: broker_answers(settings),
        lambda: readyz_answers(settings.http_host, settings.http_port),
    ]
    for check in checks:
        while (problem := await check()) is not None:
            if not said and loop.time() > slow_at:
                print(f"stock dev: still waiting for {problem}", file=sys.stderr, flush=True)
                said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), poll)
            if stopping.is_set():
                return False
    return True


# ------------------------------------------------------------ unapplied records


@dataclasses.dataclass(frozen=True)
class Unapplied:
    """What a stop leaves behind. None: could not be counted in time."""

    #: Records on the consumed topics past the group's committed offsets: in tansu's
    #: memory only, so lost when it stops.
    records: int | None
    #: Outbox rows not yet published: kept in PostgreSQL, published by the next start.
    outbox: int | None

    def line(self, settings: Settings) -> str | None:
        """The one line to print, or None when nothing is left behind."""
        if self.records == 0 and not self.outbox:
            return None
        if self.records is None:
            records = (
                "could not count the records not yet applied (no answer from the broker "
                f"within {COUNT_SECONDS:g}s); any there are lost with tansu's memory"
            )
        elif self.records:
            records = (
                f"{self.records} record{'s' if self.records != 1 else ''} on "
                f"{', '.join(settings.consumed_topics)} not yet applied will be lost "
                "(tansu keeps them in memory only)"
            )
        else:
            records = "every consumed record was applied"
        outbox = ""
        if self.outbox:
            outbox = (
                f"; {self.outbox} outbox row{'s' if self.outbox != 1 else ''} not yet "
                "published stay in the database for the next `stock dev` to publish"
            )
        return f"stock dev: {records}{outbox}"


async def count_unapplied(settings: Settings, within: float = COUNT_SECONDS) -> Unapplied:
    """Records of the consumed topics the group has not committed, and unpublished
    outbox rows; each given up (None) after `within` seconds."""
    records, outbox = await asyncio.gather(
        _bounded(unapplied_records(settings), within),
        _bounded(outbox_unpublished(settings.database_url), within),
    )
    return Unapplied(records=records, outbox=outbox)


async def _bounded(work: Awaitable[int], within: float) -> int | None:
    try:
        return await asyncio.wait_for(work, within)
    except Exception as error:
        log.debug("stock dev: not counted: %r", error)
        return None


async def outbox_unpublished(database_url: str) -> int:
    import asyncpg

    from service.adapters.database import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    finally:
        await conn.close()


async def unapplied_records(settings: Settings) -> int:
    """Sum over the consumed topics' partitions of (end offset - committed offset).

    The end offsets are the broker's (ListOffsets), corrected for tansu: it answers
    the base offset of a partition's last record batch + 1, not the offset after the
    batch's last record. So the last batch is read (a fetch from that offset returns
    it whole) and its last record sets the end. Apache Kafka's answer is exact and
    the read changes nothing. No commit: the group's offsets are only read.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from service.adapters.kafka import kafka_client_options

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-dev",
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        **kafka_client_options(settings),
    )
    try:
        await consumer.start()
        await consumer.topics()  # the cluster metadata, for partitions_for_topic
        partitions = [
            TopicPartition(topic, partition)
            for topic in settings.consumed_topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return 0
        ends: dict[Any, int] = dict(await consumer.end_offsets(partitions))
        starts: dict[Any, int] = dict(await consumer.beginning_offsets(partitions))
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is not None and committed >= 0:
                starts[tp] = committed
        await _read_last_batches(consumer, ends)
        return sum(max(ends[tp] - starts[tp], 0) for tp in partitions)
    finally:
        await consumer.stop()


async def _read_last_batches(consumer: Any, ends: dict[Any, int]) -> None:
    """Raise each end offset to just past the last record of the partition's last batch."""
    probe = [tp for tp, end in ends.items() if end > 0]
    if not probe:
        return
    consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, ends[tp] - 1)
    pending = set(probe)
    empty_rounds = 0
    while pending and empty_rounds < 3:
        fetched = await consumer.getmany(*pending, timeout_ms=200)
        empty_rounds = 0 if fetched else empty_rounds + 1
        for tp, records in fetched.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                pending.discard(tp)


# ------------------------------------------------------------------------ serve


async def serve(settings: Settings, banner_text: str) -> None:
    """Start the worker and the API; print the banner once everything answers; on
    SIGINT or SIGTERM stop them, then say what the stop leaves behind."""
    from service.entrypoints.process import StockProcess

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    process = StockProcess(settings)
    starting = asyncio.create_task(process.start(), name="stock-dev-start")
    try:
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if starting.done():
            starting.result()  # a start that failed raises here
            if await wait_until_everything_answers(settings, stopping):
                print(banner_text, flush=True)
                await stopping.wait()
        log.info("stopping: finishing the work in hand, then committing")
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await process.stop()
        line = (await count_unapplied(settings)).line(settings)
        if line:
            print(line, file=sys.stderr, flush=True)
