"""CONTRACT.md's invariants, checked from the database (and the published topic).

Written independently of the worker's code: plain SQL over the tables, so a bug in
the store cannot hide itself here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def invariant_violations(engine: AsyncEngine) -> list[str]:
    problems: list[str] = []
    async with engine.connect() as conn:
        variants = {
            row.variant_id: row
            for row in await conn.execute(
                text("SELECT variant_id, on_hand, reserved, version FROM variants")
            )
        }
        held = dict(
            (
                await conn.execute(
                    text(
                        """SELECT l.variant_id, sum(l.quantity) FROM order_lines l
                           JOIN orders o USING (order_id) WHERE o.phase = 'RESERVED'
                           GROUP BY l.variant_id"""
                    )
                )
            ).all()
        )
        audit = (
            await conn.execute(
                text(
                    """SELECT variant_id, change_type, delta_on_hand, delta_reserved, version,
                              on_hand_after, reserved_after, reference
                       FROM audit_log ORDER BY variant_id, version"""
                )
            )
        ).all()
        lines = (
            await conn.execute(
                text(
                    """SELECT o.order_id, o.phase, l.variant_id, l.quantity FROM orders o
                       JOIN order_lines l USING (order_id)"""
                )
            )
        ).all()

    on_hand_from_audit: dict[str, int] = defaultdict(int)
    versions: dict[str, list[int]] = defaultdict(list)
    sold: dict[tuple[str, str], int] = defaultdict(int)
    for row in audit:
        on_hand_from_audit[row.variant_id] += row.delta_on_hand
        versions[row.variant_id].append(row.version)
        if row.change_type == "SALE":
            sold[(row.reference, row.variant_id)] -= row.delta_on_hand
        if row.change_type == "RETURN":
            sold[(row.reference, row.variant_id)] -= row.delta_on_hand

    for variant_id, v in variants.items():
        if not 0 <= v.reserved <= v.on_hand:
            problems.append(f"1: {variant_id} on_hand={v.on_hand} reserved={v.reserved}")
        if v.reserved != held.get(variant_id, 0):
            problems.append(
                f"2: {variant_id} reserved={v.reserved} but RESERVED orders hold "
                f"{held.get(variant_id, 0)}"
            )
        if v.on_hand != on_hand_from_audit.get(variant_id, 0):
            problems.append(
                f"3: {variant_id} on_hand={v.on_hand} but the audit log sums to "
                f"{on_hand_from_audit.get(variant_id, 0)}"
            )
        expected_versions = list(range(1, v.version + 1))
        if versions.get(variant_id, []) != expected_versions:
            problems.append(f"5: {variant_id} audit versions are not 1..{v.version}")

    for order_id, phase, variant_id, quantity in lines:
        net_sold = sold.get((order_id, variant_id), 0)
        expected = quantity if phase == "CONFIRMED" else 0
        if net_sold != expected:
            problems.append(
                f"4: order {order_id} ({phase}) net sold {net_sold} of {variant_id}, "
                f"expected {expected}"
            )
    return problems


def published_change_violations(
    messages: list[Any], final_versions: dict[str, int]
) -> list[str]:
    """Invariant 5 on the topic: every version once, in order per variant.

    A repeat of the same version with the same payload is allowed (the relay is at
    least once); a different payload under one version, or a gap, is not.
    """
    problems: list[str] = []
    seen: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    last: dict[str, int] = {}
    for message in messages:
        data = json.loads(message.value)["data"]
        variant_id, version = data["variant_id"], data["version"]
        previous = seen[variant_id].get(version)
        if previous is not None:
            if previous != data:
                problems.append(f"5: {variant_id} v{version} published with two payloads")
            continue
        if version != last.get(variant_id, 0) + 1:
            problems.append(
                f"5: {variant_id} v{version} published after v{last.get(variant_id, 0)}"
            )
        seen[variant_id][version] = data
        last[variant_id] = version
    for variant_id, version in final_versions.items():
        if last.get(variant_id, 0) != version:
            problems.append(
                f"5: {variant_id} is at v{version} but v{last.get(variant_id, 0)} was published"
            )
    return problems
