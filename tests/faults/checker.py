"""After the faults heal and the backlog drains: did anything get lost, doubled or oversold?

Independent of the worker's code. It reads what is really there (the input topics as
the broker holds them, the database with plain SQL, the published topics) and holds it
against the reference model fed the same inputs:

- every valid input event applied exactly once (`processed_events`), nothing else;
- every poison record dead-lettered once in the database and at least once on the DLQ
  topic, with its original bytes (or a marked prefix) and a reason;
- every order in a status the contract allows for the events it received, and its
  last `stock.reservation` saying the same;
- per variant, `on_hand` and `reserved` equal to what those statuses leave, on the
  table and in the last `stock.changed`;
- CONTRACT.md's invariants; `stock.changed` versions per variant without a gap and
  without two payloads under one version;
- no unit sold beyond what was on hand.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import create_async_engine

from tests.faults.reference import allowed_statuses, expected_stock
from tests.faults.workload import PLENTY, SOURCE, Planned, Topics, Workload
from tests.support.invariants import invariant_violations, published_change_violations


@dataclass(frozen=True)
class OutputTopics:
    changed: str
    reservation: str
    dlq: str


@dataclass
class Verdict:
    #: Inputs without their effect, and units the reference expects that are not there.
    lost: int = 0
    #: Effects beyond the inputs: units or announcements counted twice.
    doubled: int = 0
    oversold: int = 0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not (self.lost or self.doubled or self.oversold)

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)
        elif len(self.problems) == 200:
            self.problems.append("... (more problems not listed)")


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record the broker holds for `topic`, partition by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@dataclass
class Delivered:
    """The input topics as the broker holds them, matched to what the shop sent."""

    valid: set[str] = field(default_factory=set)
    poison_at: dict[tuple[str, int, int], Planned] = field(default_factory=dict)
    #: Records of valid events, a resent event counted each time it is on a topic.
    valid_records: int = 0


@dataclass
class Tables:
    processed: list[str]
    dead: dict[tuple[str, int, int], str]
    phases: dict[str, str]
    variants: dict[str, Any]
    unpublished: int
    #: Outbox rows Kafka refused for good (marked published with an error).
    parked: int
    #: Orders whose hold lapsed at least once (a figure, not a check).
    expired_holds: int


async def check(
    workload: Workload,
    inputs: Topics,
    outputs: OutputTopics,
    database_url: str,
    bootstrap: str,
) -> Verdict:
    verdict = Verdict()
    delivered = await _read_inputs(workload, inputs, bootstrap, verdict)
    tables = await _read_tables(database_url)
    _check_applied_once(workload, delivered, tables, verdict)
    _check_dlq_topic(await read_topic(bootstrap, outputs.dlq), delivered.poison_at, verdict)
    scarce = {v for v, units in workload.catalogue.items() if units < PLENTY}
    _check_orders(workload, tables.phases, scarce, verdict)
    _check_reservations(await read_topic(bootstrap, outputs.reservation), tables.phases, verdict)
    _check_stock(workload, tables, verdict)
    changes = await read_topic(bootstrap, outputs.changed)
    _check_changes(changes, tables.variants, verdict)
    engine = create_async_engine(_sqlalchemy_url(database_url))
    try:
        for text in await invariant_violations(engine):
            verdict.problem(f"invariant {text}")
    finally:
        await engine.dispose()
    verdict.figures = {
        "records": len(workload.records),
        "valid_events": len(delivered.valid),
        "resent_by_shop": delivered.valid_records - len(delivered.valid),
        "poison": len(delivered.poison_at),
        "orders": len(workload.orders),
        "stock_changed": len(changes),
        "expired_holds": tables.expired_holds,
        "hot_units": sum(workload.catalogue[v] for v in scarce),
        "hot_sold": sum(workload.catalogue[v] - tables.variants[v]["on_hand"] for v in scarce),
        **{f"status_{status}": n for status, n in Counter(tables.phases.values()).items()},
    }
    return verdict


async def _read_inputs(
    workload: Workload, inputs: Topics, bootstrap: str, verdict: Verdict
) -> Delivered:
    planned = {record.identity: record for record in workload.records}
    delivered = Delivered()
    for topic in inputs.all():
        for record in await read_topic(bootstrap, topic):
            identity = (topic, record.value or b"", tuple(sorted(record.headers)))
            plan = planned.get(identity)
            if plan is None:
                verdict.problem(f"input {topic}/{record.partition}@{record.offset} was not sent")
            elif plan.event_id is not None:
                delivered.valid.add(plan.event_id)
                delivered.valid_records += 1
            else:
                delivered.poison_at[(topic, record.partition, record.offset)] = plan
    sent_valid = {r.event_id for r in workload.records if r.event_id is not None}
    if missing := sent_valid - delivered.valid:
        verdict.problem(f"{len(missing)} acknowledged events are not on the input topics")
    return delivered


async def _read_tables(database_url: str) -> Tables:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        processed = await conn.fetch(
            "SELECT event_id FROM processed_events WHERE source = $1", SOURCE
        )
        dead = await conn.fetch('SELECT topic, partition, "offset", reason FROM dead_letters')
        orders = await conn.fetch("SELECT order_id, phase FROM orders")
        variants = await conn.fetch("SELECT variant_id, on_hand, reserved, version FROM variants")
        unpublished = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        parked = await conn.fetchval("SELECT count(*) FROM outbox WHERE publish_error IS NOT NULL")
        expired_holds = await conn.fetchval(
            "SELECT count(DISTINCT reference) FROM audit_log WHERE change_type = 'EXPIRE'"
        )
    finally:
        await conn.close()
    return Tables(
        processed=[r["event_id"] for r in processed],
        dead={(r["topic"], r["partition"], r["offset"]): r["reason"] for r in dead},
        phases={r["order_id"]: r["phase"] for r in orders},
        variants={r["variant_id"]: r for r in variants},
        unpublished=unpublished,
        parked=parked,
        expired_holds=expired_holds,
    )


def _check_applied_once(
    workload: Workload, delivered: Delivered, tables: Tables, verdict: Verdict
) -> None:
    """Every valid event applied (once: the primary key), poison dead-lettered, never
    the one for the other; and every effect published."""
    applied = set(tables.processed)
    not_applied = delivered.valid - applied
    verdict.lost += len(not_applied)
    for event_id in sorted(not_applied)[:20]:
        verdict.problem(f"event {event_id} was delivered but never applied")
    sent_valid = {r.event_id for r in workload.records if r.event_id is not None}
    for event_id in applied - sent_valid:
        verdict.problem(f"event {event_id} was applied but never sent")
    for where, plan in delivered.poison_at.items():
        if where not in tables.dead:
            verdict.lost += 1
            verdict.problem(f"poison ({plan.poison}) at {where} is not in dead_letters")
    for where in tables.dead.keys() - delivered.poison_at.keys():
        verdict.problem(f"record {where} was dead-lettered but is a valid event")
    if tables.unpublished:
        verdict.problem(f"{tables.unpublished} outbox rows were never published")
    if tables.parked:
        verdict.lost += tables.parked
        verdict.problem(f"{tables.parked} outbox rows were parked (refused by Kafka)")


def _check_orders(
    workload: Workload, phases: dict[str, str], scarce: set[str], verdict: Verdict
) -> None:
    """Every order in a status the contract allows for the events it received."""
    for order_id, plan in workload.orders.items():
        phase = phases.get(order_id)
        allowed = allowed_statuses(plan, workload.catalogue, scarce)
        if phase not in allowed:
            verdict.problem(f"order {order_id!r} is {phase}, the contract allows {sorted(allowed)}")
    for order_id in phases.keys() - workload.orders.keys():
        verdict.problem(f"order {order_id!r} exists but was never sent")


def _check_stock(workload: Workload, tables: Tables, verdict: Verdict) -> None:
    """Stock adds up to what the orders' statuses leave; nothing oversold; no variant
    made up (an unknown one ordered is rejected, not created)."""
    for variant_id in tables.variants.keys() - workload.catalogue.keys():
        verdict.problem(f"variant {variant_id!r} exists but is not in the catalogue")
    expected = expected_stock(workload.orders, tables.phases, workload.catalogue)
    for variant_id, want in expected.items():
        row = tables.variants.get(variant_id)
        if row is None:
            verdict.problem(f"variant {variant_id} vanished")
            continue
        sold = workload.catalogue[variant_id] - row["on_hand"]
        verdict.lost += max(want.sold - sold, 0) + max(want.reserved - row["reserved"], 0)
        verdict.doubled += max(sold - want.sold, 0) + max(row["reserved"] - want.reserved, 0)
        verdict.oversold += max(sold - workload.catalogue[variant_id], 0)
        verdict.oversold += max(row["reserved"] - row["on_hand"], 0)
        if (row["on_hand"], row["reserved"]) != (want.on_hand, want.reserved):
            verdict.problem(
                f"{variant_id}: on_hand {row['on_hand']} reserved {row['reserved']}, "
                f"the orders' statuses leave {want.on_hand} / {want.reserved}"
            )


def _check_changes(
    records: list[ConsumerRecord[bytes, bytes]], variants: dict[str, Any], verdict: Verdict
) -> None:
    """Versions per variant without a gap or a second payload; the last one shows the
    table's stock."""
    versions = {v: int(r["version"]) for v, r in variants.items()}
    for text in published_change_violations(records, versions):
        verdict.problem(text)
        if "two payloads" in text:
            verdict.doubled += 1
        else:
            verdict.lost += 1
    by_version: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        data = json.loads(record.value or b"{}")["data"]
        by_version[data["variant_id"]][data["version"]] = data
    last: dict[str, dict[str, Any]] = {}
    for variant_id, versions in by_version.items():
        previous = None
        for version in sorted(versions):
            data = versions[version]
            if not _follows(previous, data):
                verdict.problem(f"{variant_id} v{version} does not follow from v{version - 1}")
            previous = data
        last[variant_id] = previous or {}
    for variant_id, row in variants.items():
        data = last.get(variant_id)
        if row["version"] == 0:
            continue
        if data is None or (data["on_hand"], data["reserved"]) != (row["on_hand"], row["reserved"]):
            verdict.problem(f"{variant_id}: the last stock.changed does not show the table's stock")


