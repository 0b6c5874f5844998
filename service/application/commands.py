"""Synchronous stock requests (HTTP and CLI), each all or nothing in a PostgreSQL transaction.

The same path as a consumed batch: lock orders then variants in key order, let the
ledger decide (here through the all-or-nothing rules of `domain.requests`), write
the stock, the audit rows and the outbox rows together. A refused request raises a
`DomainError` inside the transaction, so nothing of it is written.

Reserve, confirm-sale and release requests that arrive together share a transaction
(`group_commit`): each decides alone on copies first, so a refused one still leaves
nothing and the others in its group are answered as if it had never come.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from stock_schemas.events import ChangeType

from service import metrics, tracing
from service.adapters.database import TransientDatabaseError
from service.adapters.tables import audit_log, variants
from service.application.anomaly_checks import check_adjustments
from service.application.group_commit import GroupCommit, Outcome, decide_alone
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.domain import requests
from service.domain.errors import IdempotencyKeyReused
from service.domain.ledger import StockLedger
from service.domain.model import EventRef, Order, StockChange
from service.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)

#: `source` of the audit causes (and idempotency claims) of requests made over HTTP;
#: every entrypoint names its own (the CLI `stock-cli`, the dev catalogue
#: `stock-dev-catalogue`), so the audit log says where a change came from.
API_SOURCE = "stock-api"

_ENSURE_VARIANTS = text(
    """
    INSERT INTO variants (variant_id, product_id, on_hand)
    SELECT variant_id, product_id, 0
    FROM unnest(CAST(:ids AS text[]), CAST(:products AS text[])) AS t(variant_id, product_id)
    ORDER BY variant_id
    ON CONFLICT DO NOTHING
    """
)

# The lock creates a PENDING row for every reservation id of a group; one whose request
# was refused would stay behind (alone, its transaction would have rolled back). Only a
# row that still says nothing: a PENDING order remembering a payment or a cancellation
# that came first is kept.
_FORGET_UNUSED_ORDERS = text(
    """
    DELETE FROM orders
    WHERE order_id = ANY(CAST(:ids AS text[])) AND phase = 'PENDING'
      AND payment IS NULL AND NOT cancelled AND reason IS NULL AND expires_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = orders.order_id)
    """
)


@dataclass(frozen=True, slots=True)
class _Grouped:
    """One request of a group: what it locks, and its decision."""

    cause: EventRef
    order_ids: tuple[str, ...]
    variant_ids: tuple[str, ...]
    decide: Callable[[StockLedger, EventRef], list[Order]]
    #: The request's trace context, while tracing is on: what its events carry.
    trace: str | None = None

    def decision(self, ledger: StockLedger) -> list[Order]:
        return self.decide(ledger, self.cause)


class StockCommands:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        source: str = API_SOURCE,
        give_up_after: float | None = None,
    ) -> None:
        """`source`: the entrypoint, recorded as the `source` of every audit row and
        idempotency claim (a key is the caller's: the same key through another
        entrypoint is another request). `give_up_after`: seconds to wait out a
        database outage before raising (an HTTP caller wants an answer); None waits as
        long as it takes (the CLI)."""
        self.engine = engine
        self.settings = settings
        self.source = source
        self.unit_of_work = UnitOfWork(engine, settings)
        self.give_up_after = give_up_after
        #: One group commit per operation and actor (the audit rows of a transaction
        #: carry one actor).
        self._groups: dict[tuple[str, str | None], GroupCommit[_Grouped, list[Order]]] = {}

    async def reserve(
        self, reservations: Sequence[requests.ReservationRequest], *, actor: str | None = None
    ) -> list[Order]:
        return await self._grouped(
            "reserve",
            _Grouped(
                _new_cause(self.source),
                tuple(r.reservation_id for r in reservations),
                tuple(v for r in reservations for v in r.lines),
                lambda ledger, cause: requests.reserve(ledger, reservations, cause),
            ),
            actor,
        )

    async def confirm_sales(
        self, confirmations: Sequence[requests.SaleConfirmation], *, actor: str | None = None
    ) -> list[Order]:
        return await self._grouped(
            "confirm-sale",
            _Grouped(
                _new_cause(self.source),
                tuple(c.reservation_id for c in confirmations),
                (),
                lambda ledger, cause: requests.confirm_sales(ledger, confirmations, cause),
            ),
            actor,
        )

    async def release(
        self, releases: Sequence[requests.ReleaseRequest], *, actor: str | None = None
    ) -> list[Order]:
        return await self._grouped(
            "release",
            _Grouped(
                _new_cause(self.source),
                tuple(r.reservation_id for r in releases),
                (),
                lambda ledger, cause: requests.release(ledger, releases, cause),
            ),
            actor,
        )

    async def _grouped(self, what: str, request: _Grouped, actor: str | None) -> list[Order]:
        group = self._groups.get((what, actor))
        if group is None:

            async def run_group(members: Sequence[_Grouped]) -> Sequence[Outcome[list[Order]]]:
                return await self._run_group(what, members, actor)

            group = self._groups[(what, actor)] = GroupCommit(
                run_group,
                max_requests=self.settings.group_commit_max_requests,
                max_groups=self.settings.group_commit_groups,
                window=self.settings.group_commit_window_ms / 1000,
            )
        if tracing.ENABLED:
            request = dataclasses.replace(request, trace=tracing.current_traceparent())
        return await group.submit(request)

    async def _run_group(
        self, what: str, group: Sequence[_Grouped], actor: str | None
    ) -> list[Outcome[list[Order]]]:
        """One transaction for the whole group: every row locked once, in key order; each
        request decided alone (`decide_alone`), in arrival order; one write-back."""
        metrics.GROUP_COMMIT_SIZE.labels(what).observe(len(group))
        # The group runs in the task of whichever request started it: each request's
        # events carry its own trace context.
        traces: dict[str, str] = {}
        if tracing.ENABLED:
            traces = {o: r.trace for r in group if r.trace for o in r.order_ids}
        if len(group) == 1:
            with tracing.caused_by(traces):
                return [await self._alone(what, group[0], actor)]
        creates = what == "reserve"

        async def step(tx: StockTransaction) -> list[Outcome[list[Order]]]:
            ledger = await tx.lock(
                [o for r in group for o in r.order_ids],
                [v for r in group for v in r.variant_ids],
                create_orders=creates,
            )
            outcomes = [decide_alone(ledger, r.order_ids, r.variant_ids, r.decision) for r in group]
            if creates:
                refused = {
                    o
                    for r, outcome in zip(group, outcomes, strict=True)
                    if isinstance(outcome, BaseException)
                    for o in r.order_ids
                }
                unused = refused - ledger.touched_orders
                if unused:
                    await tx.conn.execute(_FORGET_UNUSED_ORDERS, {"ids": sorted(unused)})
            return outcomes

        try:
            with tracing.caused_by(traces):
                return await self.unit_of_work.run(
                    step, what=what, give_up_after=self.give_up_after, actor=actor
                )
        except TransientDatabaseError:
            raise  # the database is away for every one of them
        except Exception as error:
            # Not one request's own refusal (those are outcomes): something in the shared
            # transaction. Each alone, so a bad request cannot fail the others.
            log.warning("%s: a group of %d failed (%r); each runs alone", what, len(group), error)
            return [await self._alone(what, r, actor) for r in group]

    async def _alone(self, what: str, request: _Grouped, actor: str | None) -> Outcome[list[Order]]:
        try:
            return await self._run(
                what,
                request.cause,
                request.decide,
                order_ids=request.order_ids,
                create_orders=what == "reserve",
                variant_ids=request.variant_ids,
                actor=actor,
            )
        except Exception as error:  # its own answer (a 503 too: the others may have committed)
            return error

    async def restock(
        self,
        restocks: Sequence[requests.RestockRequest],
        *,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> list[StockChange]:
        """Idempotent per key: a retry whose first try committed gets that try's changes."""
        expected = [(r.variant_id, r.quantity) for r in restocks]
        return await self._run(
            "restock",
            _new_cause(self.source, idempotency_key, "restock"),
            lambda ledger, cause: requests.restock(ledger, restocks, cause),
            variant_ids=[r.variant_id for r in restocks],
            new_variants={
                r.variant_id: r.product_if_created for r in restocks if r.product_if_created
            },
            replay=_replay_if(lambda c: (c.variant_id, c.delta_on_hand), expected)
            if idempotency_key
            else None,
            actor=actor,
        )

    async def adjust(
        self,
        counts: Sequence[requests.CountRequest],
        *,
        idempotency_key: str | None = None,
        actor: str | None = None,
    ) -> list[StockChange]:
        """An adjustment of at least `STOCK_ANOMALY_MIN_UNITS` far outside the variant's
        usual non-sale changes also raises `stock.anomaly` `large_adjustment`, in the same
        transaction (`anomaly_checks.check_adjustments`); a replay raises nothing again."""
        expected = [(c.variant_id, c.counted) for c in counts]

        async def check(tx: StockTransaction, changes: list[StockChange]) -> None:
            await check_adjustments(tx, changes, self.settings)

        return await self._run(
            "adjust",
            _new_cause(self.source, idempotency_key, "adjust"),
            lambda ledger, cause: requests.adjust(ledger, counts, cause),
            variant_ids=[c.variant_id for c in counts],
            replay=_replay_if(lambda c: (c.variant_id, c.on_hand), expected)
            if idempotency_key
            else None,
            actor=actor,
            after=check,
        )

    async def _run(
        self,
        what: str,
        cause: EventRef,
        decide: Callable[[StockLedger, EventRef], T],
        *,
        order_ids: Collection[str] = (),
        create_orders: bool = False,
        variant_ids: Collection[str] = (),
        new_variants: dict[str, str] | None = None,
        replay: Callable[[AsyncConnection, EventRef], Awaitable[T]] | None = None,
        actor: str | None = None,
        after: Callable[[StockTransaction, T], Awaitable[None]] | None = None,
    ) -> T:
        """One request, one transaction of the unit of work (retried whole on transient
        database errors).

        With `replay`, the cause is claimed in `processed_events` like a consumed event,
        so a retry after a COMMIT whose answer was lost finds it taken and gets what
        `replay` reads back (the changes that committed) instead of applying it twice.
        `after` runs once the ledger has decided, in the same transaction, with what it
        decided (the anomaly checks of an adjust).
        """

        async def step(tx: StockTransaction) -> T:
            if replay is not None and not await tx.claim([cause]):
                return await replay(tx.conn, cause)
            if new_variants:
                await tx.conn.execute(
                    _ENSURE_VARIANTS,
                    {"ids": list(new_variants), "products": list(new_variants.values())},
                )
            ledger = await tx.lock(order_ids, variant_ids, create_orders=create_orders)
            decided = decide(ledger, cause)
            if after is not None:
                await after(tx, decided)
            return decided

        return await self.unit_of_work.run(
            step, what=what, give_up_after=self.give_up_after, actor=actor
        )


