"""The sweeper: in-doubt deliveries are asked about again on a schedule, and claims left SENDING are found by age

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_check_time', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('checks', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('connectors_deliveries_recheck', ['next_check_time'], unique=False,
                              postgresql_where=sa.text("next_check_time IS NOT NULL"), sqlite_where=sa.text("next_check_time IS NOT NULL"))
        batch_op.create_index('connectors_deliveries_claimed', ['update_time'], unique=False,
                              postgresql_where=sa.text("status = 'sending'"), sqlite_where=sa.text("status = 'sending'"))


def downgrade() -> None:
    with op.batch_alter_table('connectors_deliveries', schema=None) as batch_op:
        batch_op.drop_index('connectors_deliveries_claimed', postgresql_where=sa.text("status = 'sending'"),
                            sqlite_where=sa.text("status = 'sending'"))
        batch_op.drop_index('connectors_deliveries_recheck', postgresql_where=sa.text("next_check_time IS NOT NULL"),
                            sqlite_where=sa.text("next_check_time IS NOT NULL"))
        batch_op.drop_column('checks')
        batch_op.drop_column('next_check_time')
