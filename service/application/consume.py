"""A batch of consumed Kafka records -> one PostgreSQL transaction.

In that one transaction: the ids of the events (so a redelivery changes nothing),
the stock changes, the order states, the audit rows and the outbox rows (the
events to publish, dead letters included). Offsets are committed by the caller
only after it commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from stock_schemas.envelope import EventType
from stock_schemas.events import OrderCheckout, ReservationStatus

from service import failpoints, metrics, tracing
from service.adapters import stock_store
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.domain.ledger import StockLedger
from service.domain.model import EventRef, ReservationOutcome
from service.inbound import InboundEvent, KafkaRecord, Poison, decode_record
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchReport:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    published: int = 0


APPLIED, DUPLICATE, DEAD_LETTERED = "applied", "duplicate", "dead_lettered"


class BatchConsumer:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.unit_of_work = UnitOfWork(engine, settings)
        self.writer = self.unit_of_work.writer
        self._ttl = timedelta(seconds=settings.reservation_ttl_seconds)

    def decode(self, records: Sequence[KafkaRecord]) -> list[InboundEvent | Poison]:
        expected = self.settings.consumed_topics
        return [decode_record(record, expected.get(record.topic)) for record in records]

    async def handle(self, records: Sequence[KafkaRecord]) -> BatchReport:
        """Apply a batch. Waits out database outages; never raises for bad input."""
        started = time.perf_counter()
        outcomes: dict[tuple[str, str], int] = {}
        with tracing.batch(len(records), self.settings.kafka_group_id):
            report = await self._handle(records, outcomes)
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        for (topic, outcome), count in outcomes.items():
            metrics.EVENTS_CONSUMED.labels(topic, outcome).inc(count)
        return report

    async def _handle(
        self, records: Sequence[KafkaRecord], outcomes: dict[tuple[str, str], int]
    ) -> BatchReport:
        with tracing.span("decode"):
            items = self.decode(records)
        if tracing.ENABLED:
            tracing.received(items)
        try:
            return await self._apply(items, outcomes)
        except Exception:
            # Something in this batch breaks a rule we did not foresee (a bug, or data
            # the database refuses). Isolate it: apply one message at a time, and
            # dead-letter only the ones that fail on their own.
            log.exception("batch of %d failed; retrying its messages one by one", len(items))
        report = BatchReport()
        for item in items:
            report = _add(report, await self._apply_alone(item, outcomes))
        return report

    async def _apply_alone(
        self, item: InboundEvent | Poison, outcomes: dict[tuple[str, str], int]
    ) -> BatchReport:
        failure: Exception | None = None
        # Twice: some failures happen once per connection (a statement cached before a
        # schema change), and must not cost a valid event its place.
        for _ in range(2):
            try:
                return await self._apply([item], outcomes)
            except Exception as error:
                failure = error
        log.error("message %s failed on its own; dead-lettering it", _where(item), exc_info=failure)
        reason = f"processing failed: {type(failure).__name__}: {failure}"
        try:
            return await self._apply([Poison(item.record, reason)], outcomes)
        except Exception:
            # Not even its dead letter can be written. Pause before failing the batch
            # (Kafka then redelivers it), so a stuck batch never spins the CPU.
            log.critical("cannot dead-letter %s; the batch will be retried", _where(item))
            await asyncio.sleep(self.settings.retry_max_backoff_seconds)
            raise

    async def _apply(
        self, items: Sequence[InboundEvent | Poison], outcomes: dict[tuple[str, str], int]
    ) -> BatchReport:
        """One transaction through the unit of work (which retries transient errors);
        `outcomes` gets (topic, outcome) counts once it commits."""
        events: dict[EventRef, InboundEvent] = {}
        poisons: dict[tuple[str, int, int, int], Poison] = {}
        for item in items:
            if isinstance(item, Poison):
                poisons.setdefault(item.position, item)
            else:
                events.setdefault(item.ref, item)  # first occurrence in the batch wins
        committed: list[StockTransaction] = []
        rejected: list[ReservationOutcome] = []

        async def step(tx: StockTransaction) -> tuple[list[InboundEvent], list[Poison]]:
            committed[:] = [tx]
            rejected.clear()
            fresh_refs = await tx.claim(list(events))
            fresh = [event for ref, event in events.items() if ref in fresh_refs]
            new_dead = await stock_store.claim_dead_letters(tx.conn, list(poisons.values()))
            dead = [poison for position, poison in poisons.items() if position in new_dead]
            if fresh:
                ledger = await tx.lock(
                    [event.data.order_id for event in fresh],
                    [
                        line.variant_id
                        for event in fresh
                        if isinstance(event.data, OrderCheckout)
                        for line in event.data.lines
                    ],
                )
                with tracing.span("decide"):
                    for event in fresh:
                        self._apply_event(ledger, event, tx.now)
                rejected.extend(
                    o for o in ledger.outcomes if o.status is ReservationStatus.REJECTED
                )
            tx.publish([self.writer.dead_letter(poison) for poison in dead])
            return fresh, dead

        fresh, dead = await self.unit_of_work.run(
            step,
            what=f"batch of {len(items)}",
            before_commit=lambda: failpoints.reach("mid_batch"),
        )
        failpoints.reach("after_commit")
        applied = {id(event) for event in fresh}
        dead_ids = {id(poison) for poison in dead}
        for item in items:
            if id(item) in applied:
                outcome = APPLIED
            elif id(item) in dead_ids:
                outcome = DEAD_LETTERED
            else:
                outcome = DUPLICATE
            key = (item.record.topic, outcome)
            outcomes[key] = outcomes.get(key, 0) + 1
        # Once each, after the commit: a rolled-back attempt logs nothing.
        for poison in dead:
            log.info(
                "dead-lettered %s: %s",
                _where(poison),
                poison.reason,
                extra={"position": _where(poison), "reason": poison.reason},
            )
        for rejection in rejected:
            log.info(
                "order %s REJECTED: %s%s",
                rejection.order_id,
                rejection.reason,
                "".join(
                    f"; {s.variant_id} {s.requested} requested, {s.available} available"
                    for s in rejection.shortages
                ),
                extra={"order_id": rejection.order_id, "reason": rejection.reason},
            )
        if len(dead) < len(poisons):
            log.info("%d bad records were dead-lettered before", len(poisons) - len(dead))
        return BatchReport(
            applied=len(fresh),
            duplicates=len(items) - len(fresh) - len(dead),
            dead_lettered=len(dead),
            published=committed[0].appended,
        )

    def _apply_event(self, ledger: StockLedger, event: InboundEvent, now: datetime) -> None:
        data = event.data
        if event.type == EventType.ORDER_CHECKOUT:
            expires_at = data.expires_at or (event.time + self._ttl)
            ledger.checkout(data.order_id, data.merged_lines(), expires_at, event.ref, now=now)
        elif event.type == EventType.PAYMENT_SUCCEEDED:
            ledger.payment_succeeded(data.order_id, event.ref)
        elif event.type == EventType.PAYMENT_FAILED:
            ledger.payment_failed(data.order_id, event.ref)
        elif event.type == EventType.ORDER_CANCELLED:
            ledger.cancel(data.order_id, event.ref)
        else:  # decode_record admits only the types above
            raise AssertionError(f"unhandled event type {event.type}")


def _where(item: InboundEvent | Poison) -> str:
    record = item.record
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _add(a: BatchReport, b: BatchReport) -> BatchReport:
    return BatchReport(
        a.applied + b.applied,
        a.duplicates + b.duplicates,
        a.dead_lettered + b.dead_lettered,
        a.published + b.published,
    )
