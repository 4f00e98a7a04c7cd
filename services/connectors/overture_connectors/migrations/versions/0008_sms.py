"""SMS: deliveries record their segments (providers bill per segment); a status callback finds its delivery
by the provider's message id within its tenant, so that index holds the tenant too

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('segments', sa.Integer(), server_default='0', nullable=False))
        batch_op.drop_index('connectors_deliveries_provider_message_id')
        batch_op.create_index('connectors_deliveries_provider_message_id', ['provider_message_id', 'tenant'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.drop_index('connectors_deliveries_provider_message_id')
        batch_op.create_index('connectors_deliveries_provider_message_id', ['provider_message_id'], unique=False)
        batch_op.drop_column('segments')
