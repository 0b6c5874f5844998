"""Stock counts and their lines in PostgreSQL, inside the caller's transaction.

Lock order: a count's row before any variant (the unit of work locks those), so a
count's writers queue on the count and then take its variants in key order, like
every other writer. No one locks a count while holding a variant.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.counts import CountLine, CountStatus, StockCount

_COUNT_COLUMNS = """
    count_id, status, blind, reason, product_id, opened_by, opened_at,
    closed_by, closed_at, approved_by
"""

_LOAD_COUNT = text(f"SELECT {_COUNT_COLUMNS} FROM stock_counts WHERE count_id = :id")
_LOCK_COUNT = text(f"SELECT {_COUNT_COLUMNS} FROM stock_counts WHERE count_id = :id FOR UPDATE")

_LOAD_LINES = text(
    """
    SELECT variant_id, snapshot_on_hand, snapshot_version, counted, counted_at, counted_by,
           expected, tolerance_percent, applied_version
    FROM stock_count_lines WHERE count_id = :id
    ORDER BY variant_id
    """
)

_INSERT_COUNT = text(
    """
    INSERT INTO stock_counts (count_id, status, blind, reason, product_id, opened_by, opened_at)
    VALUES (:count_id, :status, :blind, :reason, :product_id, :opened_by, :opened_at)
    """
)

_INSERT_LINES = text(
    """
    INSERT INTO stock_count_lines (count_id, variant_id, snapshot_on_hand, snapshot_version)
    SELECT CAST(:count_id AS text), * FROM unnest(
        CAST(:variant_ids AS text[]), CAST(:on_hand AS bigint[]), CAST(:versions AS bigint[])
    )
    """
)

_UPDATE_LINES = text(
    """
    UPDATE stock_count_lines AS l SET
        counted = u.counted, counted_at = u.counted_at, counted_by = u.counted_by,
        expected = u.expected, tolerance_percent = u.tolerance_percent,
        applied_version = u.applied_version
    FROM unnest(
        CAST(:variant_ids AS text[]), CAST(:counted AS bigint[]),
        CAST(:counted_at AS timestamptz[]), CAST(:counted_by AS text[]),
        CAST(:expected AS bigint[]), CAST(:tolerances AS numeric[]),
        CAST(:applied AS bigint[])
    ) AS u(variant_id, counted, counted_at, counted_by, expected, tolerance_percent,
           applied_version)
    WHERE l.count_id = :count_id AND l.variant_id = u.variant_id
    """
)

_UPDATE_COUNT = text(
    """
    UPDATE stock_counts SET
        status = :status, closed_by = :closed_by, closed_at = :closed_at,
        approved_by = :approved_by
    WHERE count_id = :count_id
    """
)

# Which of these variants an OPEN count holds (the index on stock_count_lines
# (variant_id) finds them).
_OPEN_COUNTS_OF = text(
    """
    SELECT l.variant_id, l.count_id
    FROM stock_count_lines AS l JOIN stock_counts AS c ON c.count_id = l.count_id
    WHERE l.variant_id = ANY(CAST(:ids AS text[])) AND c.status = 'OPEN'
    """
)

_TOLERANCES = text(
    """
    SELECT variant_id, count_tolerance_percent FROM variants
    WHERE variant_id = ANY(CAST(:ids AS text[]))
    """
)

_VARIANTS_OF_PRODUCT = text(
    "SELECT variant_id FROM variants WHERE product_id = :product_id ORDER BY variant_id"
)


async def load_count(
    conn: AsyncConnection, count_id: str, *, lock: bool = False
) -> StockCount | None:
    """The count with its lines; `lock`: FOR UPDATE on its row (its writers queue)."""
    row = (await conn.execute(_LOCK_COUNT if lock else _LOAD_COUNT, {"id": count_id})).first()
    if row is None:
        return None
    count = StockCount(
        count_id=row.count_id,
        status=CountStatus(row.status),
        blind=row.blind,
        reason=row.reason,
        product_id=row.product_id,
        opened_by=row.opened_by,
        opened_at=row.opened_at,
        closed_by=row.closed_by,
        closed_at=row.closed_at,
        approved_by=row.approved_by,
    )
    for line in await conn.execute(_LOAD_LINES, {"id": count_id}):
        count.lines[line.variant_id] = CountLine(
            variant_id=line.variant_id,
            snapshot_on_hand=line.snapshot_on_hand,
            snapshot_version=line.snapshot_version,
            counted=line.counted,
            counted_at=line.counted_at,
            counted_by=line.counted_by,
            expected=line.expected,
            tolerance_percent=line.tolerance_percent,
            applied_version=line.applied_version,
        )
    return count


async def insert_count(conn: AsyncConnection, count: StockCount) -> None:
    await conn.execute(
        _INSERT_COUNT,
        {
            "count_id": count.count_id,
            "status": count.status.value,
            "blind": count.blind,
            "reason": count.reason,
            "product_id": count.product_id,
            "opened_by": count.opened_by,
            "opened_at": count.opened_at,
        },
    )
    lines = list(count.lines.values())
    await conn.execute(
        _INSERT_LINES,
        {
            "count_id": count.count_id,
            "variant_ids": [line.variant_id for line in lines],
            "on_hand": [line.snapshot_on_hand for line in lines],
            "versions": [line.snapshot_version for line in lines],
        },
    )


async def write_lines(conn: AsyncConnection, count_id: str, lines: Iterable[CountLine]) -> None:
    """What recording or applying changed on these lines."""
    lines = list(lines)
    if not lines:
        return
    await conn.execute(
        _UPDATE_LINES,
        {
            "count_id": count_id,
            "variant_ids": [line.variant_id for line in lines],
            "counted": [line.counted for line in lines],
            "counted_at": [line.counted_at for line in lines],
            "counted_by": [line.counted_by for line in lines],
            "expected": [line.expected for line in lines],
            "tolerances": [line.tolerance_percent for line in lines],
            "applied": [line.applied_version for line in lines],
        },
    )


async def write_status(conn: AsyncConnection, count: StockCount) -> None:
    await conn.execute(
        _UPDATE_COUNT,
        {
            "count_id": count.count_id,
            "status": count.status.value,
            "closed_by": count.closed_by,
            "closed_at": count.closed_at,
            "approved_by": count.approved_by,
        },
    )


async def open_counts_of(conn: AsyncConnection, variant_ids: Collection[str]) -> dict[str, str]:
    """Variant -> the open count it is in, for those of `variant_ids` that are."""
    rows = await conn.execute(_OPEN_COUNTS_OF, {"ids": list(variant_ids)})
    return {variant_id: count_id for variant_id, count_id in rows}


async def tolerances(
    conn: AsyncConnection, variant_ids: Collection[str]
) -> dict[str, Decimal | None]:
    """Each variant's own count tolerance (None: the configured default)."""
    rows = await conn.execute(_TOLERANCES, {"ids": list(variant_ids)})
    return {variant_id: tolerance for variant_id, tolerance in rows}


async def variants_of_product(conn: AsyncConnection, product_id: str) -> list[str]:
    return [v for (v,) in await conn.execute(_VARIANTS_OF_PRODUCT, {"product_id": product_id})]
