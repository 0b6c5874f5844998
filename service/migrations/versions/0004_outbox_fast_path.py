"""Outbox fast path: rows settled by DELETE, stock.reservation rows held for the sender.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

- `sweep_after`: set on `stock.reservation` rows only. The relay leaves a row alone
  until then: the worker that committed it publishes it itself right after the commit
  (the fast path) and deletes it once Kafka acknowledged it; the relay sweeps only what
  the fast path did not settle. A row the fast path does not send (one queued behind an
  unsettled row of the same order) carries the hold of the row before it, so the relay
  never sends it first.
- `outbox_reservation_keys`: the unsettled reservation rows of an order, which the unit
  of work looks up (its order locked) to decide whether a new row may take the fast path.

Sent rows are deleted (by the relay and by the fast path) rather than marked with
`published_at`: an UPDATE of a column in a partial index's predicate is never a HOT
update. `published_at` stays for rows Kafka refused for good (parked, with their
`publish_error`) and for rows an older release marked; `published_at IS NULL` still
means "waiting to be sent".
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


UPGRADE = [
    "ALTER TABLE outbox ADD COLUMN sweep_after timestamptz",
    """
    CREATE INDEX outbox_reservation_keys ON outbox (key)
    WHERE sweep_after IS NOT NULL AND published_at IS NULL
    """,
]

DOWNGRADE = [
    "DROP INDEX outbox_reservation_keys",
    "ALTER TABLE outbox DROP COLUMN sweep_after",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
