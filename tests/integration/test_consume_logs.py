"""Operators see each REJECTED order and each dead letter once, at INFO, with its reason;
an accepted order writes no line."""

from __future__ import annotations

import logging

import pytest

from tests.support.records import FakeRecord, cancelled, checkout
from tests.support.scenario import Scenario

pytestmark = pytest.mark.integration

CONSUMER_LOG = "service.application.consume"


@pytest.fixture
async def scenario(engine, settings) -> Scenario:
    s = Scenario(engine, settings)
    await s.restock(("poster", 1), ("mug", 10))
    return s


def consumer_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CONSUMER_LOG]


async def test_a_rejected_order_is_logged_once_at_info_with_its_reason(scenario, caplog) -> None:
    short = checkout("o-short", {"poster": 3, "mug": 1})
    accepted = checkout("o-fine", {"mug": 2})
    with caplog.at_level(logging.INFO, logger=CONSUMER_LOG):
        await scenario.deliver(short, accepted)
        await scenario.deliver(short, accepted)  # redelivered: applied once, logged once
    assert await scenario.phases() == {"o-short": "REJECTED", "o-fine": "RESERVED"}
    [line] = consumer_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "order o-short REJECTED: insufficient_stock; poster 3 requested, 1 available"
    )
    assert (line.order_id, line.reason) == ("o-short", "insufficient_stock")  # type: ignore[attr-defined]


async def test_a_checkout_after_its_cancellation_is_rejected_with_that_reason(
    scenario, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger=CONSUMER_LOG):
        await scenario.deliver(cancelled("o-1"), checkout("o-1", {"mug": 1}))
    [line] = consumer_lines(caplog)
    assert line.getMessage() == "order o-1 REJECTED: order_cancelled"


async def test_a_dead_letter_is_logged_once_at_info_with_its_reason(
    scenario, settings, caplog
) -> None:
    poison = FakeRecord(topic=settings.topic_order_checkout, value=b"{this is not json")
    with caplog.at_level(logging.INFO, logger=CONSUMER_LOG):
        report = await scenario.deliver(poison, checkout("o-fine", {"mug": 1}))
        await scenario.deliver(poison)  # redelivered: not dead-lettered again
    assert report.dead_lettered == 1
    dead = [r for r in consumer_lines(caplog) if r.getMessage().startswith("dead-lettered")]
    [line] = dead
    assert line.levelno == logging.INFO
    where = f"{poison.topic}[{poison.partition}]@{poison.offset}"
    assert line.getMessage().startswith(f"dead-lettered {where}: ")
    assert "not JSON" in line.getMessage()
    assert line.position == where and "not JSON" in line.reason  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
