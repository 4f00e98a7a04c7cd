"""events window indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 11:00:00

ListEvents reads a tenant's events of a commit-time window, oldest first
(log order within a commit), for journey backtests and replays, often of a
few event types. Two indexes: (tenant, commit_time, seq) for every type,
(tenant, event_type, commit_time, seq) for one type (several types are
merged, range by range). A window is then one range of either, in the
order the listing returns, so a page reads its own rows and no others: a
rare trigger type over a month does not read the month's log. A subject
filter is checked on the window's rows; it is an operator's look-up, and a
third index would cost every insert on ingest's hot path for it. The
index on commit_time alone goes: PostgreSQL preferred it for a large
tenant's window (then sorting and skipping the other tenants' rows), and
the retention purge it served now deletes tenant by tenant through
(tenant, commit_time, seq). So an insert pays one index more than before. On a
large log, build them beforehand with ``CREATE INDEX CONCURRENTLY`` under
these names (this migration then finds them and does nothing), so that
inserts are not held up while they are built.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ingest_events_window', 'ingest_events', ['tenant', 'commit_time', 'seq'], unique=False, if_not_exists=True)
    op.create_index('ingest_events_type_window', 'ingest_events', ['tenant', 'event_type', 'commit_time', 'seq'], unique=False,
                    if_not_exists=True)
    op.drop_index('ingest_events_commit_time', table_name='ingest_events')


def downgrade() -> None:
    op.create_index('ingest_events_commit_time', 'ingest_events', ['commit_time'], unique=False)
    op.drop_index('ingest_events_type_window', table_name='ingest_events')
    op.drop_index('ingest_events_window', table_name='ingest_events')
