"""The faults, one scenario each and then all together, and how one scenario runs.

A scenario: fresh database and topics; two worker processes in one group; the shop
publishes its stream at a steady rate while the scenario's faults strike at random
(seeded) moments; then the faults heal, the backlog drains, the workers stop and the
checker compares everything with the reference model.

Recovery time of a fault: from the moment it ends (the process restarted or resumed,
the database or broker back) until every valid event the shop had sent before that
moment is applied. For the rewind: until the group has consumed again everything the
input topics held when the workers came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from bench.stack import Stack as Servers
from bench.stack import fresh_database
from tests.faults.checker import OutputTopics, Verdict, check
from tests.faults.stack import API_TOKEN, Slot, Stack, WorkerPool, run_settings
from tests.faults.workload import SOURCE, Mix, Planned, Topics, Workload, build_workload

#: aiokafka's default group session timeout: a paused worker loses its partitions after it.
SESSION_TIMEOUT = 10.0
DRAIN_TIMEOUT = 240.0


@dataclass
class FaultRecord:
    kind: str
    at: float
    healed_at: float = 0.0
    recovered_at: float | None = None
    detail: str = ""
    #: For the rewind: the input offsets the group must commit again to have caught up.
    caught_up_at_offsets: dict[TopicPartition, int] | None = None

    @property
    def recovery_seconds(self) -> float | None:
        if self.recovered_at is None:
            return None
        return max(self.recovered_at - self.healed_at, 0.0)


@dataclass
class ScenarioResult:
    name: str
    title: str
    seed: int
    verdict: Verdict
    faults: list[FaultRecord]
    seconds: float
    drained_seconds: float | None
    unexpected_exits: int
    health_failures: int
    health_probes: int
    #: Records the workers recognised as handled before (resends and redeliveries).
    duplicates_seen: int = 0
    #: Armed crash points the run ended without reaching (no traffic left for them).
    crash_points_unreached: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: Each exit the suite did not cause: worker, status, last lines of its log.
    unexpected_exit_details: list[str] = field(default_factory=list)

    @property
    def redelivered(self) -> int:
        """Records delivered again after they were handled (a crash between the
        commit and the offset commit, a zombie, a rewind): what the workers skipped,
        minus the copies the shop itself sent twice. A lower bound."""
        return max(self.duplicates_seen - self.verdict.figures.get("resent_by_shop", 0), 0)

    @property
    def ok(self) -> bool:
        return (
            self.verdict.ok
            and self.drained_seconds is not None
            and all(f.recovered_at is not None for f in self.faults)
        )


class Run:
    """Shared state of one scenario run: what the faults act on and what they report."""

    def __init__(
        self, stack: Stack, pool: WorkerPool, workload: Workload, topics: Topics, rng: random.Random
    ) -> None:
        self.stack = stack
        self.pool = pool
        self.workload = workload
        self.topics = topics
        self.rng = rng
        self.t0 = 0.0
        self.sent_valid: list[str] = []
        self.faults: list[FaultRecord] = []
        self.load_done = asyncio.Event()
        self.load_ended_at = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def healed(self, fault: FaultRecord) -> None:
        fault.healed_at = self.now()
        self.faults.append(fault)

    def planned_crash(self, slot: Slot, point: str, exited: float, restarted: float) -> None:
        """The supervisor saw a worker die at an armed crash point, and restarted it."""
        fault = FaultRecord(f"crash:{point}", exited - self.t0, detail=f"worker {slot.index}")
        fault.healed_at = restarted - self.t0
        self.faults.append(fault)


# ---------------------------------------------------------------------------- faults

Fault = Callable[[Run], Awaitable[None]]


async def kill_workers(run: Run, times: int = 4) -> None:
    """SIGKILL a worker, up to `times` while the load lasts; the supervisor brings it
    back. Each kill waits until the worker is consuming again and then strikes within
    a second or two, while it catches up on the backlog the last kill left: mid-batch,
    between a commit and its offset commit, or mid-relay, rather than while it idles."""
    await asyncio.sleep(run.rng.uniform(2.0, 5.0))
    for _ in range(times):
        slot = run.rng.choice(run.pool.slots)
        await run.pool.wait_ready([slot])
        await asyncio.sleep(run.rng.uniform(0.1, 2.0))
        if run.load_done.is_set():
            break  # a kill with nothing in flight proves nothing
        busy = await run.pool.cpu_busy(slot)
        fault = FaultRecord(
            "kill", run.now(), detail=f"worker {slot.index}, {'busy' if busy else 'idle'}"
        )
        if not run.pool.signal(slot, signal.SIGKILL):
            continue  # it had just died (at a crash point): nothing was killed
        while slot.process is None or slot.process.poll() is not None or slot.doomed:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # until the supervisor has restarted it
        run.healed(fault)


async def pause_worker(run: Run) -> None:
    """SIGSTOP past the session timeout (the group gives its partitions away), then
    SIGCONT: a zombie with a batch in hand that must not corrupt anything."""
    await asyncio.sleep(run.rng.uniform(2.0, 5.0))
    slot = run.rng.choice(run.pool.slots)
    seconds = SESSION_TIMEOUT + 5
    fault = FaultRecord("pause", run.now(), detail=f"worker {slot.index} for {seconds:.0f}s")
    run.pool.signal(slot, signal.SIGSTOP)
    await asyncio.sleep(seconds)
    run.pool.signal(slot, signal.SIGCONT)
    run.healed(fault)


async def restart_database(run: Run) -> None:
    """`pg_ctl stop -m immediate` mid-load, down a few seconds, then started again."""
    await asyncio.sleep(run.rng.uniform(3.0, 8.0))
    down = run.rng.uniform(3.0, 6.0)
    fault = FaultRecord("db-restart", run.now(), detail=f"down {down:.1f}s")
    await asyncio.to_thread(run.stack.postgres.crash)
    await asyncio.sleep(down)
    await asyncio.to_thread(run.stack.postgres.restart)
    run.healed(fault)


async def cut_broker(run: Run) -> None:
    """The broker unreachable for everyone (connections dropped, new ones refused)."""
    await asyncio.sleep(run.rng.uniform(3.0, 8.0))
    away = run.rng.uniform(8.0, 15.0)
    fault = FaultRecord("broker-cut", run.now(), detail=f"away {away:.1f}s")
    await asyncio.to_thread(run.stack.proxy.cut)
    await asyncio.sleep(away)
    await asyncio.to_thread(run.stack.proxy.restore)
    run.healed(fault)


async def rewind_offsets(run: Run) -> None:
    """Stop the workers, set the group's offsets back to the beginning of every input
    partition (as `kafka-consumer-groups --reset-offsets --to-earliest` does), start
    them again: everything is delivered a second time. It strikes after a pause has
    ended (stopping a paused worker would cut the zombie's story short)."""
    await asyncio.sleep(run.rng.uniform(18.0, 22.0))
    fault = FaultRecord("rewind", run.now())
    await run.pool.stop_all()
    deadline = time.monotonic() + 120
    while True:  # the broker may be cut off right now: try again until it answers
        try:
            ends = await _reset_group_to_earliest(run)
            break
        except (TimeoutError, KafkaError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
    fault.detail = f"{sum(ends.values())} records redelivered"
    fault.caught_up_at_offsets = ends
    run.pool.start_all()
    run.healed(fault)


async def _reset_group_to_earliest(run: Run) -> dict[TopicPartition, int]:
    """Join the (stopped) group alone, commit offset 0 everywhere; the input topics'
    end offsets at that moment."""
    consumer = AIOKafkaConsumer(
        *run.topics.all(),
        bootstrap_servers=run.stack.bootstrap,
        group_id=run.pool.settings.kafka_group_id,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        # The workers' assignor: members of theirs may linger in the group (a killed
        # one until its session times out), and a group takes one protocol.
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await consumer.start()
    try:
        partitions = await _input_partitions(consumer, run.topics)
        async with asyncio.timeout(60):
            while consumer.assignment() != partitions:
                await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: 0 for tp in partitions})
        return await consumer.end_offsets(list(partitions))
    finally:
        await consumer.stop()


async def _input_partitions(consumer: AIOKafkaConsumer, topics: Topics) -> set[TopicPartition]:
    await consumer.topics()  # fresh metadata
    partitions = {
        TopicPartition(t, p) for t in topics.all() for p in consumer.partitions_for_topic(t) or ()
    }
    if len(partitions) != 3 * len(topics.all()):
        raise KafkaError(f"metadata lists {len(partitions)} input partitions")
    return partitions


async def crash_at_points(run: Run) -> None:
    """The workers run armed with crash points (`Scenario.arming`): each incarnation
    dies at its point, the supervisor starts the next, armed with the next point.
    This waits until every armed crash has happened and its worker is back, or until
    the load has been over for a while (a point needs traffic to be reached; the ones
    never reached are reported)."""
    while run.pool.armed_crashes_left() or any(
        s.process is None or s.process.poll() is not None for s in run.pool.slots
    ):
        if run.load_done.is_set() and run.now() - run.load_ended_at > 20:
            return
        await asyncio.sleep(0.2)


FAULTS: dict[str, Fault] = {
    "kill": kill_workers,
    "pause": pause_worker,
    "db-restart": restart_database,
    "broker-cut": cut_broker,
    "rewind": rewind_offsets,
    "crash-points": crash_at_points,
}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    faults: tuple[str, ...] = ()
    mix: Mix = field(default_factory=Mix)
    #: Crash points per worker slot, one incarnation each (`service/failpoints.py`).
    arming: dict[int, tuple[str, ...]] = field(default_factory=dict)


#: Two of each crash point. Both workers start armed at the relay's third round: only
#: the relay leader reaches it, dies, and the other takes the lead and reaches it
#: too. Their next incarnations die inside a batch and between a batch's commit and
#: its offset commit, ten batches after they start consuming: while catching up.
#: The last ones die in the fast path (service/adapters/fast_publish.py), at its tenth
#: round: after a commit, before its reservation rows are sent; after Kafka
#: acknowledged them, before they are deleted.
EVERY_CRASH_POINT = {
    0: ("relay_after_send@3", "after_commit@10", "mid_batch@10", "fast_before_send@10"),
    1: ("relay_after_send@3", "mid_batch@10", "after_commit@10", "fast_after_send@10"),
}


def scenarios(short: bool) -> list[Scenario]:
    seconds = 30.0 if short else 40.0
    plain = Mix(seconds=seconds)
    every = Scenario(
        "all",
        "Every fault in one run, poison and expiring holds included",
        ("kill", "pause", "db-restart", "broker-cut", "rewind", "crash-points"),
        # Long enough that, after four crashes, a rewind and the rest, the workers are
        # consuming again while the load lasts (the kills strike only then).
        Mix(seconds=seconds * 2, poison_share=0.08, short_hold_share=0.12),
        # One after a commit, one in the relay (whichever worker leads it then), one on
        # each side of the fast path's send.
        {
            0: ("after_commit@10", "fast_before_send@3"),
            1: ("fast_after_send@5", "relay_after_send@3"),
        },
    )
    if short:
        return [every]
    return [
        Scenario("baseline", "No fault (the checker's control)", (), plain),
        Scenario("kill", "SIGKILL a worker at random moments, 3 times", ("kill",), plain),
        Scenario(
            "pause", "SIGSTOP a worker past the session timeout, then SIGCONT", ("pause",), plain
        ),
        Scenario(
            "db-restart", "PostgreSQL stopped -m immediate, then started", ("db-restart",), plain
        ),
        Scenario("broker-cut", "The broker unreachable for 8-15 s", ("broker-cut",), plain),
        Scenario("rewind", "The group's offsets rewound to the beginning", ("rewind",), plain),
        Scenario(
            "crash-points",
            "Crashes inside a batch, between its commit and its offset commit, "
            "between the relay's send and its deleting the rows (2 of each), and on "
            "each side of the fast path's send",
            ("crash-points",),
            # Eight crashes, each followed by a rejoin: the load lasts long enough for all.
            Mix(seconds=max(seconds, 20) * 3),
            EVERY_CRASH_POINT,
        ),
        Scenario(
            "poison",
            "Poison at 15% of the stream, every kind",
            (),
            Mix(seconds=seconds, poison_share=0.15),
        ),
        Scenario(
            "expiry",
            "30% of holds expire around their payment",
            (),
            Mix(seconds=seconds, short_hold_share=0.3),
        ),
        every,
    ]


# ---------------------------------------------------------------------------- one run


async def run_scenario(stack: Stack, scenario: Scenario, seed: int) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    url = await fresh_database(
        Servers(stack.server_url, stack.bootstrap), f"faults_{scenario.name}"
    )
    settings = run_settings(url, stack, f"{scenario.name}-{seed}")
    topics = Topics(
        settings.topic_order_checkout,
        settings.topic_payment_succeeded,
        settings.topic_payment_failed,
        settings.topic_order_cancelled,
    )
    outputs = OutputTopics(
        settings.topic_stock_changed, settings.topic_stock_reservation, settings.topic_dlq
    )
    await _create_topics(stack.bootstrap, [*topics.all(), *settings.published_topics])
    # The load starts once the workers are ready; holds are placed relative to then.
    log_dir = stack.work_dir / f"{scenario.name}-{seed}"
    log_dir.mkdir(parents=True, exist_ok=True)
    pool = WorkerPool(
        settings,
        2,
        log_dir,
        arming={slot: list(points) for slot, points in scenario.arming.items()},
    )
    pool.start_all()
    supervisor = asyncio.create_task(pool.supervise())
    prober = asyncio.create_task(pool.probe_health())
    try:
        await pool.wait_ready()
        catalogue = build_workload(topics, scenario.mix, seed=seed, started=datetime.now(UTC))
        await _load_catalogue(pool, catalogue.catalogue)
        # Built again (the same for the seed) so hold expiries count from now.
        workload = build_workload(topics, scenario.mix, seed=seed, started=datetime.now(UTC))
        run = Run(stack, pool, workload, topics, rng)
        run.t0 = time.monotonic()
        pool.on_planned_crash = run.planned_crash
        loader = asyncio.create_task(_publish(run))
        monitor = asyncio.create_task(RecoveryWatch(run, url).watch())
        await asyncio.gather(*(FAULTS[name](run) for name in scenario.faults))
        await loader
        drained = await _drain(run, url)
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    finally:
        supervisor.cancel()
        prober.cancel()
        await pool.stop_all()
    verdict = await check(workload, topics, outputs, url, stack.bootstrap)
    for fault in run.faults:
        if fault.recovered_at is None:
            verdict.problem(f"{fault.kind} at {fault.at:.1f}s never recovered")
    return ScenarioResult(
        scenario.name,
        scenario.title,
        seed,
        verdict,
        run.faults,
        time.monotonic() - started,
        drained,
        len(pool.unexpected_exits()),
        pool.health_failures,
        pool.health_probes,
        int(pool.duplicates_seen),
        pool.armed_crashes_left(),
        workload.counts,
        unexpected_exit_details=[e.describe() for e in pool.unexpected_exits()],
    )


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 3, 1) for n in names])
    finally:
        await admin.close()


