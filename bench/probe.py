"""The fixed-rate probe: how long a shopper waits for "you have it".

One-line checkouts are published at a fixed rate by a producer PROCESS, and their
`stock.reservation` answers are read by a SEPARATE consumer process with a 10 ms
fetch wait (tansu holds an empty fetch for the whole `fetch_max_wait_ms`, so a long
wait would be measured, not the worker). Each checkout is timed from its `send()`
to the moment the reader holds its answer. Both processes stamp with
`time.monotonic()` (CLOCK_MONOTONIC, one clock for the whole machine on Linux), so
their stamps compare. Neither shares a process or an event loop with the worker or
with each other: a slow reader cannot slow the producer's clock, and the other way.

This is how issue 14 measured `stock run` with its defaults (p50 30 / p99 63 ms at
200/s, p50 52 / p99 133 ms at 1,000/s, p50 60 / p99 175 ms at 2,000/s), so the
figures here compare with those.

    python -m bench.probe publish --bootstrap B --topic T --rate R --seconds S ...
    python -m bench.probe read --bootstrap B --topic T --prefix P --out F --ready F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from stock_schemas.envelope import EventType, build_event

from bench.workload import BENCH_SOURCE, variant_id

#: The reader's fetch wait, as in the issue's measurement.
READER_FETCH_WAIT_MS = 10
#: The producer sends what is due every tick (a sleep per message would not keep
#: 2,000/s on one core).
TICK_SECONDS = 0.002
#: After the last send, answers still arriving are waited for this long (no growth).
SETTLE_SECONDS = 5.0
#: Answers that say the checkout was decided (the probe's orders never pay).
_DECIDED = frozenset({"RESERVED", "REJECTED"})


@dataclass
class ProbeResult:
    #: Checkouts/s asked for and actually sent (from the producer's own first and last send).
    rate: float
    sent_rate: float
    sent: int
    latencies_ms: list[float] = field(default_factory=list)
    #: What the point is ("50% of max", "2,000/s").
    label: str = ""
    #: The same latencies in the order the checkouts were sent (queueing shows as growth).
    in_send_order: list[float] = field(default_factory=list)

    def growth(self) -> float:
        """Median latency of the last third of the sends over that of the first third:
        about 1 when the worker keeps up, well above when a queue builds."""
        third = len(self.in_send_order) // 3
        if third < 3:
            return float("nan")
        first = sorted(self.in_send_order[:third])[third // 2]
        last = sorted(self.in_send_order[-third:])[third // 2]
        return last / first if first > 0 else float("nan")

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)


async def fixed_rate_probe(
    bootstrap: str,
    checkout_topic: str,
    reservation_topic: str,
    *,
    rate: float,
    seconds: float,
    variants: int,
    run: str,
    label: str = "",
    hold_seconds: float | None = None,
) -> ProbeResult:
    """Publish `rate` one-line checkouts a second for `seconds` (one unit of a random
    variant of `var-00000`..) from a producer process; time each answer from a reader
    process. `hold_seconds`: a short expiresAt on each checkout (the default hold otherwise)."""
    prefix = f"probe-{run}-"
    with tempfile.TemporaryDirectory(prefix="stock-probe-") as tmp:
        work = Path(tmp)
        answers, ready, sent_file = work / "answers.txt", work / "ready", work / "sent.json"
        reader = _spawn(
            "read", "--bootstrap", bootstrap, "--topic", reservation_topic,
            "--prefix", prefix, "--out", str(answers), "--ready", str(ready),
        )  # fmt: skip
        try:
            await _wait_for(ready, reader, 60.0)
            producer = _spawn(
                "publish", "--bootstrap", bootstrap, "--topic", checkout_topic,
                "--rate", str(rate), "--seconds", str(seconds), "--variants", str(variants),
                "--prefix", prefix, "--out", str(sent_file),
                *(["--hold-seconds", str(hold_seconds)] if hold_seconds else []),
            )  # fmt: skip
            try:
                code = await asyncio.to_thread(producer.wait, seconds * 3 + 60)
            finally:
                _end(producer)
            if code != 0:
                raise RuntimeError(f"the probe's producer failed (exit {code})")
            sent = json.loads(sent_file.read_text())
            sent_at: dict[str, float] = dict(sent["sent"])
            arrived = await _settled_answers(answers, sent_at.keys(), reader)
        finally:
            _end(reader)
    in_order = [(arrived[order] - at) * 1000 for order, at in sent["sent"] if order in arrived]
    return ProbeResult(rate, sent["rate"], len(sent_at), sorted(in_order), label, in_order)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.probe", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # the harness's Ctrl-C reaches it through _end, once
    )


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_for(path: Path, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while not path.exists():  # noqa: ASYNC240 (a stat every 50 ms)
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the probe's reader did not start")
        await asyncio.sleep(0.05)


def _read_answers(path: Path) -> dict[str, float]:
    arrived: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                arrived.setdefault(parts[0], float(parts[1]))
    return arrived


async def _settled_answers(
    path: Path, wanted: object, reader: subprocess.Popen[bytes]
) -> dict[str, float]:
    """Every answer, or those there are once none has come for SETTLE_SECONDS."""
    want = set(wanted)  # type: ignore[call-overload]
    last_count, last_change = -1, time.monotonic()
    while True:
        arrived = _read_answers(path)
        if want <= arrived.keys() or reader.poll() is not None:
            return arrived
        if len(arrived) != last_count:
            last_count, last_change = len(arrived), time.monotonic()
        elif time.monotonic() - last_change > SETTLE_SECONDS:
            return arrived
        await asyncio.sleep(0.2)


# --- the two processes -------------------------------------------------------------


async def _publish(args: argparse.Namespace) -> None:
    rng = random.Random(args.prefix)
    total = max(int(args.rate * args.seconds), 1)
    expires = (
        (datetime.now(UTC) + timedelta(seconds=args.hold_seconds)).isoformat()
        if args.hold_seconds
        else None
    )
    # Built before the clock starts: the producer's loop only sends.
    orders = []
    for n in range(total):
        order_id = f"{args.prefix}{n}"
        data: dict[str, object] = {
            "order_id": order_id,
            "lines": [{"variant_id": variant_id(rng.randrange(args.variants)), "quantity": 1}],
        }
        if expires:
            data["expires_at"] = expires
        value = json.dumps(
            build_event(EventType.ORDER_CHECKOUT, data, source=BENCH_SOURCE),
            separators=(",", ":"),
        ).encode()
        orders.append((order_id, order_id.encode(), value))
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, linger_ms=0, enable_idempotence=False, acks=1
    )
    await producer.start()
    sent: list[tuple[str, float]] = []
    try:
        started = time.monotonic()
        while len(sent) < total:
            due = min(int((time.monotonic() - started) * args.rate) + 1, total)
            while len(sent) < due:
                order_id, key, value = orders[len(sent)]
                sent.append((order_id, time.monotonic()))
                await producer.send(args.topic, value, key=key)
            await asyncio.sleep(TICK_SECONDS)
        await producer.flush()
    finally:
        await producer.stop()
    span = sent[-1][1] - sent[0][1] if len(sent) > 1 else 0.0
    Path(args.out).write_text(  # noqa: ASYNC240 (the run is over)
        json.dumps({"sent": sent, "rate": (len(sent) - 1) / span if span else 0.0})
    )


async def _read(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=READER_FETCH_WAIT_MS,
    )
    await reader.start()
    prefix = args.prefix.encode()
    try:
        await reader.topics()
        partitions = [
            TopicPartition(args.topic, p)
            for p in sorted(reader.partitions_for_topic(args.topic) or ())
        ]
        if not partitions:
            raise RuntimeError(f"no topic {args.topic}")
        reader.assign(partitions)
        await reader.seek_to_end(*partitions)
        for tp in partitions:
            await reader.position(tp)
        Path(args.ready).touch()  # noqa: ASYNC240 (once, before anything is timed)
        # Small appends to the page cache: cheaper than a thread hop per batch.
        with open(args.out, "a") as out:  # noqa: ASYNC230
            parent = os.getppid()
            # An orphan (the harness killed outright) stops instead of reading for ever.
            while not stop.is_set() and os.getppid() == parent:
                batches = await reader.getmany(timeout_ms=100)
                arrived = time.monotonic()
                lines = []
                for records in batches.values():
                    for record in records:
                        # The probe's orders are keyed by their id: skip others unparsed.
                        if record.key is None or not record.key.startswith(prefix):
                            continue
                        data = json.loads(record.value)["data"]
                        if data.get("status") in _DECIDED:
                            lines.append(f"{data['order_id']} {arrived:.6f}\n")
                if lines:
                    out.writelines(lines)
                    out.flush()
    finally:
        with contextlib.suppress(Exception):
            await reader.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    sub = parser.add_subparsers(dest="command", required=True)
    publish = sub.add_parser("publish", help="one-line checkouts at a fixed rate")
    publish.add_argument("--bootstrap", required=True)
    publish.add_argument("--topic", required=True)
    publish.add_argument("--rate", type=float, required=True)
    publish.add_argument("--seconds", type=float, required=True)
    publish.add_argument("--variants", type=int, required=True)
    publish.add_argument("--prefix", required=True)
    publish.add_argument("--out", required=True)
    publish.add_argument("--hold-seconds", type=float)
    read = sub.add_parser("read", help="stamp each decided answer as it arrives")
    read.add_argument("--bootstrap", required=True)
    read.add_argument("--topic", required=True)
    read.add_argument("--prefix", required=True)
    read.add_argument("--out", required=True)
    read.add_argument("--ready", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_publish(args) if args.command == "publish" else _read(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
