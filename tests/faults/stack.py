"""What a fault run stands on, with handles to break each part.

- PostgreSQL: the embedded server, which the suite can crash (`-m immediate`) and start.
- The broker: tansu behind a TCP proxy that every client goes through (the broker
  advertises the proxy's address), so the suite can make it unreachable for everyone.
- The workers: real `stock run` processes under a supervisor that restarts any that
  exits, as Kubernetes or systemd would, and counts the exits it did not cause.

An exit is the suite's doing only if its status says so: the status of an armed crash
point, -SIGKILL after the suite's SIGKILL, 0 (or -SIGTERM, before the handlers are in
place) after its SIGTERM. Anything else is an exit on the worker's own (an error that
ends the process, a failed stop), even when the suite was about to stop or kill it at
that moment: each is kept with its status and the last lines of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service import failpoints
from service.devstack.servers import EmbeddedPostgres, TansuBroker, free_port
from service.settings import Settings, isolated_settings
from tests.support.proxy import CuttableProxy

API_TOKEN = "fault-suite-token"
#: Exit status -> the crash point it names.
CRASH_POINTS = {code: name for name, code in failpoints.EXIT_CODES.items()}
#: Lines of an incarnation's log kept with an exit the suite did not cause.
LOG_TAIL_LINES = 15


def classify_exit(returncode: int, sent: Collection[int] = ()) -> tuple[bool, str]:
    """(the suite caused it, what it was) for an incarnation's exit status, given the
    signals the suite sent to end it (SIGKILL, SIGTERM; none, or both: a kill and a
    stop can cross)."""
    if returncode in CRASH_POINTS:
        return True, f"crash point {CRASH_POINTS[returncode]} (status {returncode})"
    if signal.SIGKILL in sent and returncode == -signal.SIGKILL:
        return True, "SIGKILL from the suite"
    if signal.SIGTERM in sent and returncode in (0, -signal.SIGTERM):
        return True, "stopped by the suite's SIGTERM"
    what = (
        f"killed by {signal.Signals(-returncode).name}"
        if returncode < 0
        else f"exit status {returncode}"
    )
    if sent:
        names = " and ".join(signal.Signals(s).name for s in sorted(sent))
        what += f" (the suite had sent {names})"
    return False, what


def log_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> tuple[str, ...]:
    """The last `lines` lines an incarnation wrote (its log starts at `offset`)."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return ()
    return tuple(line[:300] for line in text.splitlines() if line.strip())[-lines:]