async def _load_catalogue(pool: WorkerPool, catalogue: dict[str, int]) -> None:
    """Through the API like any warehouse would, so each unit has its audit row."""
    updates = [
        {"variantId": v, "quantity": units, "productId": "fault-product", "reason": "opening stock"}
        for v, units in catalogue.items()
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"http://127.0.0.1:{pool.slots[0].port}/api/inventory/restock",
            json={"updates": updates},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        answer.raise_for_status()


async def _publish(run: Run) -> None:
    """Send every planned record at its time. A send the broker did not acknowledge
    (it was away) is sent again, bytes unchanged, until it is: so every record is on
    its topic at least once, as with any producer that retries."""
    producer = AIOKafkaProducer(
        bootstrap_servers=run.stack.bootstrap,
        enable_idempotence=False,
        linger_ms=5,
        request_timeout_ms=5000,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    pending: list[tuple[Planned, asyncio.Future[object]]] = []
    try:
        for record in run.workload.records:
            delay = record.at - run.now()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append((record, await _send(producer, record)))
            if record.event_id is not None:
                run.sent_valid.append(record.event_id)
            pending = await _resend_failed(producer, pending, wait=False)
        while pending:
            pending = await _resend_failed(producer, pending, wait=True)
    finally:
        await producer.stop()
        run.load_ended_at = run.now()
        run.load_done.set()


async def _send(producer: AIOKafkaProducer, record: Planned) -> asyncio.Future[object]:
    while True:
        try:
            future: asyncio.Future[object] = await producer.send(
                record.topic, record.value, key=record.key, headers=list(record.headers)
            )
            return future
        except Exception:
            await asyncio.sleep(0.5)


async def _resend_failed(
    producer: AIOKafkaProducer, pending: list[tuple[Planned, asyncio.Future[object]]], wait: bool
) -> list[tuple[Planned, asyncio.Future[object]]]:
    if wait:
        await asyncio.wait([f for _, f in pending])
    still: list[tuple[Planned, asyncio.Future[object]]] = []
    for record, future in pending:
        if not future.done():
            still.append((record, future))
        elif future.exception() is not None:
            still.append((record, await _send(producer, record)))
    return still


class RecoveryWatch:
    """Stamps each healed fault with the moment everything sent before it is applied
    (for a rewind: the moment the group has committed its way back to the end)."""

    def __init__(self, run: Run, url: str) -> None:
        self.run = run
        self.url = url
        self._due: dict[int, list[str]] = {}
        self._conn: asyncpg.Connection | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def watch(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.25)
                for fault in self.run.faults:
                    if fault.recovered_at is None:
                        await self._check(fault)
        finally:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            if self._offsets is not None:
                await self._offsets.stop()

    async def _check(self, fault: FaultRecord) -> None:
        try:
            if fault.caught_up_at_offsets is not None:
                if await self._committed_at_least(fault.caught_up_at_offsets):
                    fault.recovered_at = self.run.now()
                return
            # What the shop had sent when the fault healed (first seen just after).
            due = self._due.setdefault(id(fault), list(dict.fromkeys(self.run.sent_valid)))
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.url, timeout=2)
            applied = await self._conn.fetchval(
                "SELECT count(*) FROM processed_events WHERE source = $1 "
                "AND event_id = ANY($2::text[])",
                SOURCE,
                due,
            )
            if applied >= len(due):
                fault.recovered_at = self.run.now()
        except Exception:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            self._conn = None

    async def _committed_at_least(self, ends: dict[TopicPartition, int]) -> bool:
        if self._offsets is None:
            self._offsets = await _offsets_reader(self.run)
        return await _committed_at_least(self._offsets, ends)


async def _offsets_reader(run: Run) -> AIOKafkaConsumer:
    """A client that reads the group's committed offsets (it never joins the group)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=run.stack.bootstrap,
        group_id=run.pool.settings.kafka_group_id,
        enable_auto_commit=False,
    )
    try:
        await reader.start()
    except BaseException:
        await reader.stop()
        raise
    return reader


async def _committed_at_least(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if (await reader.committed(tp) or 0) < end:
            return False
    return True


async def _drain(run: Run, url: str) -> float | None:
    """Wait until the group has committed every record on the input topics (so every
    one has been applied or dead-lettered, resends included), the outbox is empty,
    every lapsed hold is swept and every fault has recovered. Returns seconds after
    the load ended, or None if that never happens."""
    ended = time.monotonic()
    reader: AIOKafkaConsumer | None = None
    ends: dict[TopicPartition, int] | None = None
    try:
        while time.monotonic() - ended < DRAIN_TIMEOUT:
            try:
                if reader is None:
                    reader = await _offsets_reader(run)
                if ends is None:
                    ends = await reader.end_offsets(
                        list(await _input_partitions(reader, run.topics))
                    )
                consumed = await _committed_at_least(reader, ends)
                conn = await asyncpg.connect(url, timeout=2)
                try:
                    backlog, lapsed = await conn.fetchrow(
                        """
                        SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                               (SELECT count(*) FROM orders
                                 WHERE phase = 'RESERVED' AND expires_at < now())
                        """
                    )
                finally:
                    await conn.close()
            except (TimeoutError, OSError, asyncpg.PostgresError, KafkaError):
                await asyncio.sleep(0.5)
                continue
            recovered = all(f.recovered_at is not None for f in run.faults)
            if consumed and not backlog and not lapsed and recovered:
                return time.monotonic() - ended
            await asyncio.sleep(0.5)
        return None
    finally:
        if reader is not None:
            await reader.stop()
