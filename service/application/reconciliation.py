"""Reconciliation (CONTRACT.md, "Reconciliation"): every invariant checked, nothing repaired.

`reconcile` runs the set-based check of `adapters.reconciliation_sql` and, in the same
transaction (the one unit of work), records the run in `reconciliation_runs` and
publishes one `stock.anomaly` (`ledger_mismatch`) per discrepancy through the outbox:
a run that is recorded has published its anomalies, and one that failed has done
neither. A person reads the discrepancies and adjusts; the service changes no stock.

Callers: `POST /api/inventory/reconciliation`, `stock reconcile`, and the scheduled
job (`reconcile(engine, settings, actor)`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from stock_schemas.events import AnomalyRule

from service.adapters import reconciliation_sql as sql
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.domain.model import Anomaly, StockChange
from service.settings import Settings


class DiscrepancyKind(StrEnum):
    """Which invariant a variant breaks (CONTRACT.md, "Invariants" 1-3 and versions)."""

    BOUNDS = "bounds"
    RESERVED_MISMATCH = "reserved_mismatch"
    LEDGER_MISMATCH = "ledger_mismatch"
    VERSION_GAP = "version_gap"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    variant_id: str
    #: For the anomaly's `product_id`; a variant whose row is gone has its own id here.
    product_id: str
    kind: DiscrepancyKind
    #: What the other side of the invariant says (the ledger, the held lines, ...).
    expected: int
    #: What the variant row holds.
    actual: int

    def as_json(self) -> dict[str, Any]:
        """The contract's shape: `{variantId, kind, expected, actual}`."""
        return {
            "variantId": self.variant_id,
            "kind": self.kind.value,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    run_id: str
    actor: str
    started_at: datetime
    finished_at: datetime
    checked_variants: int
    discrepancies: tuple[Discrepancy, ...]

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def as_json(self) -> dict[str, Any]:
        """The answer of `POST reconciliation`, `GET reconciliation/latest` and
        `stock reconcile --json`."""
        return {
            "runId": self.run_id,
            "actor": self.actor,
            "startedAt": self.started_at.isoformat(),
            "finishedAt": self.finished_at.isoformat(),
            "checkedVariants": self.checked_variants,
            "discrepancies": [d.as_json() for d in self.discrepancies],
        }


async def reconcile(
    engine: AsyncEngine,
    settings: Settings,
    actor: str,
    *,
    full: bool = False,
    give_up_after: float | None = None,
) -> ReconciliationReport:
    """Check every variant, keep the run, publish an anomaly per discrepancy.

    `actor`: who asked (`api:<token>`, `cli:<user>`, `stock-service` for the scheduled
    job), kept on the run. `full`: read every variant's whole audit log rather than
    what follows its checkpoint (the same checks; it also finds the log of a variant
    whose row was deleted before any run, and rewrites the checkpoints).
    `give_up_after`: seconds to wait out a database outage (an HTTP caller owes an
    answer); None waits as long as it takes.
    """
    unit_of_work = UnitOfWork(engine, settings)
    run_id = str(uuid.uuid4())

    async def step(tx: StockTransaction) -> ReconciliationReport:
        started_at = datetime.now(UTC)
        checked, found = await sql.find_discrepancies(tx.conn, whole_log=full)
        report = ReconciliationReport(
            run_id=run_id,
            actor=actor,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            checked_variants=checked,
            discrepancies=tuple(
                Discrepancy(
                    row.variant_id,
                    row.product_id,
                    DiscrepancyKind(row.kind),
                    row.expected,
                    row.actual,
                )
                for row in found
            ),
        )
        recorded = await _record(tx.conn, report)
        if recorded is not report:
            # A retry after a commit whose answer was lost: that attempt recorded the
            # run and published its anomalies; answer it, publish nothing again.
            return recorded
        tx.raise_anomalies([_anomaly(d, run_id) for d in report.discrepancies])
        return report

    return await unit_of_work.run(
        step, what="reconciliation", actor=actor, give_up_after=give_up_after
    )


#: The audit reason of an outside change a person accepted into the log.
LEDGER_CORRECTION = "ledger_correction"


async def accept_outside_changes(
    engine: AsyncEngine, settings: Settings, actor: str, variant_ids: Sequence[str]
) -> list[StockChange]:
    """A person's answer to `ledger_mismatch`: the rows of these variants are right
    (someone changed them outside the service, e.g. with SQL); record each difference
    in the audit log as an ADJUSTMENT (reason `ledger_correction`, the actor who
    accepted it), published as `stock.changed` like any change. Variants whose log adds
    up already are left alone. The shelf's truth is then a count or an adjust away."""

    async def step(tx: StockTransaction) -> list[StockChange]:
        ids = sorted(set(variant_ids))
        ledger = await tx.lock((), ids)
        rows = await tx.conn.execute(sql.BOOKED_ON_HAND, {"ids": ids})
        booked = {row.variant_id: int(row.booked) for row in rows}
        changes = [
            ledger.book_outside_change(v, booked.get(v, 0), reason=LEDGER_CORRECTION)
            for v in ids
        ]
        return [change for change in changes if change is not None]

    return await UnitOfWork(engine, settings).run(
        step, what="accept outside changes", actor=actor
    )


async def latest_run(engine: AsyncEngine) -> ReconciliationReport | None:
    """The run that finished last, or None if there has been none."""
    async with engine.connect() as conn:
        row = (await conn.execute(sql.SELECT_LATEST_RUN)).first()
    return _report(row) if row is not None else None


def _anomaly(discrepancy: Discrepancy, run_id: str) -> Anomaly:
    return Anomaly(
        variant_id=discrepancy.variant_id,
        product_id=discrepancy.product_id,
        rule=AnomalyRule.LEDGER_MISMATCH,
        observed=discrepancy.actual,
        expected=discrepancy.expected,
        reference=run_id,
    )


async def _record(conn: AsyncConnection, report: ReconciliationReport) -> ReconciliationReport:
    """Insert the run; returns `report`, or the run stored under its id before."""
    inserted = await conn.execute(
        sql.INSERT_RUN,
        {
            "run_id": report.run_id,
            "actor": report.actor,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "checked_variants": report.checked_variants,
            "discrepancies": json.dumps(_stored(report.discrepancies)),
        },
    )
    if inserted.first() is not None:
        return report
    return _report((await conn.execute(sql.SELECT_RUN, {"run_id": report.run_id})).one())


def _stored(discrepancies: Sequence[Discrepancy]) -> list[dict[str, Any]]:
    """`reconciliation_runs.discrepancies`: snake_case, with the product."""
    return [
        {
            "variant_id": d.variant_id,
            "product_id": d.product_id,
            "kind": d.kind.value,
            "expected": d.expected,
            "actual": d.actual,
        }
        for d in discrepancies
    ]


def _report(row: Any) -> ReconciliationReport:
    found = row.discrepancies
    if isinstance(found, str):
        found = json.loads(found)
    return ReconciliationReport(
        run_id=row.run_id,
        actor=row.actor,
        started_at=row.started_at,
        finished_at=row.finished_at,
        checked_variants=int(row.checked_variants),
        discrepancies=tuple(
            Discrepancy(
                str(d["variant_id"]),
                str(d.get("product_id") or d["variant_id"]),
                DiscrepancyKind(d["kind"]),
                int(d["expected"]),
                int(d["actual"]),
            )
            for d in found
        ),
    )
