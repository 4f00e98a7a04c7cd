"""relay snapshots: the relay records a position, not a mark per event

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 01:30:00

The relay marked every event it published (``published_at``): an UPDATE of
each row, which is not a HOT update (the column is in the unpublished
index's predicate), so each event was written twice, payload and index
entries included, and left a dead row behind. On PostgreSQL the relay now
keeps its position in ``ingest_relay_state`` as snapshots (``lo``, ``hi``
and a cursor; ADR 0024) and marks nothing; ``ingest_relay_ticks`` records
the position once a second, for publish times and for republishing after
Redis lost the stream. Events marked before stay marked; the first position
is the relay's floor, and marked events above it are not published again.
SQLite (``overture dev``) keeps marking events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('ingest_relay_state') as batch_op:
        batch_op.add_column(sa.Column('lo', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('hi', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('cursor_txid', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('cursor_seq', sa.BigInteger(), nullable=True))
    op.create_table('ingest_relay_ticks',
                    sa.Column('name', sa.String(length=64), nullable=False),
                    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('snapshot', sa.Text(), nullable=False),
                    sa.PrimaryKeyConstraint('name', 'at'))


def downgrade() -> None:
    op.drop_table('ingest_relay_ticks')
    with op.batch_alter_table('ingest_relay_state') as batch_op:
        for column in ('cursor_seq', 'cursor_txid', 'hi', 'lo'):
            batch_op.drop_column(column)
