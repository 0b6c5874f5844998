"""The `large_adjustment` and `unusual_shrinkage` checks (CONTRACT.md, "Events added").

* `check_adjustments` runs inside the step of an adjust request
  (`StockCommands.adjust`: HTTP `PUT adjust`, `stock adjust`), after the ledger has
  decided and before the unit of work writes back: it reads the history of the
  variants whose adjustment is big enough to matter, lets
  `service.domain.anomaly_rules` judge, and raises the anomalies on the transaction,
  so each is kept and published once, in the transaction of the adjustment, or not
  at all. Count applies are not checked: an applied line out of tolerance raises
  `count_variance` already, one within tolerance is a difference the count's own rule
  accepts, and their losses count in the weekly shrinkage.
* `check_shrinkage` is the weekly `shrinkage` job (`service/application/jobs.py`):
  every variant's losses of the last complete ISO week against its 8 weeks before,
  in one transaction of the unit of work. Raising is idempotent per week: a variant
  already raised for that week is not raised again, however often the job runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from stock_schemas.events import AnomalyRule

from service.adapters import anomaly_sql as sql
from service.application.unit_of_work import StockTransaction, UnitOfWork
from service.domain.anomaly_rules import AdjustmentHistory, judge_adjustment, judge_shrinkage
from service.domain.model import Anomaly, StockChange
from service.settings import Settings

# ------------------------------------------------------------------ large_adjustment


def net_adjustments(changes: Sequence[StockChange]) -> dict[str, tuple[StockChange, int]]:
    """Each variant's net `delta_on_hand` in one request (a later count of the same
    variant in one request wins, so its changes add up to the one adjustment), with
    its last change."""
    nets: dict[str, tuple[StockChange, int]] = {}
    for change in changes:
        _, before = nets.get(change.variant_id, (change, 0))
        nets[change.variant_id] = (change, before + change.delta_on_hand)
    return nets


def large_adjustments(
    nets: Mapping[str, tuple[StockChange, int]],
    histories: Mapping[str, AdjustmentHistory],
    settings: Settings,
) -> list[Anomaly]:
    """The `large_adjustment` anomalies of one request's net adjustments. Reference:
    the request's event id (the `eventId` of its entries in `GET logs/{variantId}`)."""
    found: list[Anomaly] = []
    for variant_id, (change, delta) in nets.items():
        verdict = judge_adjustment(
            delta,
            histories.get(variant_id, AdjustmentHistory(0.0, ())),
            min_units=settings.anomaly_min_units,
            z_threshold=settings.anomaly_z,
        )
        if verdict.anomalous:
            found.append(
                Anomaly(
                    variant_id=variant_id,
                    product_id=change.product_id,
                    rule=AnomalyRule.LARGE_ADJUSTMENT,
                    observed=verdict.observed,
                    expected=verdict.expected,
                    score=verdict.score,
                    reference=change.cause.id if change.cause is not None else change.reference,
                )
            )
    return found


async def check_adjustments(
    tx: StockTransaction, changes: Sequence[StockChange], settings: Settings
) -> list[Anomaly]:
    """Raise `large_adjustment` for the adjustments of this transaction that are one.

    Only variants moved by at least `STOCK_ANOMALY_MIN_UNITS` have their history read
    (one statement for all of them): a smaller adjustment is never an anomaly, so a
    2-unit recount costs no query."""
    nets = {
        variant_id: (change, delta)
        for variant_id, (change, delta) in net_adjustments(changes).items()
        if abs(delta) >= settings.anomaly_min_units
    }
    if not nets:
        return []
    histories = await sql.adjustment_histories(tx.conn, list(nets))
    found = large_adjustments(nets, histories, settings)
    tx.raise_anomalies(found)
    return found


# ------------------------------------------------------------------ unusual_shrinkage


@dataclass(frozen=True)
class ShrinkageReport:
    """One run of the shrinkage check: the job's detail in `job_runs`."""

    #: The judged week: ISO label (`2026-W47`) and its Monday 00:00 UTC.
    week: str
    week_start: datetime
    #: Variants that lost at least `STOCK_ANOMALY_MIN_UNITS` that week.
    candidates: int
    #: The anomalies raised by this run, and the variants raised for this week before.
    raised: tuple[Anomaly, ...] = ()
    already_raised: int = 0
    settings_used: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "weekStart": self.week_start.isoformat(),
            "candidates": self.candidates,
            "raised": len(self.raised),
            "alreadyRaised": self.already_raised,
            # A few, to read in `stock jobs`; all of them are in `anomalies`.
            "variantIds": [a.variant_id for a in self.raised[:100]],
            **self.settings_used,
        }


async def check_shrinkage(
    engine: AsyncEngine, settings: Settings, actor: str, *, give_up_after: float | None = None
) -> ShrinkageReport:
    """Judge the last complete ISO week of every variant that lost stock in it, raise
    `unusual_shrinkage` (reference: the week's label) for each unusual one not raised
    for that week yet. One transaction: the anomalies and their events, or nothing."""

    async def step(tx: StockTransaction) -> ShrinkageReport:
        await tx.conn.execute(sql.SHRINKAGE_LOCK)
        week_start, label = await sql.last_complete_week(tx.conn)
        weeks = await sql.weekly_losses(tx.conn, week_start, label, settings.anomaly_min_units)
        raised: list[Anomaly] = []
        for losses in weeks:
            if losses.raised:
                continue
            verdict = judge_shrinkage(
                losses.week,
                losses.baseline,
                min_units=settings.anomaly_min_units,
                z_threshold=settings.anomaly_z,
            )
            if verdict.anomalous:
                raised.append(
                    Anomaly(
                        variant_id=losses.variant_id,
                        product_id=losses.product_id,
                        rule=AnomalyRule.UNUSUAL_SHRINKAGE,
                        observed=verdict.observed,
                        expected=verdict.expected,
                        score=verdict.score,
                        reference=label,
                    )
                )
        tx.raise_anomalies(raised)
        return ShrinkageReport(
            week=label,
            week_start=week_start,
            candidates=len(weeks),
            raised=tuple(raised),
            already_raised=sum(1 for w in weeks if w.raised),
            settings_used={
                "minUnits": settings.anomaly_min_units,
                "z": settings.anomaly_z,
            },
        )

    return await UnitOfWork(engine, settings).run(
        step, what="shrinkage check", actor=actor, give_up_after=give_up_after
    )
