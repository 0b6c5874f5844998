"""`stock dev` tells the truth, checked on real processes (issue 11, item 7).

One `stock dev --data-dir <tmp>` on free ports serves the whole module:
- its banner appears only once the API answers /readyz (checked by connecting the
  moment the banner's first line is read);
- a second `stock dev` on the same port, or on the same data directory, fails at
  once with one line naming the port (or directory) and what changes it, status 2,
  no banner, and leaves the first one running;
- the banner names the token file, which exists, and the commands it prints work
  as printed from any directory;
- Ctrl-C with records not yet applied says how many are lost, and the count is
  exact (checked against the database afterwards); this one stops the stack, so
  it comes last.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from service.adapters.database import asyncpg_dsn
from service.devstack.servers import EmbeddedPostgres, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOCK = Path(sys.executable).with_name("stock")
BANNER = "stock dev: everything is up"
START_SECONDS = 90.0


def _env() -> dict[str, str]:
    """The test's environment without any STOCK_* setting that would steer `stock dev`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _readyz_status(port: int) -> int | str:
    """GET /readyz over a fresh connection: the status, or why there was none."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            head = sock.recv(64)
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return int(head.split()[1])


@dataclass
class DevStack:
    data_dir: Path
    http_port: int
    kafka_port: int
    process: subprocess.Popen[str]
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    #: /readyz's answer on a connection made right after the banner's line was read.
    readyz_at_banner: int | str | None = None
    banner_seen: threading.Event = field(default_factory=threading.Event)

    def read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(BANNER) and not self.banner_seen.is_set():
                self.readyz_at_banner = _readyz_status(self.http_port)
                self.banner_seen.set()
            self.lines.append(line.rstrip("\n"))

    @property
    def banner(self) -> list[str]:
        start = next(i for i, line in enumerate(self.lines) if line.startswith(BANNER))
        end = next(i for i in range(start, len(self.lines)) if self.lines[i].startswith("  Ctrl-C"))
        return self.lines[start : end + 1]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _start(data_dir: Path, http_port: int, kafka_port: int, stderr_path: Path) -> DevStack:
    process = subprocess.Popen(
        [str(STOCK), "dev", "--data-dir", str(data_dir),
         "--http-port", str(http_port), "--kafka-port", str(kafka_port)],
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("w"),
        text=True,
        env=_env(),
        cwd=data_dir.parent,
    )
    stack = DevStack(data_dir, http_port, kafka_port, process, stderr_path)
    threading.Thread(target=stack.read_stdout, daemon=True).start()
    return stack


def _stop(stack: DevStack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
        try:
            stack.process.wait(30)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            stack.process.wait()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("stock-dev")
    stack = _start(root / "data", free_port(), free_port(), root / "stderr.log")
    try:
        deadline = time.monotonic() + START_SECONDS
        while not stack.banner_seen.wait(0.2):
            if stack.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no banner (status {stack.process.poll()}); stderr:\n{stack.stderr()[-3000:]}"
                )
        yield stack
    finally:
        _stop(stack)


def test_the_banner_comes_only_once_the_api_answers_readyz(dev: DevStack) -> None:
    assert dev.readyz_at_banner == 200, (
        f"/readyz when the banner was read: {dev.readyz_at_banner!r}"
    )
    assert any(f"http://127.0.0.1:{dev.http_port}" in line for line in dev.banner)
    assert any(f"127.0.0.1:{dev.kafka_port}" in line for line in dev.banner)


def _second(data_dir: Path, http_port: int, kafka_port: int) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(STOCK), "dev", "--data-dir", str(data_dir),
         "--http-port", str(http_port), "--kafka-port", str(kafka_port)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("busy", ["http", "kafka"])
def test_a_second_stock_dev_on_a_busy_port_fails_at_once_naming_it(
    dev: DevStack, busy: str, tmp_path: Path
) -> None:
    if busy == "http":  # the second `make run`: every port and the directory the same
        args = (dev.data_dir, dev.http_port, dev.kafka_port)
        port, change = dev.http_port, "--http-port or STOCK_HTTP_PORT"
    else:
        args = (tmp_path / "other", free_port(), dev.kafka_port)
        port, change = dev.kafka_port, "--kafka-port or STOCK_DEV_KAFKA_PORT"

    status, out, err, seconds = _second(*args)

    assert status == 2, (status, out, err)
    assert out == "", "no banner, nothing on stdout"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert f"port {port} " in lines[0]
    assert change in lines[0]
    assert "Traceback" not in err
    assert seconds < 10, f"took {seconds:.1f}s"
    assert not (tmp_path / "other").exists(), "nothing is started before the check"
    assert _readyz_status(dev.http_port) == 200, "the first one still runs"


def test_a_second_stock_dev_on_the_same_data_dir_is_refused(dev: DevStack) -> None:
    status, out, err, seconds = _second(dev.data_dir, free_port(), free_port())

    assert status == 2, (status, out, err)
    assert out == ""
    [line] = err.splitlines()
    assert str(dev.data_dir) in line
    assert f"pid {dev.process.pid}" in line
    assert "--data-dir" in line
    assert seconds < 10, f"took {seconds:.1f}s"
    assert _readyz_status(dev.http_port) == 200, "its database was left alone"


def test_the_banner_names_the_token_file_and_its_commands_work_as_printed(
    dev: DevStack, tmp_path: Path
) -> None:
    if not (shutil.which("bash") and shutil.which("curl")):
        pytest.skip("the banner's commands need bash and curl")
    token_file = dev.data_dir / "token"
    assert any(line.strip() == f"API token   kept in {token_file}" for line in dev.banner)
    token = token_file.read_text().strip()
    assert token.startswith("dev-")
    assert not any(token in line for line in dev.banner), "the path is printed, not the secret"

    start = dev.banner.index("  From another shell:")
    commands = [line.strip() for line in dev.banner[start + 1 : -1]]
    assert any("/restock" in command and "$STOCK_TOKEN" in command for command in commands)
    # Pasted into a shell elsewhere (not the data directory's parent), as printed.
    done = subprocess.run(
        ["bash", "-euc", "\n".join(commands)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "unauthorized" not in done.stdout
    assert '"availableQuantity"' in done.stdout  # the check
    assert done.stdout.count("tshirt-classic-black-m") >= 3  # show, check and restock


async def test_ctrl_c_says_how_many_unapplied_records_are_lost(dev: DevStack) -> None:
    """Last: it stops the module's stack. Records sent in batches (tansu's end offsets
    lag then), Ctrl-C at once: the line's count is what the database never saw."""
    sent = 20_000
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{dev.kafka_port}", linger_ms=5)
    await producer.start()
    try:
        acks = [
            await producer.send("order.checkout", b"not json %d" % i, key=b"k%d" % (i % 50))
            for i in range(sent)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    started = time.monotonic()
    dev.process.send_signal(signal.SIGINT)
    status = await asyncio.to_thread(dev.process.wait, 60)
    seconds = time.monotonic() - started

    assert status == 0, dev.stderr()[-3000:]
    lines = [line for line in dev.stderr().splitlines() if line.startswith("stock dev: ")]
    assert len(lines) == 1, lines
    match = re.match(r"stock dev: (\d+) records on order\.checkout, .* will be lost", lines[0])
    assert match, lines[0]
    lost = int(match.group(1))
    assert seconds < 20, f"stopping took {seconds:.1f}s"
    for port in (dev.http_port, dev.kafka_port):  # the API and tansu are gone
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))

    # Every applied record left a dead letter (they are not JSON): applied + lost = sent.
    applied, unpublished = await _after_the_stop(dev.data_dir)
    assert 0 < lost <= sent
    assert applied + lost == sent, (applied, lost)
    if unpublished:
        assert f"{unpublished} outbox rows not yet published" in lines[0]


async def _after_the_stop(data_dir: Path) -> tuple[int, int]:
    server = EmbeddedPostgres(data_dir / "pg")
    url = await asyncio.to_thread(server.start)
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return (
                int(await conn.fetchval("SELECT count(*) FROM dead_letters")),
                int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")),
            )
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(server.stop)
