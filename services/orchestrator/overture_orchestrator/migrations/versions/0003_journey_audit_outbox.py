"""journey audit outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:54:25.726855

Journey and run changes write their audit record into this table in the
same transaction as the change; a background loop forwards each record to
the rules service's audit log and deletes it once the log holds it, so a
crash between the change and the audit write loses no record (ADR 0008).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('orchestrator_audit_outbox',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('target', sa.String(length=512), nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('tenant', 'record_id')
    )
    with op.batch_alter_table('orchestrator_audit_outbox', schema=None) as batch_op:
        batch_op.create_index('orchestrator_audit_outbox_pending', ['record_id'], unique=False)
    # A retry deletes the run's dead-letter entry by its ref.
    with op.batch_alter_table('orchestrator_dead_letters', schema=None) as batch_op:
        batch_op.create_index('orchestrator_dead_letters_ref', ['tenant', 'kind', 'ref'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('orchestrator_dead_letters', schema=None) as batch_op:
        batch_op.drop_index('orchestrator_dead_letters_ref')
    with op.batch_alter_table('orchestrator_audit_outbox', schema=None) as batch_op:
        batch_op.drop_index('orchestrator_audit_outbox_pending')

    op.drop_table('orchestrator_audit_outbox')
