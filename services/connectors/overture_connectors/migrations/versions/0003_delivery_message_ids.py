"""Email deliveries found by Message-ID (bounces and complaints)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.create_index('connectors_deliveries_provider_message_id', ['provider_message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.drop_index('connectors_deliveries_provider_message_id')