def _check_dlq_topic(
    records: list[ConsumerRecord[bytes, bytes]],
    poison_at: dict[tuple[str, int, int], Planned],
    verdict: Verdict,
) -> None:
    copies: dict[tuple[str, int, int], list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    for record in records:
        headers = {k: v for k, v in record.headers}
        try:
            where = (
                headers["topic"].decode(),
                int(headers["partition"]),
                int(headers["offset"]),
            )
        except (KeyError, ValueError):
            verdict.problem(f"DLQ record @{record.offset} does not say where it came from")
            continue
        copies[where].append(record)
    for where in copies.keys() - poison_at.keys():
        verdict.problem(f"DLQ holds a copy of {where}, which is not poison")
    for where, plan in poison_at.items():
        found = copies.get(where)
        if not found:
            verdict.lost += 1
            verdict.problem(f"poison ({plan.poison}) at {where} is not on the DLQ topic")
            continue
        copy = found[0]
        headers = {k: v for k, v in copy.headers}
        value = copy.value or b""
        if not headers.get("reason"):
            verdict.problem(f"DLQ copy of {where} has no reason")
        if value != plan.value and not (
            "truncated-from" in headers and plan.value.startswith(value)
        ):
            verdict.problem(f"DLQ copy of {where} ({plan.poison}) is not the original bytes")


#: CONTRACT.md's table as announcements: which status may follow which, for one order.
#: (None: the first announcement. A payment that came before its checkout is
#: announced RESERVED, then CONFIRMED; a failure before it, RELEASED; a cancellation
#: before it, REJECTED; a checkout handled after its hold had ended, EXPIRED at once,
#: as CONTRACT.md's "Staleness" says.)
NEXT_STATUSES: dict[str | None, set[str]] = {
    None: {"RESERVED", "REJECTED", "RELEASED", "EXPIRED"},
    "RESERVED": {"CONFIRMED", "RELEASED", "EXPIRED"},
    "CONFIRMED": {"RETURNED"},
    "RELEASED": {"CONFIRMED", "CONFIRM_FAILED"},
    "EXPIRED": {"CONFIRMED", "CONFIRM_FAILED"},
    "REJECTED": {"CONFIRM_FAILED"},
    "RETURNED": set(),  # (a second payment would be answered CONFIRM_FAILED; none here)
    "CONFIRM_FAILED": set(),
}


def _check_reservations(
    records: list[ConsumerRecord[bytes, bytes]], phases: dict[str, str], verdict: Verdict
) -> None:
    """Per order (one partition, so in order): every step one the contract's table
    allows, none twice, the last one the table's; a rejection for stock names real
    shortages. A relay retry may repeat an announcement under the same event id."""
    seen_ids: set[str] = set()
    announced: dict[str, list[str]] = defaultdict(list)
    for record in records:
        event = json.loads(record.value or b"{}")
        if event["id"] in seen_ids:
            continue
        seen_ids.add(event["id"])
        data = event["data"]
        history = announced[data["order_id"]]
        # A refusal for stock at checkout, or when a payment tries to take lapsed stock
        # again, names what is short. (The payment of an order REJECTED earlier is
        # refused for that rejection; its shortages are as they stand now, maybe none.)
        fresh_refusal = data["status"] == "REJECTED" or (
            data["status"] == "CONFIRM_FAILED" and history[-1:] in (["RELEASED"], ["EXPIRED"])
        )
        if fresh_refusal and data.get("reason") == "insufficient_stock":
            shortages = data.get("shortages") or []
            if not shortages or any(s["available"] >= s["requested"] for s in shortages):
                verdict.problem(f"order {data['order_id']!r} refused for stock: {shortages}")
        history.append(data["status"])
    for order_id, statuses in announced.items():
        repeats = [s for s, n in Counter(statuses).items() if n > 1]
        if repeats:
            verdict.doubled += 1
            verdict.problem(f"order {order_id!r} was announced {repeats} twice: {statuses}")
        for before, after in zip([None, *statuses], statuses, strict=False):
            if after not in NEXT_STATUSES[before]:
                verdict.problem(f"order {order_id!r} went {before} -> {after}: {statuses}")
                break
        if statuses[-1] != phases.get(order_id):
            verdict.problem(
                f"order {order_id!r} is {phases.get(order_id)} but was last announced {statuses}"
            )
    for order_id, phase in phases.items():
        if phase != "PENDING" and order_id not in announced:
            verdict.lost += 1
            verdict.problem(f"order {order_id!r} is {phase} but was never announced")


CHANGE_TYPES = {"RESERVE", "RELEASE", "EXPIRE", "SALE", "RETURN", "RESTOCK", "ADJUSTMENT"}


def _follows(previous: dict[str, Any] | None, data: dict[str, Any]) -> bool:
    """One `stock.changed` is the one before plus its deltas, and adds up in itself."""
    if data["change_type"] not in CHANGE_TYPES:
        return False
    if data["available"] != data["on_hand"] - data["reserved"]:
        return False
    if previous is None or previous["version"] != data["version"] - 1:
        return True  # the gap itself is reported by published_change_violations
    return (data["on_hand"], data["reserved"]) == (
        previous["on_hand"] + data["delta_on_hand"],
        previous["reserved"] + data["delta_reserved"],
    )


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)