class BrokerProxy:
    """The cuttable proxy on a loop of its own thread, so nothing the suite does
    (a blocking `pg_ctl`, a slow check) ever stalls the broker's traffic."""

    def __init__(self, broker_port: int, listen_port: int) -> None:
        self.proxy = CuttableProxy(tcp_target=("127.0.0.1", broker_port), port=listen_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._call(self.proxy.start())

    def cut(self) -> None:
        self._call(self.proxy.cut())

    def restore(self) -> None:
        self._call(self.proxy.restore())

    def stop(self) -> None:
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    broker: TansuBroker
    proxy: BrokerProxy
    server_url: str
    #: The proxy's address: what every client of the run is given.
    bootstrap: str
    work_dir: Path


@contextlib.contextmanager
def fault_stack() -> Iterator[Stack]:
    work_dir = Path(tempfile.mkdtemp(prefix="stock-faults-"))
    proxy_port = free_port()
    with contextlib.ExitStack() as cleanup:
        postgres = EmbeddedPostgres(work_dir / "pg", delete_on_stop=True)
        server_url = postgres.start()
        cleanup.callback(postgres.stop)
        broker = TansuBroker(advertised_port=proxy_port)
        broker.start()
        cleanup.callback(broker.stop)
        proxy = BrokerProxy(broker.port, proxy_port)
        proxy.start()
        cleanup.callback(proxy.stop)
        yield Stack(postgres, broker, proxy, server_url, f"127.0.0.1:{proxy_port}", work_dir)


def run_settings(url: str, stack: Stack, run: str) -> Settings:
    """Topics and a group of the run's own; holds swept often (short holds expire)."""
    prefix = f"faults-{run}"
    return isolated_settings(
        prefix,
        database_url=url,
        kafka_bootstrap_servers=stack.bootstrap,
        kafka_client_id=prefix,
        sweep_interval_seconds=0.5,
        retry_max_backoff_seconds=2.0,
        shutdown_grace_seconds=10.0,
        api_tokens=API_TOKEN,
    )


@dataclass
class Slot:
    index: int
    port: int
    process: subprocess.Popen[bytes] | None = None
    #: The suite stopped it on purpose (or is about to): the supervisor leaves it be.
    held: bool = False
    #: The suite sent it a signal that ends it (no more health probes).
    doomed: bool = False
    #: Those signals (SIGKILL, SIGTERM): with its exit status, they tell whether the
    #: suite or the worker itself ended it (`classify_exit`).
    ended_by: set[int] = field(default_factory=set)
    started_at: float = 0.0
    #: This incarnation has answered /healthz once (it has finished starting).
    answered: bool = False
    #: Records this incarnation recognised as already handled, as last scraped.
    duplicates: float = 0.0
    #: The crash point this incarnation is armed with (`service/failpoints.py`).
    armed_with: str | None = None
    #: This incarnation's log: the slot's file, from this offset on.
    log_path: Path | None = None
    log_offset: int = 0


@dataclass
class Exit:
    slot: int
    returncode: int
    expected: bool
    #: When the incarnation started (monotonic): with the slot, names it.
    at: float
    #: What it was (`classify_exit`).
    reason: str = ""
    #: For an exit the suite did not cause: the last lines of the incarnation's log.
    log_tail: tuple[str, ...] = ()
    #: Seconds the incarnation lived.
    lived: float = 0.0

    def describe(self) -> str:
        tail = "".join(f"\n        | {line}" for line in self.log_tail)
        return f"worker {self.slot}: {self.reason} after {self.lived:.1f}s{tail}"


@dataclass
class WorkerPool:
    """`count` worker processes (`stock run`, HTTP on a port each) in one group."""

    settings: Settings
    count: int
    log_dir: Path
    restart_delay: float = 1.0
    static_membership: bool = False
    #: Per slot, the crash points its next incarnations are armed with, in turn
    #: (`service/failpoints.py`); each is used once.
    arming: dict[int, list[str]] = field(default_factory=dict)
    #: Called with (slot, failpoint name, exited at, restarted at) after a planned crash.
    on_planned_crash: Callable[[Slot, str, float, float], None] | None = None
    slots: list[Slot] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    health_failures: int = 0
    health_probes: int = 0
    #: Records recognised as already handled, summed over the workers' incarnations
    #: (scraped from /metrics every second: a lower bound for killed ones).
    duplicates_seen: float = 0.0

    def __post_init__(self) -> None:
        self.slots = [Slot(i, free_port()) for i in range(self.count)]

    def spawn(self, slot: Slot, armed: bool = False) -> None:
        """Start the slot's worker; `armed`: with the slot's next crash point, if any
        (a worker's first start, and restarts after a planned crash)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCK_")}
        for name, value in self.settings.model_dump().items():
            raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            if raw is not None:
                env[f"STOCK_{name.upper()}"] = str(raw)
        env["STOCK_KAFKA_CLIENT_ID"] = f"{self.settings.kafka_client_id}-w{slot.index}"
        env["STOCK_HTTP_PORT"] = str(slot.port)
        if self.static_membership:
            env["STOCK_KAFKA_GROUP_INSTANCE_ID"] = f"worker-{slot.index}"
        if armed or slot.process is None or slot.armed_with is None:
            points = self.arming.get(slot.index)
            slot.armed_with = points.pop(0) if points else None
        # Else the last incarnation was killed or stopped (a rewind restarts every
        # worker) before it reached its point: the next one carries it instead. (One
        # that reached it has none left, `_note_exit`: its successor takes the next,
        # also when the suite, not the supervisor, starts it.)
        if slot.armed_with is not None:
            env["STOCK_FAILPOINTS"] = slot.armed_with
        env["STOCK_LOG_LEVEL"] = "INFO"
        slot.log_path = self.log_dir / f"worker-{slot.index}.log"
        log = open(slot.log_path, "ab")  # noqa: SIM115
        log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
        log.flush()
        slot.log_offset = log.tell()
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "service.entrypoints.cli", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.duplicates_seen += slot.duplicates
        slot.duplicates = 0.0
        slot.held = slot.doomed = slot.answered = False
        slot.ended_by = set()
        slot.started_at = time.monotonic()

    def start_all(self) -> None:
        for slot in self.slots:
            self.spawn(slot)

    def signal(self, slot: Slot, signum: int) -> bool:
        """Send `signum` to the slot's worker; False if it had exited already (a kill
        that finds a worker just dead at its crash point kills nothing)."""
        if slot.process is None or slot.process.poll() is not None:
            return False
        if signum in (signal.SIGKILL, signal.SIGTERM):
            slot.doomed = True
            slot.ended_by.add(signum)
        slot.process.send_signal(signum)
        return True

    async def stop_all(self, timeout: float = 30.0) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            for slot in self.slots:
                await self._scrape(client, slot)
        for slot in self.slots:
            slot.held = True
            self.signal(slot, signal.SIGTERM)
            self.signal(slot, signal.SIGCONT)  # a paused worker must hear it
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            while slot.process is not None and slot.process.poll() is None:
                if time.monotonic() > deadline:
                    self.signal(slot, signal.SIGKILL)
                await asyncio.sleep(0.1)
            self._note_exit(slot)
        for slot in self.slots:
            self.duplicates_seen += slot.duplicates
            slot.duplicates = 0.0

    async def supervise(self) -> None:
        """Restart any worker that exits, `restart_delay` after it was seen to exit,
        unless it is held. Every slot is looked at every 0.1 s, also while another
        waits for its restart (so each exit is noted, and timed, when it happens)."""
        waiting: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        while True:
            for slot in self.slots:
                process = slot.process
                if process is None or slot.held or process.poll() is None:
                    continue
                if slot.index not in waiting or waiting[slot.index][0] is not process:
                    self._note_exit(slot)
                    waiting[slot.index] = (process, time.monotonic())
            for index, (exited, exited_at) in list(waiting.items()):
                slot = self.slots[index]
                if slot.held or slot.process is not exited:
                    # The suite holds it, or started it again itself meanwhile.
                    del waiting[index]
                elif time.monotonic() - exited_at >= self.restart_delay:
                    del waiting[index]
                    planned = CRASH_POINTS.get(exited.returncode)
                    self.spawn(slot, armed=planned is not None)
                    if planned and self.on_planned_crash is not None:
                        self.on_planned_crash(slot, planned, exited_at, time.monotonic())
            await asyncio.sleep(0.1)

    def armed_crashes_left(self) -> int:
        """Points not reached yet: those still to arm and those armed now."""
        waiting = sum(len(points) for points in self.arming.values())
        return waiting + sum(slot.armed_with is not None for slot in self.slots)

    async def probe_health(self) -> None:
        """Each worker, once started, keeps answering /healthz whatever else is down
        (unless it is paused or being stopped)."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                await asyncio.sleep(0.5)
                for slot in self.slots:
                    process = slot.process
                    if slot.held or slot.doomed or process is None or process.poll() is not None:
                        continue
                    if _is_stopped(process.pid):
                        continue
                    try:
                        answer = await client.get(f"http://127.0.0.1:{slot.port}/healthz")
                        healthy = answer.status_code == 200
                    except httpx.HTTPError:
                        healthy = False
                    if process is not slot.process or slot.held or slot.doomed:
                        continue  # killed or stopped while we asked
                    if healthy:
                        slot.answered = True
                    if slot.answered:
                        self.health_probes += 1
                        self.health_failures += not healthy and not _is_stopped(process.pid)
                    if healthy:
                        await self._scrape(client, slot)

    async def _scrape(self, client: httpx.AsyncClient, slot: Slot) -> None:
        """The worker's count of records it recognised as handled before."""
        process = slot.process
        if process is None or process.poll() is not None or _is_stopped(process.pid):
            return
        try:
            answer = await client.get(f"http://127.0.0.1:{slot.port}/metrics")
        except httpx.HTTPError:
            return
        if process is not slot.process or answer.status_code != 200:
            return
        slot.duplicates = sum(
            float(line.rsplit(" ", 1)[1])
            for line in answer.text.splitlines()
            if line.startswith("stock_events_consumed_total{") and 'outcome="duplicate"' in line
        )

    async def cpu_busy(self, slot: Slot, window: float = 0.1) -> bool:
        """Did the worker use CPU in the last moment (so a kill now lands mid-work)?"""
        if slot.process is None:
            return False
        before = _cpu_ticks(slot.process.pid)
        await asyncio.sleep(window)
        return _cpu_ticks(slot.process.pid) > before

    async def wait_ready(self, slots: list[Slot] | None = None, timeout: float = 90.0) -> None:
        """Each worker holds partitions (its /readyz says so)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            for slot in slots or self.slots:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        answer = await client.get(f"http://127.0.0.1:{slot.port}/readyz")
                        if answer.status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker {slot.index} was not ready in {timeout}s")
                    await asyncio.sleep(0.5)

    def unexpected_exits(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]

    def _note_exit(self, slot: Slot) -> None:
        if slot.process is None or slot.process.returncode is None:
            return
        if any(e.slot == slot.index and e.at == slot.started_at for e in self.exits):
            return
        returncode = slot.process.returncode
        if returncode in CRASH_POINTS:
            slot.armed_with = None  # reached: not to be carried to the next incarnation
        expected, reason = classify_exit(returncode, slot.ended_by)
        tail = () if expected or slot.log_path is None else log_tail(slot.log_path, slot.log_offset)
        self.exits.append(
            Exit(
                slot.index,
                returncode,
                expected,
                slot.started_at,
                reason,
                tail,
                time.monotonic() - slot.started_at,
            )
        )


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def _is_stopped(pid: int) -> bool:
    """SIGSTOPped (state T in /proc): it cannot answer, and is not meant to."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False
