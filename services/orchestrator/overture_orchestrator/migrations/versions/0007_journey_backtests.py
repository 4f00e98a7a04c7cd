"""journey backtests

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 12:00:00

StartJourneyBacktest's long-running operations: queued, claimed by one
replica under a lease, their progress and, when done, the candidate's and
the active version's reports (ADR 0021). A partial index holds only the
open ones, which is what the runners claim.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('orchestrator_backtests',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('backtest_id', sa.String(length=64), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('candidate_spec', sa.Text(), nullable=True),
        sa.Column('candidate_version', sa.BigInteger(), nullable=False),
        sa.Column('baseline_version', sa.BigInteger(), nullable=True),
        sa.Column('start_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('end_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('events_scanned', sa.BigInteger(), nullable=False),
        sa.Column('events_total', sa.BigInteger(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('candidate_report', sa.LargeBinary(), nullable=True),
        sa.Column('baseline_report', sa.LargeBinary(), nullable=True),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finish_time', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'backtest_id'))
    op.create_index('orchestrator_backtests_open', 'orchestrator_backtests', ['create_time'], unique=False,
                    postgresql_where=sa.text("state IN ('queued', 'running')"), sqlite_where=sa.text("state IN ('queued', 'running')"))


def downgrade() -> None:
    op.drop_index('orchestrator_backtests_open', table_name='orchestrator_backtests')
    op.drop_table('orchestrator_backtests')