def _new_cause(
    source: str, idempotency_key: str | None = None, operation: str = "request"
) -> EventRef:
    """The request's id in the audit log (and its claim). A caller's key is scoped by
    entrypoint and operation, so the same key on restock and on adjust are two requests."""
    return EventRef(source, f"{operation}:{idempotency_key or uuid.uuid4()}")


def _replay_if(
    identify: Callable[[StockChange], tuple[str, int]], expected: list[tuple[str, int]]
) -> Callable[[AsyncConnection, EventRef], Awaitable[list[StockChange]]]:
    """Replays the committed changes of a key, if they answer this very request.

    A key reused for a different body would otherwise get an answer that is not its
    own, and the caller would believe a change was made that was not."""

    async def replay(conn: AsyncConnection, cause: EventRef) -> list[StockChange]:
        changes = await _changes_caused_by(conn, cause)
        if [identify(c) for c in changes] != expected:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {cause.id.partition(':')[2]!r} was used for another "
                "request; use a new key for a new request"
            )
        return changes

    return replay


async def _changes_caused_by(conn: AsyncConnection, cause: EventRef) -> list[StockChange]:
    """The changes an earlier, committed request with this idempotency key made."""
    rows = await conn.execute(
        select(audit_log, variants.c.product_id)
        .join(variants, variants.c.variant_id == audit_log.c.variant_id)
        .where(
            audit_log.c.source_event_source == cause.source,
            audit_log.c.source_event_id == cause.id,
        )
        .order_by(audit_log.c.id)
    )
    return [
        StockChange(
            variant_id=row.variant_id,
            product_id=row.product_id,
            change_type=ChangeType(row.change_type),
            delta_on_hand=row.delta_on_hand,
            delta_reserved=row.delta_reserved,
            on_hand=row.on_hand_after,
            reserved=row.reserved_after,
            version=row.version,
            reference=row.reference,
            reason=row.reason,
            cause=cause,
        )
        for row in rows
    ]
