"""audit entries recorded by other services

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:53:58.327599

Other services (the orchestrator's journeys and runs) record their changes
through AuditService.RecordAuditEvents. Their record id, unique per tenant,
makes a repeated record append once; both columns are empty on the rules
service's own entries, whose hashes therefore do not change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('rules_audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('record_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('recorded_by', sa.String(length=256), nullable=True))
        batch_op.create_index('rules_audit_events_record', ['tenant', 'record_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('rules_audit_events', schema=None) as batch_op:
        batch_op.drop_index('rules_audit_events_record')
        batch_op.drop_column('recorded_by')
        batch_op.drop_column('record_id')

