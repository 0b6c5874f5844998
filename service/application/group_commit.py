"""Group commit: concurrent requests share one transaction, each keeps its own answer.

A reserve over HTTP costs one transaction: BEGIN, two lock statements, the write-back
(one statement), the outbox append (another), COMMIT and its WAL flush: six round
trips whatever the request holds. Sixteen shops reserving at once wait for
each other's round trips and flushes. Here requests that arrive while an earlier group
is in the database queue up and go together as the next group: one transaction, one
set-based lock and write-back, one flush for all of them.

Two parts:

* `GroupCommit` collects: a request that finds no group in flight starts one at once
  (a lone request never waits); the others queue and leave in groups of at most
  `max_requests` as soon as a group finishes, or, while fewer than `max_groups` are
  in flight, once they are `max_requests` or have waited `window` seconds.
* `decide_alone` keeps each request all or nothing inside the shared ledger: it lets
  the request decide first on copies of the rows it reads (a throwaway ledger), and
  only if that succeeds decides again on the group's ledger. A request the rules refuse
  (insufficient stock, a closed reservation) gets its own error and leaves no trace;
  the others are not affected. The ledger's rules are deterministic, so the second
  decision is the first one's double.

The caller (`commands.StockCommands`) locks every row of the group once, in key order,
through the unit of work; a transient failure retries the whole group there. An error
no request owns (the write-back refused) is the caller's: it runs each request alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Generic, TypeAlias, TypeVar

from service.domain.ledger import StockLedger
from service.domain.model import Order, Variant

R = TypeVar("R")
T = TypeVar("T")

#: What a group runner answers for one request: its result, or the error that is its own.
Outcome: TypeAlias = T | BaseException


class GroupCommit(Generic[R, T]):
    """Runs requests in groups through `run_group`, which answers one outcome per request,
    in order. `max_requests` 1 runs each request alone (no grouping).

    `window`: seconds a free slot waits for company while another group is in flight
    (0: none). Without it a second slot goes to whichever request comes first, often
    alone, and holds it for a whole commit while the others queue; with nothing in
    flight a request still starts at once."""

    def __init__(
        self,
        run_group: Callable[[Sequence[R]], Awaitable[Sequence[Outcome[T]]]],
        *,
        max_requests: int,
        max_groups: int,
        window: float = 0.0,
    ) -> None:
        self._run_group = run_group
        self.max_requests = max(max_requests, 1)
        self.max_groups = max(max_groups, 1)
        self.window = window
        self._waiting: list[tuple[R, asyncio.Future[T]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._collecting: asyncio.TimerHandle | None = None

    async def submit(self, request: R) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._start_groups()
        # The group runs in a task of its own: a caller that goes away (a client that
        # disconnects) does not cancel the others' transaction.
        return await future

    def _start_groups(self, *, window_over: bool = False) -> None:
        while self._waiting and len(self._in_flight) < self.max_groups:
            collecting = self.window > 0 and self._in_flight and not window_over
            if collecting and len(self._waiting) < self.max_requests:
                if self._collecting is None:
                    self._collecting = asyncio.get_running_loop().call_later(
                        self.window, self._window_closed
                    )
                return
            window_over = False
            if self._collecting is not None:
                self._collecting.cancel()
                self._collecting = None
            group = self._waiting[: self.max_requests]
            del self._waiting[: self.max_requests]
            task = asyncio.create_task(self._run(group), name="group-commit")
            self._in_flight.add(task)

    def _window_closed(self) -> None:
        self._collecting = None
        self._start_groups(window_over=True)

    async def _run(self, group: list[tuple[R, asyncio.Future[T]]]) -> None:
        try:
            outcomes = await self._run_group([request for request, _ in group])
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except BaseException as error:  # every request shares what failed the group
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._in_flight.discard(asyncio.current_task())
            self._start_groups()


class LedgerBroken(Exception):
    """A decision that succeeded on copies failed on the group's ledger: the ledger may
    be half-changed, so the group's transaction must not commit."""


def decide_alone(
    ledger: StockLedger,
    order_ids: Collection[str],
    variant_ids: Collection[str],
    decide: Callable[[StockLedger], T],
) -> Outcome[T]:
    """`decide` on copies of the rows it reads (`order_ids`, the variants they hold, and
    `variant_ids`); if it succeeds, again on `ledger`. Returns what the copies decided
    (a snapshot no later request of the group can change), or the error it raised."""
    orders = {
        order_id: _copy_order(ledger.orders[order_id])
        for order_id in order_ids
        if order_id in ledger.orders
    }
    wanted = set(variant_ids).union(v for order in orders.values() for v in order.lines)
    variants = {v: _copy_variant(ledger.variants[v]) for v in wanted if v in ledger.variants}
    trial = StockLedger(
        variants,
        orders,
        default_low_stock_threshold=ledger.default_low_stock_threshold,
        now=ledger.now,
    )
    try:
        answer = decide(trial)
    except Exception as error:  # the request's own: nothing of it reached the ledger
        return error
    try:
        decide(ledger)
    except Exception as error:
        raise LedgerBroken(f"a decision differed on the group's ledger: {error!r}") from error
    return answer


def _copy_order(order: Order) -> Order:
    return dataclasses.replace(order, lines=dict(order.lines))


def _copy_variant(variant: Variant) -> Variant:
    return dataclasses.replace(variant)
