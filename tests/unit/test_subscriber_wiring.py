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


def test_the_group_membership_settings_reach_the_consumer() -> None:
    from service.settings import Settings

    settings = Settings(
        kafka_session_timeout_ms=12_000,
        kafka_heartbeat_interval_ms=2_500,
        kafka_group_instance_id="worker-0",
    )
    broker = build_broker(settings, RecordingConsumer())  # type: ignore[arg-type]
    [subscriber] = broker.subscribers
    args = subscriber._connection_args
    assert (args["session_timeout_ms"], args["heartbeat_interval_ms"]) == (12_000, 2_500)
    assert args["group_instance_id"] == "worker-0"


def test_isolated_settings_prefix_the_group_and_every_topic() -> None:
    from service.settings import isolated_settings

    settings = isolated_settings("run7", batch_linger_ms=3)
    assert settings.kafka_group_id == "run7-stock"
    topics = [*settings.consumed_topics, *settings.published_topics]
    assert len(set(topics)) == 11 and all(t.startswith("run7.") for t in topics)
    assert settings.batch_linger_ms == 3
