"""Set-based load and write of the ledger's state, inside the caller's transaction.

Locking order, everywhere: orders by `order_id`, then variants by `variant_id`.
Every statement that locks several rows sorts them first, so two workers (or a
worker and the sweeper) touching the same rows wait for each other, never deadlock.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.adapters.tables import OUTBOX_CHANNEL
from service.domain.ledger import StockLedger
from service.domain.model import (
    Anomaly,
    EventRef,
    Order,
    OrderPhase,
    PaymentOutcome,
    Variant,
    actor_of,
)
from service.inbound import Poison
from service.outbound import OutboxMessage

_CLAIM_EVENTS = text(
    """
    INSERT INTO processed_events (source, event_id)
    SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:ids AS text[]))
    ON CONFLICT DO NOTHING
    RETURNING source, event_id
    """
)

_CLAIM_DEAD_LETTERS = text(
    """
    INSERT INTO dead_letters (topic, partition, "offset", record_timestamp, reason)
    SELECT * FROM unnest(
        CAST(:topics AS text[]), CAST(:partitions AS integer[]), CAST(:offsets AS bigint[]),
        CAST(:timestamps AS bigint[]), CAST(:reasons AS text[])
    )
    ON CONFLICT DO NOTHING
    RETURNING topic, partition, "offset", record_timestamp
    """
)

# One statement creates the orders seen for the first time and locks every order, in
# key order, in one round trip. Two workers often hold events of the same order at once
# (checkouts and payments arrive on different topics); they queue on the row, never
# deadlock. The no-op update is what takes the lock on an existing row.
_CREATE_AND_LOCK_ORDERS = text(
    """
    INSERT INTO orders AS o (order_id, phase)
    SELECT order_id, 'PENDING' FROM unnest(CAST(:ids AS text[])) AS t(order_id)
    ORDER BY order_id
    ON CONFLICT (order_id) DO UPDATE SET phase = o.phase
    RETURNING order_id, phase, expires_at, payment, cancelled, reason
    """
)

_LOCK_ORDERS = text(
    """
    SELECT order_id, phase, expires_at, payment, cancelled, reason
    FROM orders WHERE order_id = ANY(CAST(:ids AS text[]))
    ORDER BY order_id
    FOR UPDATE
    """
)

# A join on the primary key from the ids, not `= ANY(...)`: the planner keeps to the
# index even when its statistics still think order_lines is small (a fresh database).
_LOAD_LINES = text(
    """
    SELECT l.order_id, l.variant_id, l.quantity
    FROM unnest(CAST(:ids AS text[])) AS t(order_id)
    JOIN order_lines AS l ON l.order_id = t.order_id
    """
)

# The effective reorder point and when the variant ran out ride along with the lock:
# what the ledger's back-in-stock and reorder edges need, without another query.
_LOCK_VARIANTS = text(
    """
    SELECT variant_id, product_id, on_hand, reserved, version, low_stock_threshold,
           COALESCE(reorder_point, computed_reorder_point), out_of_stock_since
    FROM variants WHERE variant_id = ANY(CAST(:ids AS text[]))
    ORDER BY variant_id
    FOR UPDATE
    """
)

# Oldest first, from the partial index. Not in key order: SKIP LOCKED never waits,
# so this statement cannot take part in a deadlock.
_LOCK_EXPIRED_ORDERS = text(
    """
    SELECT order_id FROM orders
    WHERE phase = 'RESERVED' AND expires_at <= :now
      AND order_id <> ALL(CAST(:skip AS text[]))
    ORDER BY expires_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

_UPDATE_ORDERS = """
    UPDATE orders AS o SET
        phase = u.phase, expires_at = u.expires_at, payment = u.payment,
        cancelled = u.cancelled, reason = u.reason, updated_at = now()
    FROM unnest(
        CAST(:ids AS text[]), CAST(:phases AS text[]), CAST(:expires AS timestamptz[]),
        CAST(:payments AS text[]), CAST(:cancelled AS boolean[]), CAST(:reasons AS text[])
    ) AS u(order_id, phase, expires_at, payment, cancelled, reason)
    WHERE o.order_id = u.order_id
    """

_INSERT_LINES = """
    INSERT INTO order_lines (order_id, variant_id, quantity)
    SELECT * FROM unnest(
        CAST(:order_ids AS text[]), CAST(:variant_ids AS text[]), CAST(:quantities AS bigint[])
    )
    ON CONFLICT DO NOTHING
    """

