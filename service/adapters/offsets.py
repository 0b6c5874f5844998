"""Offset commits that do not hold up the next batch.

FastStream's batch subscriber commits a batch's offsets (a round trip to the group
coordinator) before it fetches the next batch, so every batch waited for the previous
one's commit. Here a batch's offsets are handed to `OffsetCommitter` once its
transaction has committed, and committed by a background task while the next batch is
fetched and handled. Hand-overs that arrive while a commit is in flight are merged
into one: under load there is at most one commit request per batch, usually fewer.

What keeps this safe:

- Offsets are handed over only after the batch's database transaction commits, and
  they are the batch's own (last offset + 1 per partition), never the consumer's
  position (which may already be past a fetched, unapplied batch).
- A commit that fails (a rebalance, a broker away) is logged and dropped: the batch
  is delivered again and recognised as applied, its `(source, id)` claimed in the
  transaction that applied it. Later hand-overs commit later offsets anyway.
- A commit holds the subscriber's lock, as FastStream's own commit did, so a stop
  waits for it (within the grace period) before the consumer leaves the group, and
  `flush()` lets a rebalance commit what is done before the partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import TopicPartition

from service.adapters.database import describe

log = logging.getLogger(__name__)


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, int]:
    """Per partition, the offset to commit once `records` are applied: the last + 1."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        following = record.offset + 1
        if offsets.get(tp, -1) < following:
            offsets[tp] = following
    return offsets


class OffsetCommitter:
    """Commits handed-over offsets in the background, one request at a time."""

    def __init__(
        self,
        hold: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        track: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> None:
        #: Held while a commit is in flight (the subscriber's lock: a stop waits for it).
        self._hold = hold or contextlib.nullcontext
        #: Told of each commit task (the subscriber's tasks: a stop may cancel it).
        self._track = track
        self._pending: dict[TopicPartition, int] = {}
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The commit in flight, if any (a stop may cancel it when the broker is away)."""
        return self._task

    def hand_over(self, consumer: Any, offsets: dict[TopicPartition, int]) -> None:
        """Commit `offsets` (of applied records) soon; returns at once."""
        for tp, offset in offsets.items():
            if self._pending.get(tp, -1) < offset:
                self._pending[tp] = offset
        self._consumer = consumer
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._drain(), name="offset-commit")
            if self._track is not None:
                self._track(self._task)

    async def flush(self) -> None:
        """Wait until everything handed over is committed (or given up). Cancelled, it
        cancels the commit too (a stop that cannot wait for a broker that is away)."""
        while self._task is not None and not self._task.done():
            task = self._task
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what waits for partitions this worker no longer holds."""
        for tp in partitions:
            self._pending.pop(tp, None)

    async def _drain(self) -> None:
        with self._hold():
            while self._pending:
                offsets, self._pending = self._pending, {}
                try:
                    await self._consumer.commit(offsets)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    # Redelivered after a restart or a rebalance, and recognised as applied.
                    log.warning(
                        "offsets not committed (%s); those records are delivered again "
                        "and recognised as applied",
                        describe(error),
                    )
