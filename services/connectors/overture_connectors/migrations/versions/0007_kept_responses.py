"""Deliveries keep the endpoint's answer when the message asks (webhook keep_response)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.drop_column('response')
