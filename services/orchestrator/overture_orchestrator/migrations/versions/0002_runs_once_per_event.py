"""one run per trigger event and journey, whatever the version

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:00:00

The old key included the journey version, so an event delivered again after
the journey was republished (for example republished from the log after
Redis lost the stream) started a second run and sent a second message.
Runs that the old key let through keep their history: the later duplicates'
trigger_event_id gains a ``#v<version>`` suffix, so they no longer claim the
event (the earliest run of each event keeps it).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    runs = sa.table(
        'orchestrator_runs', sa.column('tenant'), sa.column('run_id'), sa.column('journey'), sa.column('journey_version'),
        sa.column('subject_id'), sa.column('trigger_event_id'), sa.column('create_time'),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(runs.c.tenant, runs.c.run_id, runs.c.journey, runs.c.journey_version, runs.c.subject_id, runs.c.trigger_event_id)
        .order_by(runs.c.tenant, runs.c.journey, runs.c.subject_id, runs.c.trigger_event_id, runs.c.create_time, runs.c.run_id)
    ).all()
    seen: set[tuple[str, str, str, str]] = set()
    for row in rows:
        key = (row.tenant, row.journey, row.subject_id, row.trigger_event_id)
        if key in seen:
            conn.execute(
                runs.update().where((runs.c.tenant == row.tenant) & (runs.c.run_id == row.run_id))
                .values(trigger_event_id=f"{row.trigger_event_id}#v{row.journey_version}")
            )
        seen.add(key)
    with op.batch_alter_table('orchestrator_runs') as batch:
        batch.drop_constraint('orchestrator_runs_once', type_='unique')
        batch.create_unique_constraint(
            'orchestrator_runs_once_per_event', ['tenant', 'journey', 'subject_id', 'trigger_event_id']
        )


def downgrade() -> None:
    with op.batch_alter_table('orchestrator_runs') as batch:
        batch.drop_constraint('orchestrator_runs_once_per_event', type_='unique')
        batch.create_unique_constraint(
            'orchestrator_runs_once', ['tenant', 'journey', 'journey_version', 'subject_id', 'trigger_event_id']
        )
