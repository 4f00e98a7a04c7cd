"""relay floor: events carry their transaction id, the relay a floor

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:40:00

The relay found the next unpublished events by reading the partial index of
unpublished events from its start. Each event it publishes leaves a dead
entry there until a VACUUM removes it, and with autovacuum off (or behind)
every cycle read all of them: 2,555 buffers, 8.6 ms for a cycle that found
nothing after 150,000 events, and growing with every event.

Now each event records the id of the transaction that inserted it (``txid``,
the 64-bit ``pg_current_xact_id()``, assigned before the row exists), the
index is on (txid, seq), and the relay keeps a floor in
``ingest_relay_state``: every event with a lower txid is published. The
relay reads the index from the floor, and raises it to the oldest running
transaction's id (``pg_snapshot_xmin``) when it has published everything
below that; see ADR 0023. Existing events get txid 0, below any floor the
relay has not yet raised. On SQLite (one writer, no dead index entries)
txid stays 0 and the relay reads in seq order as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # A constant default first (no table rewrite; existing rows read 0), then the transaction id for new rows.
    op.add_column('ingest_events', sa.Column('txid', sa.BigInteger(), nullable=False, server_default=sa.text('0')))
    if postgres:
        op.alter_column('ingest_events', 'txid', server_default=sa.text('(pg_current_xact_id()::text)::bigint'))
    op.add_column('ingest_relay_state', sa.Column('floor', sa.BigInteger(), nullable=False, server_default=sa.text('0')))
    op.drop_index('ingest_events_unpublished', table_name='ingest_events')
    op.create_index('ingest_events_unpublished', 'ingest_events', ['txid', 'seq'], unique=False,
                    postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ingest_events_unpublished', table_name='ingest_events')
    op.create_index('ingest_events_unpublished', 'ingest_events', ['seq'], unique=False,
                    postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))
    with op.batch_alter_table('ingest_relay_state') as batch_op:
        batch_op.drop_column('floor')
    with op.batch_alter_table('ingest_events') as batch_op:
        batch_op.drop_column('txid')
