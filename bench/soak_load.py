"""The soak's two load processes: a shop's traffic at a fixed rate, and a reader that
times every checkout's answer.

    python -m bench.soak_load produce --bootstrap B --topics JSON --rate R --seconds S \
        --variants N --prefix P [--linger-ms 5]
    python -m bench.soak_load read --bootstrap B --topic T --prefix P --out F --ready F

The producer sends `rate` events a second: checkouts (80% one line, 15% two, 5% three:
close to the one-line stream the maximum rate is measured on), and after a
few seconds each order's next step, drawn per order:

    70% pay (payment.succeeded), of which 1 in 14 is cancelled later (a return);
    10% payment fails (payment.failed); 10% cancelled before paying (order.cancelled);
    10% hold for 3 s and never pay (the sweep expires them).

Each checkout's order id carries its send time (the wall clock, µs: the worker's
producer stamps its records with the wall clock too), so the reader process times the
answer without a file of send times. Per decided checkout it appends `sent_s
published_ms read_ms`, which the harness reads minute by minute:

- *published*: from the checkout's send to the worker's send of its answer (the
  answer record's timestamp, which the worker's producer sets when it builds the
  batch, right after the commit): the worker's part, whatever the broker does next;
- *read*: to the moment this reader holds the answer, the broker's delivery included.

On tansu the two part ways over a long run: its in-memory engine's fetches cost more
with every record batch a partition holds (docs/soak.md), so the reader falls behind
while the worker does not. The reader starts at the beginning of the answer topic (a
fresh one per run): tansu's ListOffsets can answer an end past the last record, and a
reader placed there misses the first answers for good.

The producer lingers `--linger-ms` (20) before it sends a partition's batch (batches
of up to 1 MiB, so the linger decides): at 2 ms every tick was a batch per partition,
and each batch tansu holds makes every later fetch of its partition dearer (a shop's
producer lingers too: librdkafka 5 ms, the Java client 5 ms since Kafka 4.0). It adds
up to the linger to both latencies; `python -m bench.soak` chooses it (200 ms on its
own tansu, 20 ms on a broker it is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from stock_schemas.envelope import EventType, build_event

from bench.probe import TICK_SECONDS
from bench.workload import BENCH_SOURCE, variant_id

_ORDER = itertools.count()  # ties in the queue broken by insertion, never by the dicts

#: Events per order on average: the checkout, 0.9 next steps, 0.05 returns.
EVENTS_PER_ORDER = 1.95
_DECIDED = frozenset({"RESERVED", "REJECTED"})
#: The reader's fetch wait: 100 ms, not the probe's 10 (tansu holds an empty fetch for
#: the whole wait, so this adds up to 100 ms to the *read* latency only; at 10 ms its
#: hundred fetches a second were a fair share of the broker's CPU over a long run).
READER_FETCH_WAIT_MS = 100


def _envelope(kind: EventType, data: dict[str, object]) -> bytes:
    return json.dumps(build_event(kind, data, source=BENCH_SOURCE), separators=(",", ":")).encode()


async def _produce(args: argparse.Namespace) -> None:
    topics = {EventType(k): v for k, v in json.loads(args.topics).items()}
    rng = random.Random(args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        linger_ms=args.linger_ms,
        # The linger, not the default 16 KiB, decides when a batch goes (at 2,400
        # events/s 16 KiB filled about 35 times a second, whatever the linger).
        max_batch_size=1024 * 1024,
        enable_idempotence=False,
        acks=1,
    )
    await producer.start()
    follow_ups: list[tuple[float, int, EventType, str, dict[str, object]]] = []
    sent = 0
    orders = 0
    try:
        started = time.monotonic()
        end = started + args.seconds
        parent = os.getppid()
        reported = started
        while not stop.is_set() and time.monotonic() < end and os.getppid() == parent:
            if args.progress and time.monotonic() - reported >= 1.0:
                reported = time.monotonic()
                _report_progress(Path(args.progress), orders)
            now = time.monotonic()
            due = int((now - started) * args.rate)
            while sent < due:
                if follow_ups and follow_ups[0][0] <= now:
                    _, _, kind, order_id, data = heapq.heappop(follow_ups)
                    await producer.send(topics[kind], _envelope(kind, data), key=order_id.encode())
                else:
                    stamp = time.monotonic()
                    order_id = f"{args.prefix}{orders}-{int(time.time() * 1e6)}"
                    orders += 1
                    picks = rng.sample(range(args.variants), rng.choices((1, 2, 3), (80, 15, 5))[0])
                    data: dict[str, object] = {
                        "order_id": order_id,
                        "lines": [{"variant_id": variant_id(v), "quantity": 1} for v in picks],
                    }
                    roll = rng.random()
                    if roll >= 0.90:  # a short hold nobody pays: the sweep expires it
                        data["expires_at"] = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
                    await producer.send(
                        topics[EventType.ORDER_CHECKOUT],
                        _envelope(EventType.ORDER_CHECKOUT, data),
                        key=order_id.encode(),
                    )
                    _plan(follow_ups, rng, roll, order_id, stamp)
                sent += 1
            await asyncio.sleep(TICK_SECONDS)
        await producer.flush()
    finally:
        await producer.stop()
    print(json.dumps({"sent": sent, "orders": orders}))


def _report_progress(path: Path, orders: int) -> None:
    """How many checkouts are sent so far, for the harness (replaced whole, never half
    written)."""
    part = path.with_suffix(".part")
    part.write_text(str(orders))
    part.replace(path)


def _plan(
    queue: list[tuple[float, int, EventType, str, dict[str, object]]],
    rng: random.Random,
    roll: float,
    order_id: str,
    now: float,
) -> None:
    """The order's next step, a few seconds later (as a shopper pays)."""
    later = now + rng.uniform(1.0, 5.0)
    seq = next(_ORDER)
    if roll < 0.70:
        pay = {"order_id": order_id, "payment_id": f"pay-{order_id}"}
        heapq.heappush(queue, (later, seq, EventType.PAYMENT_SUCCEEDED, order_id, pay))
        if rng.random() < 1 / 14:
            back = {"order_id": order_id, "reason": "customer"}
            heapq.heappush(
                queue, (later + rng.uniform(1.0, 5.0), next(_ORDER), EventType.ORDER_CANCELLED,
                        order_id, back)
            )  # fmt: skip
    elif roll < 0.80:
        failed = {"order_id": order_id, "reason": "card_declined"}
        heapq.heappush(queue, (later, seq, EventType.PAYMENT_FAILED, order_id, failed))
    elif roll < 0.90:
        cancel = {"order_id": order_id, "reason": "customer"}
        heapq.heappush(queue, (later, seq, EventType.ORDER_CANCELLED, order_id, cancel))


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
    seen: set[str] = set()
    try:
        await reader.topics()
        partitions = [
            TopicPartition(args.topic, p)
            for p in sorted(reader.partitions_for_topic(args.topic) or ())
        ]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        for tp in partitions:
            await reader.position(tp)
        Path(args.ready).touch()  # noqa: ASYNC240 (once, before anything is timed)
        with open(args.out, "a") as out:  # noqa: ASYNC230 (small appends, page cache)
            parent = os.getppid()
            # An orphan (the harness killed outright) stops instead of reading for ever.
            while not stop.is_set() and os.getppid() == parent:
                batches = await reader.getmany(timeout_ms=100)
                arrived = time.time()
                lines = []
                for records in batches.values():
                    for record in records:
                        if record.key is None or not record.key.startswith(prefix):
                            continue
                        data = json.loads(record.value)["data"]
                        order_id = data["order_id"]
                        # The first answer of an order is its checkout's; later ones
                        # (a confirmation, a release) are not timed.
                        if data.get("status") not in _DECIDED or order_id in seen:
                            continue
                        seen.add(order_id)
                        sent = int(order_id.rsplit("-", 1)[1]) / 1e6
                        published = record.timestamp - sent * 1000
                        lines.append(f"{sent:.3f} {published:.2f} {(arrived - sent) * 1000:.2f}\n")
                if lines:
                    out.writelines(lines)
                    out.flush()
                if len(seen) > 2_000_000:  # bounded memory over any soak length
                    seen.clear()
    finally:
        with contextlib.suppress(Exception):
            await reader.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_load")
    sub = parser.add_subparsers(dest="command", required=True)
    produce = sub.add_parser("produce")
    produce.add_argument("--bootstrap", required=True)
    produce.add_argument("--topics", required=True, help="JSON {event type: topic}")
    produce.add_argument("--rate", type=float, required=True, help="events/s")
    produce.add_argument("--seconds", type=float, required=True)
    produce.add_argument("--variants", type=int, required=True)
    produce.add_argument("--prefix", required=True)
    produce.add_argument("--progress", help="a file the count of checkouts sent is kept in")
    produce.add_argument("--linger-ms", type=int, default=20)
    read = sub.add_parser("read")
    read.add_argument("--bootstrap", required=True)
    read.add_argument("--topic", required=True)
    read.add_argument("--prefix", required=True)
    read.add_argument("--out", required=True)
    read.add_argument("--ready", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_produce(args) if args.command == "produce" else _read(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
