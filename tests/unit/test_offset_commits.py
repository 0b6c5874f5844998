"""OffsetCommitter: a batch's offsets are committed in the background, merged while a
commit is in flight, never behind what was committed, and a failure only costs a
redelivery. The consumer here is a recording stand-in (the real one is exercised by
the e2e worker tests, whose stop and outage cases go through this path)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from service.adapters.offsets import OffsetCommitter, next_offsets
from tests.support.records import FakeRecord

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("rebalance in progress")
        self.commits.append(dict(offsets))


def test_next_offsets_are_the_last_record_plus_one_per_partition() -> None:
    records = [
        FakeRecord("a", b"", partition=0, offset=7),
        FakeRecord("a", b"", partition=1, offset=3),
        FakeRecord("a", b"", partition=0, offset=5),
    ]
    assert next_offsets(records) == {A0: 8, A1: 4}


async def test_a_hand_over_returns_at_once_and_the_commit_follows() -> None:
    consumer = RecordingConsumer()
    committer = OffsetCommitter()
    committer.hand_over(consumer, {A0: 10})
    assert consumer.commits == []  # not committed inline
    await committer.flush()
    assert consumer.commits == [{A0: 10}]


async def test_hand_overs_during_a_commit_merge_into_one_and_never_go_back() -> None:
    consumer = RecordingConsumer()
    consumer.gate.clear()
    committer = OffsetCommitter()
    committer.hand_over(consumer, {A0: 10})
    await asyncio.sleep(0)  # the first commit is in flight
    committer.hand_over(consumer, {A0: 20, A1: 5})
    committer.hand_over(consumer, {A0: 15})  # behind: never committed
    consumer.gate.set()
    await committer.flush()
    assert consumer.commits == [{A0: 10}, {A0: 20, A1: 5}]


async def test_a_failed_commit_is_logged_and_the_next_one_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = RecordingConsumer()
    consumer.fail = True
    committer = OffsetCommitter()
    with caplog.at_level(logging.WARNING):
        committer.hand_over(consumer, {A0: 10})
        await committer.flush()
    assert "delivered again and recognised as applied" in caplog.text
    consumer.fail = False
    committer.hand_over(consumer, {A0: 11})
    await committer.flush()
    assert consumer.commits == [{A0: 11}]


async def test_a_commit_holds_the_lock_and_is_tracked_and_forgotten_partitions_drop() -> None:
    held: list[str] = []
    tracked: list[Any] = []

    class Hold:
        def __enter__(self) -> None:
            held.append("in")

        def __exit__(self, *exc: object) -> None:
            held.append("out")

    consumer = RecordingConsumer()
    consumer.gate.clear()
    committer = OffsetCommitter(hold=Hold, track=tracked.append)
    committer.hand_over(consumer, {A0: 1})
    await asyncio.sleep(0)
    committer.hand_over(consumer, {A1: 2})
    committer.forget([A1])  # revoked before its turn: the new owner decides
    consumer.gate.set()
    await committer.flush()
    assert consumer.commits == [{A0: 1}]
    assert held == ["in", "out"] and len(tracked) == 1


async def test_cancelling_a_flush_cancels_the_commit_it_waits_for() -> None:
    consumer = RecordingConsumer()
    consumer.gate.clear()  # a broker that never answers
    committer = OffsetCommitter()
    committer.hand_over(consumer, {A0: 1})
    flushing = asyncio.ensure_future(committer.flush())
    await asyncio.sleep(0)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert committer.task is not None
    await asyncio.wait({committer.task})
    assert committer.task.cancelled()
