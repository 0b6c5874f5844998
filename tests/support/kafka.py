"""Publish to and read from the real broker in tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


class TopicReader:
    """Reads topics from the beginning, keeping every message, until told to stop."""

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.messages: dict[str, list[Any]] = defaultdict(list)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    self.messages[record.topic].append(record)

    def data(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.value)["data"] for m in self.messages[topic]]

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


async def publish(
    bootstrap: str,
    messages: Iterable[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
) -> None:
    """(topic, key, value, headers) in order, each acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for topic, key, value, headers in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
    finally:
        await producer.stop()


def structured(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()