_UPDATE_VARIANTS = """
    UPDATE variants AS v SET
        on_hand = u.on_hand, reserved = u.reserved, version = u.version,
        out_of_stock_since = u.out_of_stock_since, updated_at = now()
    FROM unnest(
        CAST(:ids AS text[]), CAST(:on_hand AS bigint[]), CAST(:reserved AS bigint[]),
        CAST(:versions AS bigint[]), CAST(:out_of_stock_since AS timestamptz[])
    ) AS u(variant_id, on_hand, reserved, version, out_of_stock_since)
    WHERE v.variant_id = u.variant_id
    """

_INSERT_VARIANTS = """
    INSERT INTO variants (variant_id, product_id, on_hand, reserved, version, out_of_stock_since)
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:products AS text[]), CAST(:on_hand AS bigint[]),
        CAST(:reserved AS bigint[]), CAST(:versions AS bigint[]),
        CAST(:out_of_stock_since AS timestamptz[])
    )
    """

_AUDIT_COLUMNS = """
    variant_id, change_type, delta_on_hand, delta_reserved, on_hand_after, reserved_after,
    version, reason, reference, source_event_source, source_event_id, actor
"""
_AUDIT_ARRAYS = """
    CAST(:variant_ids AS text[]), CAST(:types AS text[]), CAST(:d_on_hand AS bigint[]),
    CAST(:d_reserved AS bigint[]), CAST(:on_hand AS bigint[]), CAST(:reserved AS bigint[]),
    CAST(:versions AS bigint[]), CAST(:reasons AS text[]), CAST(:references AS text[]),
    CAST(:sources AS text[]), CAST(:event_ids AS text[]), CAST(:actors AS text[])
"""
_INSERT_AUDIT = f"INSERT INTO audit_log ({_AUDIT_COLUMNS}) SELECT * FROM unnest({_AUDIT_ARRAYS})"
# Only when a restock names its supplier or order time: the hot path keeps the short form.
_INSERT_AUDIT_WITH_DELIVERY = f"""
    INSERT INTO audit_log ({_AUDIT_COLUMNS}, supplier_id, ordered_at)
    SELECT * FROM unnest(
        {_AUDIT_ARRAYS}, CAST(:suppliers AS text[]), CAST(:ordered_at AS timestamptz[])
    )
    """

_INSERT_OUTBOX = text(
    """
    INSERT INTO outbox (topic, key, value, headers)
    SELECT topic, key, value, CAST(headers AS jsonb) FROM unnest(
        CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:values AS bytea[]),
        CAST(:headers AS text[])
    ) WITH ORDINALITY AS t(topic, key, value, headers, position)
    ORDER BY position
    """
)

