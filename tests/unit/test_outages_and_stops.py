"""Outage lines, the aiokafka filter, a signal during the start, the batch a stop
abandons: the pieces of issue 11 items 1 and 2, fast and without a network.
(The real processes are in tests/e2e/test_stop_while_waiting.py and
tests/integration/test_outage_logging.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError
from faststream.exceptions import NackMessage
from sqlalchemy import exc as sa_exc

from service.adapters.database import OutageLog, database_address, is_unreachable
from service.adapters.kafka import BrokerWatch, says_broker_unreachable
from service.entrypoints.process import run_until_signalled
from service.entrypoints.worker import BatchInHand
from service.settings import Settings


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def _messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    outage = OutageLog("the thing", confirm_after=0.0, repeat_every=3600)
    for attempt in range(500):
        outage.failed(f"attempt {attempt}")
    time.sleep(0.05)
    lasted = outage.recovered()
    assert lasted is not None and lasted >= 0.05
    lines = _messages(caplog, "service.adapters.database")
    assert len(lines) == 2, lines
    assert lines[0].startswith("the thing is unreachable (attempt 0)")
    assert lines[1].startswith("the thing is reachable again after 0.")
    assert "(500 failed attempts)" in lines[1]
    assert outage.recovered() is None  # nothing more to say


def test_repeats_are_rate_limited(caplog) -> None:
    caplog.set_level(logging.WARNING)
    outage = OutageLog("the thing", confirm_after=0.0, repeat_every=0.05)
    for _ in range(3):
        outage.failed("down")
        outage.failed("down")
        time.sleep(0.06)
    outage.failed("down")
    lines = _messages(caplog, "service.adapters.database")
    assert len(lines) == 4, lines
    assert all("still unreachable after" in line for line in lines[1:])


def test_a_failure_that_a_success_follows_at_once_is_not_an_outage(caplog) -> None:
    """A pooled connection that died with the last outage fails once, then the retry
    on a fresh one succeeds: not news."""
    caplog.set_level(logging.WARNING)
    outage = OutageLog("the database", confirm_after=1.0)
    outage.failed("connection is closed")
    assert not outage.is_out
    assert outage.recovered() is None
    assert caplog.records == []


def test_the_outage_length_counts_from_its_first_failure(caplog) -> None:
    caplog.set_level(logging.WARNING)
    outage = OutageLog("the database", confirm_after=0.05)
    outage.failed("refused")
    time.sleep(0.06)
    outage.failed("refused")
    assert outage.is_out
    assert (outage.recovered() or 0) >= 0.06


def test_unreachable_means_away_not_busy() -> None:
    assert is_unreachable(ConnectionRefusedError(111, "refused"))
    assert is_unreachable(TimeoutError())
    assert is_unreachable(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert is_unreachable(asyncpg.exceptions.CannotConnectNowError("starting up"))
    wrapped = sa_exc.DBAPIError("SELECT 1", {}, asyncpg.exceptions.InterfaceError("closed"))
    assert is_unreachable(wrapped)
    assert not is_unreachable(asyncpg.exceptions.SerializationError("conflict"))
    assert not is_unreachable(asyncpg.exceptions.DeadlockDetectedError("deadlock"))
    assert not is_unreachable(sa_exc.TimeoutError("pool busy"))


def test_the_database_address_has_no_credentials() -> None:
    assert database_address("postgresql://u:secret@db.example:6543/stock") == "db.example:6543"
    assert database_address("postgresql://postgres@127.0.0.1/postgres") == "127.0.0.1:5432"
    assert database_address("postgresql://u@/stock?host=/run/pg") == "/run/pg"


def test_aiokafka_lines_about_an_unreachable_broker_are_recognised() -> None:
    assert says_broker_unreachable(
        _record("aiokafka", "Unable connect to node with id %s: %s", 1, OSError(111, "refused"))
    )
    assert says_broker_unreachable(
        _record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1,
                NodeNotReadyError("not ready"))
    )
    assert says_broker_unreachable(_record("aiokafka", "Unable to update metadata from %s", [1]))
    assert says_broker_unreachable(
        _record("aiokafka.consumer.group_coordinator",
                "Marking the coordinator dead (node %s)for group %s.", 1, "g",
                level=logging.WARNING)
    )
    # Not about reachability: they pass as they are.
    assert not says_broker_unreachable(
        _record("aiokafka.cluster", "Topic %s is not authorized for this client", "t")
    )
    assert not says_broker_unreachable(
        _record("aiokafka", "Error: %s", TopicAuthorizationFailedError("t"))
    )
    assert not says_broker_unreachable(
        _record("aiokafka", "Unable connect to node with id %s: %s", 1, OSError(111, "x"),
                level=logging.DEBUG)
    )


async def test_the_watch_turns_a_flood_into_one_line_and_lets_the_rest_through(caplog) -> None:
    caplog.set_level(logging.WARNING)
    watch = BrokerWatch()
    nobody = Settings(kafka_bootstrap_servers="127.0.0.1:9")  # the probe finds nobody
    watch.watch(nobody)
    try:
        fetcher = logging.getLogger("aiokafka.consumer.fetcher")
        for _ in range(300):
            fetcher.error("Failed fetch messages from %s: %s", 1, KafkaConnectionError("closed"))
        logging.getLogger("aiokafka.cluster").error("Topic %s is not authorized", "t")
    finally:
        await watch.unwatch()
    ours = _messages(caplog, "service.adapters.kafka")
    assert len(ours) == 1 and "the Kafka broker at 127.0.0.1:9 is unreachable" in ours[0], ours
    assert _messages(caplog, "aiokafka.consumer.fetcher") == []
    assert _messages(caplog, "aiokafka.cluster") == ["Topic t is not authorized"]
    assert watch.suppressed == 300
    assert watch.outage.failures == 300
    # Unwatched, aiokafka's lines are its own again.
    logging.getLogger("aiokafka.consumer.fetcher").error("after")
    assert _messages(caplog, "aiokafka.consumer.fetcher") == ["after"]


async def test_a_signal_during_the_start_cancels_it_and_says_what_it_waited_for(caplog) -> None:
    caplog.set_level(logging.INFO)
    events: list[str] = []

    async def start() -> None:
        events.append("start")
        try:
            await asyncio.sleep(3600)  # a database that never answers
        except asyncio.CancelledError:
            events.append("start cancelled")
            raise

    async def stop() -> None:
        events.append("stop")

    loop = asyncio.get_running_loop()
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(
        run_until_signalled(start, stop, starting=lambda: "waiting for the database at x:1"),
        10,
    )
    assert events == ["start", "start cancelled", "stop"]
    assert (
        "stopped while waiting for the database at x:1 (SIGTERM before the start finished)"
        in caplog.messages
    )


async def test_a_refusal_of_the_start_still_exits_after_the_stop() -> None:
    stopped: list[bool] = []

    async def start() -> None:
        raise SystemExit("database schema is at nothing: run `stock migrate` first")

    async def stop() -> None:
        stopped.append(True)

    with pytest.raises(SystemExit, match="stock migrate"):
        await run_until_signalled(start, stop)
    assert stopped == [True]


class _Waits:
    """A batch consumer stuck on a database that is away."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def handle(self, records: object) -> None:
        self.started.set()
        await asyncio.sleep(3600)


async def test_an_abandoned_batch_is_nacked_not_cancelled() -> None:
    in_hand = BatchInHand()
    consumer = _Waits()
    handling = asyncio.create_task(in_hand.handle(consumer, ()))
    await consumer.started.wait()
    in_hand.abandon()
    with pytest.raises(NackMessage):
        await handling
    assert in_hand.task is None


async def test_a_batch_that_comes_during_the_stop_is_not_started() -> None:
    in_hand = BatchInHand()
    in_hand.stopping = True
    consumer = _Waits()
    with pytest.raises(NackMessage):
        await in_hand.handle(consumer, ())
    assert not consumer.started.is_set()
