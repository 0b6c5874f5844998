"""The consume loop's wiring (build_broker): co-partitioned input, no pause after an
empty fetch, and the partition-count check of ensure_topics."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from service.adapters.kafka import _warn_unless_copartitioned, partition_counts
from service.entrypoints.worker import build_broker
from service.settings import Settings


def test_the_consumer_assigns_ranges_so_one_order_meets_one_worker() -> None:
    broker = build_broker(Settings(), consumer=None)  # type: ignore[arg-type]
    [subscriber] = broker.subscribers
    assert subscriber._connection_args["partition_assignment_strategy"] == (
        RangePartitionAssignor,
    )


class QuietConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    async def getmany(self, timeout_ms: int, max_records: int | None) -> dict[Any, list[Any]]:
        self.calls.append((timeout_ms, max_records))
        return {}


async def test_an_empty_fetch_returns_at_once_without_a_pause() -> None:
    broker = build_broker(Settings(batch_linger_ms=60_000), consumer=None)  # type: ignore[arg-type]
    [subscriber] = broker.subscribers
    quiet = QuietConsumer()
    # FastStream's own get_msg sleeps the whole batch timeout (60 s here) after this.
    assert await subscriber.get_msg(quiet) == ()
    assert quiet.calls == [(60_000, Settings().batch_max_records)]


def test_different_partition_counts_on_the_input_topics_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    topics = list(settings.consumed_topics)
    described = [
        {"topic": name, "partitions": [{"partition": p} for p in range(3 if i else 6)]}
        for i, name in enumerate(topics)
    ]
    assert partition_counts(described)[topics[0]] == 6
    with caplog.at_level(logging.WARNING):
        _warn_unless_copartitioned(settings, described)
    assert "different partition counts" in caplog.text
    caplog.clear()
    same = [{"topic": name, "partitions": [{"partition": 0}]} for name in topics]
    _warn_unless_copartitioned(settings, same)
    assert caplog.text == ""