_NOTIFY_OUTBOX = text(f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')")


async def claim_events(conn: AsyncConnection, refs: Collection[EventRef]) -> set[EventRef]:
    """Record consumed event ids; returns those not seen before (the ones to apply)."""
    if not refs:
        return set()
    result = await conn.execute(
        _CLAIM_EVENTS,
        {"sources": [r.source for r in refs], "ids": [r.id for r in refs]},
    )
    return {EventRef(source, event_id) for source, event_id in result}


async def claim_dead_letters(
    conn: AsyncConnection, poisons: Collection[Poison]
) -> set[tuple[str, int, int, int]]:
    """Record bad records by Kafka position; returns those not dead-lettered before."""
    if not poisons:
        return set()
    result = await conn.execute(
        _CLAIM_DEAD_LETTERS,
        {
            "topics": [p.record.topic for p in poisons],
            "partitions": [p.record.partition for p in poisons],
            "offsets": [p.record.offset for p in poisons],
            "timestamps": [p.record.timestamp for p in poisons],
            "reasons": [p.reason for p in poisons],
        },
    )
    return {tuple(row) for row in result}


@dataclass
class LoadedState:
    """Rows as loaded, to write back only what the ledger changed."""

    orders: dict[str, Order] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    order_rows: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    orders_with_lines: set[str] = field(default_factory=set)
    variant_versions: dict[str, int] = field(default_factory=dict)


async def lock_orders(
    conn: AsyncConnection,
    order_ids: Iterable[str],
    state: LoadedState,
    *,
    create_missing: bool = True,
) -> None:
    """Lock and load orders with their lines, in key order; new ids become PENDING rows."""
    ids = sorted(set(order_ids))
    if not ids:
        return
    statement = _CREATE_AND_LOCK_ORDERS if create_missing else _LOCK_ORDERS
    rows = await conn.execute(statement, {"ids": ids})
    with_lines = []
    for order_id, phase, expires_at, payment, cancelled, reason in rows:
        if phase != OrderPhase.PENDING.value:
            with_lines.append(order_id)  # a PENDING order has no lines until its checkout
        state.orders[order_id] = Order(
            order_id=order_id,
            phase=OrderPhase(phase),
            expires_at=expires_at,
            payment=PaymentOutcome(payment) if payment else None,
            cancelled=cancelled,
            reason=reason,
        )
        state.order_rows[order_id] = (phase, expires_at, payment, cancelled, reason)
    if not with_lines:
        return
    for order_id, variant_id, quantity in await conn.execute(_LOAD_LINES, {"ids": with_lines}):
        state.orders[order_id].lines[variant_id] = quantity
        state.orders_with_lines.add(order_id)


async def lock_variants(
    conn: AsyncConnection, variant_ids: Iterable[str], state: LoadedState
) -> None:
    ids = sorted(set(variant_ids))
    if not ids:
        return
    for row in await conn.execute(_LOCK_VARIANTS, {"ids": ids}):
        variant_id, product_id, on_hand, reserved, version, threshold, point, since = row
        state.variants[variant_id] = Variant(
            variant_id, product_id, on_hand, reserved, version, threshold, point, since
        )
        state.variant_versions[variant_id] = version


async def lock_expired_orders(
    conn: AsyncConnection, now: datetime, limit: int, skip: Collection[str] = ()
) -> list[str]:
    """Expired holds no one else is working on (SKIP LOCKED: sweepers never collide)."""
    result = await conn.execute(
        _LOCK_EXPIRED_ORDERS, {"now": now, "limit": limit, "skip": list(skip)}
    )
    return [order_id for (order_id,) in result]


async def write_ledger(
    conn: AsyncConnection, ledger: StockLedger, state: LoadedState, actor: str | None = None
) -> None:
    """Persist what the ledger changed: orders, new lines, variants, audit rows, in ONE
    statement (each part a data-modifying CTE), so the write-back costs one round trip
    however many tables it touches.

    The parts touch different rows and see the same snapshot, which is all they need:
    every row they update was locked (and every order a new line names was created)
    by an earlier statement of the transaction. A CHECK that refuses any part refuses
    the whole statement, as it refused the transaction before. PostgreSQL runs the
    parts last to first, so when two parts would fail, the audit's error is the one
    reported.

    `actor`: who asked (a token's or a CLI user's name); None: each change's cause
    speaks for itself (`actor_of`)."""
    parts = [*_order_parts(ledger, state), *_variant_parts(ledger, state)]
    if ledger.changes:
        parts.append(_audit_part(ledger, actor))
    if parts:
        await conn.execute(*_one_statement(parts))


#: One part of the write-back: a statement's text and its parameters.
_Part = tuple[str, dict[str, Any]]

# A bind parameter as SQLAlchemy's text() reads one. The parts write casts as
# CAST(x AS t), never x::t, so nothing else in them looks like one.
_PARAMETER = re.compile(r"(?<![:\w]):(\w+)(?!:)")


def _one_statement(parts: Sequence[_Part]) -> tuple[TextClause, dict[str, Any]]:
    """`parts` as the data-modifying CTEs of one statement, each part's parameters
    prefixed with its position so equal names (`ids`, `reasons`) do not collide."""
    parameters: dict[str, Any] = {}
    for n, (_, values) in enumerate(parts):
        parameters.update({f"p{n}_{name}": value for name, value in values.items()})
    return _statement_of(tuple(sql for sql, _ in parts)), parameters


@functools.lru_cache(maxsize=64)
def _statement_of(texts: tuple[str, ...]) -> TextClause:
    """One statement per combination of parts (a few dozen at most), built once."""
    ctes = []
    for n, sql in enumerate(texts):
        prefixed = _PARAMETER.sub(rf":p{n}_\g<1>", sql)
        ctes.append(f"w{n} AS ({prefixed})")
    return text("WITH " + ",\n".join(ctes) + "\nSELECT 1")


def _order_parts(ledger: StockLedger, state: LoadedState) -> list[_Part]:
    changed: list[Order] = []
    for order_id in sorted(ledger.touched_orders):
        order = ledger.orders[order_id]
        row = (
            order.phase.value,
            order.expires_at,
            order.payment.value if order.payment else None,
            order.cancelled,
            order.reason,
        )
        if state.order_rows.get(order_id) != row:
            changed.append(order)
    if not changed:
        return []
    parts: list[_Part] = [
        (
            _UPDATE_ORDERS,
            {
                "ids": [o.order_id for o in changed],
                "phases": [o.phase.value for o in changed],
                "expires": [o.expires_at for o in changed],
                "payments": [o.payment.value if o.payment else None for o in changed],
                "cancelled": [o.cancelled for o in changed],
                "reasons": [o.reason for o in changed],
            },
        )
    ]
    new_lines = [
        (order.order_id, variant_id, quantity)
        for order in changed
        if order.order_id not in state.orders_with_lines
        for variant_id, quantity in order.lines.items()
    ]
    if new_lines:
        parts.append(
            (
                _INSERT_LINES,
                {
                    "order_ids": [line[0] for line in new_lines],
                    "variant_ids": [line[1] for line in new_lines],
                    "quantities": [line[2] for line in new_lines],
                },
            )
        )
    return parts


def _variant_parts(ledger: StockLedger, state: LoadedState) -> list[_Part]:
    created = [ledger.variants[v] for v in sorted(ledger.created_variants)]
    updated = [
        variant
        for variant_id, variant in sorted(ledger.variants.items())
        if variant_id not in ledger.created_variants
        and variant.version != state.variant_versions.get(variant_id)
    ]
    parts: list[_Part] = []
    if created:
        products = {"products": [v.product_id for v in created]}
        parts.append((_INSERT_VARIANTS, {**_variant_arrays(created), **products}))
    if updated:
        parts.append((_UPDATE_VARIANTS, _variant_arrays(updated)))
    return parts


def _variant_arrays(variants: Sequence[Variant]) -> dict[str, list[Any]]:
    """The columns the ledger changes, one array each (what both variant parts write)."""
    return {
        "ids": [v.variant_id for v in variants],
        "on_hand": [v.on_hand for v in variants],
        "reserved": [v.reserved for v in variants],
        "versions": [v.version for v in variants],
        "out_of_stock_since": [v.out_of_stock_since for v in variants],
    }


def _audit_part(ledger: StockLedger, actor: str | None) -> _Part:
    changes = ledger.changes
    sources = [c.cause.source if c.cause else None for c in changes]
    delivery: dict[str, Any] = {}
    if any(c.supplier_id is not None or c.ordered_at is not None for c in changes):
        delivery = {
            "suppliers": [c.supplier_id for c in changes],
            "ordered_at": [c.ordered_at for c in changes],
        }
    return (
        _INSERT_AUDIT_WITH_DELIVERY if delivery else _INSERT_AUDIT,
        {
            **delivery,
            "variant_ids": [c.variant_id for c in changes],
            "types": [c.change_type.value for c in changes],
            "d_on_hand": [c.delta_on_hand for c in changes],
            "d_reserved": [c.delta_reserved for c in changes],
            "on_hand": [c.on_hand for c in changes],
            "reserved": [c.reserved for c in changes],
            "versions": [c.version for c in changes],
            "reasons": [c.reason for c in changes],
            "references": [c.reference for c in changes],
            "sources": sources,
            "event_ids": [c.cause.id if c.cause else None for c in changes],
            "actors": [actor or actor_of(source) for source in sources],
        },
    )


_INSERT_ANOMALIES = text(
    """
    INSERT INTO anomalies (
        variant_id, product_id, rule, observed, expected, score, reference, actor, raised_at
    )
    SELECT * FROM unnest(
        CAST(:variant_ids AS text[]), CAST(:products AS text[]), CAST(:rules AS text[]),
        CAST(:observed AS numeric[]), CAST(:expected AS numeric[]), CAST(:scores AS numeric[]),
        CAST(:references AS text[]), CAST(:actors AS text[]), CAST(:times AS timestamptz[])
    )
    """
)


async def record_anomalies(
    conn: AsyncConnection, anomalies: Sequence[Anomaly], actor: str, at: datetime
) -> None:
    """Keep the anomalies a transaction raises (the outbox forgets published rows)."""
    if not anomalies:
        return
    await conn.execute(
        _INSERT_ANOMALIES,
        {
            "variant_ids": [a.variant_id for a in anomalies],
            "products": [a.product_id for a in anomalies],
            "rules": [a.rule.value for a in anomalies],
            "observed": [a.observed for a in anomalies],
            "expected": [a.expected for a in anomalies],
            "scores": [a.score for a in anomalies],
            "references": [a.reference for a in anomalies],
            "actors": [actor] * len(anomalies),
            "times": [at] * len(anomalies),
        },
    )


async def append_outbox(conn: AsyncConnection, messages: list[OutboxMessage]) -> None:
    """Queue messages for the relay, in order, and wake it when the transaction commits."""
    if not messages:
        return
    await conn.execute(
        _INSERT_OUTBOX,
        {
            "topics": [m.topic for m in messages],
            "keys": [m.key for m in messages],
            "values": [m.value for m in messages],
            "headers": [m.headers_json() for m in messages],
        },
    )
    await conn.execute(_NOTIFY_OUTBOX)
