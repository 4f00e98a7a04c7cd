"""runs become small rows with tokens, immutable inputs and appended step attempts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:40:00

Every step used to rewrite the whole run row, trigger payload included, and
rewrite its step's row. Now the trigger event and an Enqueue's spec are kept
once in orchestrator_run_inputs; where a live run is (and when it is due) is
its token in orchestrator_tokens, which workers claim with SKIP LOCKED; and
each attempt of a step is appended to orchestrator_step_attempts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('orchestrator_run_inputs',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('trigger_event', sa.LargeBinary(), nullable=False),
        sa.Column('inline_spec', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'run_id'))
    op.create_table('orchestrator_tokens',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('token', sa.SmallInteger(), nullable=False),
        sa.Column('node', sa.String(length=63), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('due_time', _TS, nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('evaluations', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'run_id', 'token'))
    op.create_index('orchestrator_tokens_due', 'orchestrator_tokens', ['due_time'])
    op.create_table('orchestrator_step_attempts',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('attempt_id', sa.String(length=64), nullable=False),
        sa.Column('step_id', sa.String(length=63), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('decision_id', sa.String(length=64), nullable=False),
        sa.Column('delivery_id', sa.String(length=64), nullable=False),
        sa.Column('outcome', sa.Text(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('start_time', _TS, nullable=False),
        sa.Column('end_time', _TS, nullable=True),
        sa.Column('wake_time', _TS, nullable=True),
        sa.PrimaryKeyConstraint('tenant', 'run_id', 'attempt_id'))

    conn = op.get_bind()
    runs = sa.table('orchestrator_runs', *(sa.column(c) for c in (
        'tenant', 'run_id', 'trigger_event', 'inline_spec', 'state', 'current_step', 'wake_time', 'update_time')))
    steps = sa.table('orchestrator_step_runs', *(sa.column(c) for c in (
        'tenant', 'run_id', 'step_id', 'position', 'state', 'attempts', 'evaluations', 'decision_id', 'delivery_id', 'outcome',
        'error', 'start_time', 'end_time', 'wake_time')))
    inputs = sa.table('orchestrator_run_inputs', *(sa.column(c) for c in ('tenant', 'run_id', 'trigger_event', 'inline_spec')))
    tokens = sa.table('orchestrator_tokens', *(sa.column(c) for c in (
        'tenant', 'run_id', 'token', 'node', 'state', 'due_time', 'attempts', 'evaluations', 'lease_owner')))
    attempts = sa.table('orchestrator_step_attempts', *(sa.column(c) for c in (
        'tenant', 'run_id', 'attempt_id', 'step_id', 'state', 'decision_id', 'delivery_id', 'outcome', 'error', 'start_time',
        'end_time', 'wake_time')))
    conn.execute(inputs.insert().from_select(['tenant', 'run_id', 'trigger_event', 'inline_spec'],
                                             sa.select(runs.c.tenant, runs.c.run_id, runs.c.trigger_event, runs.c.inline_spec)))
    step_of = {(r.tenant, r.run_id, r.step_id): r for r in conn.execute(sa.select(steps)).all()}
    for run in conn.execute(sa.select(runs).where(runs.c.state.in_(('running', 'waiting')))).all():
        step = step_of.get((run.tenant, run.run_id, run.current_step))
        conn.execute(tokens.insert().values(
            tenant=run.tenant, run_id=run.run_id, token=0, node=run.current_step,
            state='waiting' if step is not None and step.state == 'waiting' else 'ready', due_time=run.wake_time or run.update_time,
            attempts=step.attempts if step is not None else 0, evaluations=step.evaluations if step is not None else 0, lease_owner=None))
    for step in step_of.values():
        conn.execute(attempts.insert().values(
            tenant=step.tenant, run_id=step.run_id, attempt_id=f"0000-{step.position:04d}", step_id=step.step_id,
            state={'running': 'retry'}.get(step.state, step.state), decision_id=step.decision_id, delivery_id=step.delivery_id,
            outcome=step.outcome, error=step.error, start_time=step.start_time, end_time=step.end_time, wake_time=step.wake_time))
    op.drop_table('orchestrator_step_runs')
    op.drop_index('orchestrator_runs_due', table_name='orchestrator_runs')
    op.create_index('orchestrator_runs_journey_state', 'orchestrator_runs', ['tenant', 'journey', 'state', 'run_id'])
    with op.batch_alter_table('orchestrator_runs') as batch:
        for column in ('trigger_event', 'inline_spec', 'wake_time', 'lease_owner', 'lease_until'):
            batch.drop_column(column)


def downgrade() -> None:
    raise NotImplementedError("runs cannot be folded back into one row per run; restore from a backup taken before 0004")
