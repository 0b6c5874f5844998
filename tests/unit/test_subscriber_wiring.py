"""The FastStream entrypoint, fast: TestKafkaBroker, no network.

Beside the real-broker tests in tests/e2e, never instead of them: this only shows
that the subscriber listens on the configured topics and hands raw records (bad
headers and bad bytes included) to the batch consumer untouched.
"""

from typing import Any

from faststream.kafka import TestKafkaBroker

from service.entrypoints.worker import build_broker
from service.settings import Settings


class RecordingConsumer:
    """A fake batch consumer: remembers what it was handed."""

    def __init__(self) -> None:
        self.batches: list[tuple[Any, ...]] = []

    async def handle(self, records: tuple[Any, ...]) -> None:
        self.batches.append(tuple(records))


async def test_subscriber_hands_raw_records_to_the_batch_consumer() -> None:
    settings = Settings(topic_order_checkout="shop.checkout")
    consumer = RecordingConsumer()
    broker = build_broker(settings, consumer)  # type: ignore[arg-type]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(
            b"\xff not json", "shop.checkout", key=b"o1", headers={"trace": "x"}
        )
    [batch] = consumer.batches
    [record] = batch
    assert record.topic == "shop.checkout"
    assert record.value == b"\xff not json"
    assert record.key == b"o1"


async def test_subscriber_listens_on_every_consumed_topic() -> None:
    settings = Settings()
    broker = build_broker(settings, RecordingConsumer())  # type: ignore[arg-type]
    [subscriber] = broker.subscribers
    assert {getattr(t, "name", t) for t in subscriber.topics} == set(settings.consumed_topics)


def test_the_fetch_wait_setting_reaches_the_consumer() -> None:
    from service.settings import Settings

    broker = build_broker(Settings(kafka_fetch_max_wait_ms=37), RecordingConsumer())  # type: ignore[arg-type]
    [subscriber] = broker.subscribers
    assert subscriber._connection_args["fetch_max_wait_ms"] == 37
