"""GroupCommit's collecting rules, with a group runner that records what it was given
(no database: the shared transaction itself is tested in
tests/integration/test_group_commit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from service.application.group_commit import GroupCommit, Outcome, decide_alone
from service.domain.errors import InsufficientStock
from service.domain.ledger import StockLedger
from service.domain.model import Order, OrderPhase, Variant


class Recorder:
    """Answers each request with its double (or its error, for a negative one) once
    `release` is set, and remembers every group."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()

    async def run(self, requests: Sequence[int]) -> Sequence[Outcome[int]]:
        self.groups.append(list(requests))
        await self.release.wait()
        return [ValueError(f"bad {r}") if r < 0 else r * 2 for r in requests]


async def test_a_lone_request_runs_at_once_and_later_ones_go_together() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, max_requests=10, max_groups=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.groups == [[1]]  # not waiting for company
    later = [asyncio.create_task(group.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert recorder.groups == [[1]]  # queued behind the group in flight
    recorder.release.set()
    assert await first == 2
    assert [await task for task in later] == [4, 6, 8]
    assert recorder.groups == [[1], [2, 3, 4]]


async def test_groups_are_at_most_max_requests() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, max_requests=2, max_groups=1)
    tasks = [asyncio.create_task(group.submit(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert [await task for task in tasks] == [2, 4, 6, 8, 10]
    assert recorder.groups == [[1], [2, 3], [4, 5]]


async def test_each_request_gets_its_own_error() -> None:
    recorder = Recorder()
    recorder.release.set()
    group = GroupCommit(recorder.run, max_requests=10, max_groups=1)
    good, bad, other = await asyncio.gather(
        group.submit(1), group.submit(-1), group.submit(3), return_exceptions=True
    )
    assert (good, other) == (2, 6)
    assert isinstance(bad, ValueError) and str(bad) == "bad -1"


async def test_a_failed_group_fails_its_own_requests_only() -> None:
    calls: list[list[int]] = []

    async def run(requests: Sequence[int]) -> Sequence[Outcome[int]]:
        calls.append(list(requests))
        await asyncio.sleep(0)
        if 13 in requests:
            raise RuntimeError("the database refused the group")
        return list(requests)

    group = GroupCommit(run, max_requests=10, max_groups=1)
    answers = await asyncio.gather(
        group.submit(1), group.submit(13), group.submit(2), return_exceptions=True
    )
    assert answers[0] == 1
    assert isinstance(answers[1], RuntimeError) and isinstance(answers[2], RuntimeError)
    assert await group.submit(5) == 5  # the next group is not affected
    assert calls == [[1], [13, 2], [5]]


async def test_a_caller_that_goes_away_does_not_cancel_the_group() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.run, max_requests=10, max_groups=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    leaving = asyncio.create_task(group.submit(2))
    staying = asyncio.create_task(group.submit(3))
    await asyncio.sleep(0)
    leaving.cancel()
    recorder.release.set()
    assert await first == 2
    assert await staying == 6
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert recorder.groups == [[1], [2, 3]]


def _ledger(available: int) -> StockLedger:
    return StockLedger(
        {"v": Variant("v", "p", available, 0, version=1)},
        {"a": Order("a"), "b": Order("b")},
        default_low_stock_threshold=0,
        now=datetime.now(UTC),
    )


def _take(order_id: str, quantity: int):  # type: ignore[no-untyped-def]
    def decide(ledger: StockLedger) -> Order:
        if ledger.variants["v"].available < quantity:
            raise InsufficientStock(())
        ledger.checkout(order_id, {"v": quantity}, datetime.now(UTC))
        return ledger.orders[order_id]

    return decide


def test_a_refused_decision_leaves_the_ledger_as_it_was() -> None:
    ledger = _ledger(3)
    refused = decide_alone(ledger, ["a"], ["v"], _take("a", 5))
    assert isinstance(refused, InsufficientStock)
    assert ledger.variants["v"].reserved == 0
    assert ledger.orders["a"].phase is OrderPhase.PENDING
    assert ledger.changes == [] and ledger.outcomes == [] and not ledger.touched_orders
    taken = decide_alone(ledger, ["b"], ["v"], _take("b", 2))
    assert isinstance(taken, Order) and taken.phase is OrderPhase.RESERVED
    assert ledger.variants["v"].reserved == 2
    assert ledger.orders["b"].phase is OrderPhase.RESERVED
    assert [c.variant_id for c in ledger.changes] == ["v"]


def test_the_answer_is_a_snapshot_later_decisions_do_not_change() -> None:
    ledger = _ledger(3)
    answer = decide_alone(ledger, ["a"], ["v"], _take("a", 1))
    assert isinstance(answer, Order)
    ledger.release("a", None, None)
    assert answer.phase is OrderPhase.RESERVED


async def test_a_second_slot_waits_for_company_while_a_group_is_in_flight() -> None:
    """With a window (here longer than the test), a free slot does not go to the first
    request that comes while a group is in flight: it starts once `max_requests` wait,
    or at once when nothing is in flight any more."""
    recorder = Recorder()
    group = GroupCommit(recorder.run, max_requests=3, max_groups=2, window=600.0)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.groups == [[1]]  # nothing in flight: at once
    queued = [asyncio.create_task(group.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.groups == [[1]]  # a slot is free, but two are not company enough
    full = asyncio.create_task(group.submit(4))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.groups == [[1], [2, 3, 4]]  # max_requests waiting: the second slot
    last = asyncio.create_task(group.submit(5))
    await asyncio.sleep(0)
    recorder.release.set()
    assert [await t for t in (first, *queued, full, last)] == [2, 4, 6, 8, 10]
    assert recorder.groups == [[1], [2, 3, 4], [5]]  # nothing in flight: at once
