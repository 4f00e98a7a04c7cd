"""journey features: run flags, wait and loop state, approvals, counters, inactivity and schedule timers

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 01:00:00

Attempts keep the edge their step was left by and what it read and
produced (masked). Runs keep whether they converted (and the goal), the split branches they
took, whether they are in a holdout, how many actions they took, and why
they were cancelled. Tokens keep a wait's deadline and when they reached
their node. What later steps read (kept responses, matched events, loop
visits) is in orchestrator_run_context; tokens waiting for events or
profile changes are indexed in orchestrator_waits; approvals have their
table; journeys' counters are orchestrator_stats; inactivity and schedule
triggers keep their timers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_LIVE = "state IN ('running', 'waiting')"


def upgrade() -> None:
    op.add_column('orchestrator_runs', sa.Column('converted', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('orchestrator_runs', sa.Column('goal', sa.String(length=128), nullable=False, server_default=''))
    op.add_column('orchestrator_runs', sa.Column('arms', _JSON, nullable=True))
    op.add_column('orchestrator_runs', sa.Column('holdout', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('orchestrator_runs', sa.Column('actions', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('orchestrator_runs', sa.Column('cancel_reason', sa.Text(), nullable=False, server_default=''))
    op.create_index('orchestrator_runs_live_subject', 'orchestrator_runs', ['tenant', 'subject_id'],
                    postgresql_where=sa.text(_LIVE), sqlite_where=sa.text(_LIVE))
    op.add_column('orchestrator_step_attempts', sa.Column('edge', sa.String(length=128), nullable=False, server_default=''))
    op.add_column('orchestrator_step_attempts', sa.Column('detail', _JSON, nullable=True))
    op.add_column('orchestrator_tokens', sa.Column('deadline', _TS, nullable=True))
    op.add_column('orchestrator_tokens', sa.Column('node_since', _TS, nullable=True))
    op.create_table('orchestrator_run_context',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=160), nullable=False),
        sa.Column('value', _JSON, nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'run_id', 'key'))
    op.create_table('orchestrator_waits',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('token', sa.SmallInteger(), nullable=False),
        sa.Column('subject_id', sa.String(length=256), nullable=False),
        sa.Column('event_type', sa.String(length=128), nullable=False),
        sa.Column('step_id', sa.String(length=63), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('journey_version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'run_id', 'token'))
    op.create_index('orchestrator_waits_event', 'orchestrator_waits', ['tenant', 'event_type', 'subject_id'])
    op.create_table('orchestrator_approvals',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('step_id', sa.String(length=63), nullable=False),
        sa.Column('token', sa.SmallInteger(), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('journey_version', sa.BigInteger(), nullable=False),
        sa.Column('subject_id', sa.String(length=256), nullable=False),
        sa.Column('approver_role', sa.String(length=128), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('request_time', _TS, nullable=False),
        sa.Column('expire_time', _TS, nullable=False),
        sa.Column('decision', sa.String(length=16), nullable=False),
        sa.Column('decided_by', sa.String(length=256), nullable=False, server_default=''),
        sa.Column('reason', sa.Text(), nullable=False, server_default=''),
        sa.Column('decide_time', _TS, nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'run_id', 'step_id'))
    op.create_index('orchestrator_approvals_pending', 'orchestrator_approvals', ['tenant', 'request_time', 'run_id'],
                    postgresql_where=sa.text("decision = ''"), sqlite_where=sa.text("decision = ''"))
    op.create_table('orchestrator_stats',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('step_id', sa.String(length=63), nullable=False),
        sa.Column('metric', sa.String(length=160), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'journey', 'version', 'step_id', 'metric'))
    op.create_table('orchestrator_inactivity',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('subject_id', sa.String(length=256), nullable=False),
        sa.Column('due_time', _TS, nullable=False),
        sa.Column('fire_time', _TS, nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'journey', 'subject_id'))
    op.create_index('orchestrator_inactivity_due', 'orchestrator_inactivity', ['due_time'])
    op.create_table('orchestrator_schedules',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('journey', sa.String(length=63), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('due_time', _TS, nullable=False),
        sa.Column('fire_time', _TS, nullable=True),
        sa.Column('cursor', sa.String(length=256), nullable=False, server_default=''),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'journey'))
    op.create_index('orchestrator_schedules_due', 'orchestrator_schedules', ['due_time'])


def downgrade() -> None:
    for index, table in (('orchestrator_schedules_due', 'orchestrator_schedules'), ('orchestrator_inactivity_due', 'orchestrator_inactivity'),
                         ('orchestrator_approvals_pending', 'orchestrator_approvals'), ('orchestrator_waits_event', 'orchestrator_waits')):
        op.drop_index(index, table_name=table)
    for table in ('orchestrator_schedules', 'orchestrator_inactivity', 'orchestrator_stats', 'orchestrator_approvals',
                  'orchestrator_waits', 'orchestrator_run_context'):
        op.drop_table(table)
    op.drop_column('orchestrator_tokens', 'node_since')
    op.drop_column('orchestrator_step_attempts', 'detail')
    op.drop_column('orchestrator_step_attempts', 'edge')
    op.drop_column('orchestrator_tokens', 'deadline')
    op.drop_index('orchestrator_runs_live_subject', table_name='orchestrator_runs')
    for column in ('cancel_reason', 'actions', 'holdout', 'arms', 'goal', 'converted'):
        op.drop_column('orchestrator_runs', column)
