"""The in-app inbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('connectors_inbox_messages',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('subject_id', sa.String(length=256), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=256), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('category', sa.Integer(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('archive_time', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('tenant', 'subject_id', 'message_id'),
    sa.UniqueConstraint('tenant', 'idempotency_key', name='connectors_inbox_messages_key')
    )
    with op.batch_alter_table('connectors_inbox_messages', schema=None) as batch_op:
        batch_op.create_index('connectors_inbox_messages_listed', ['tenant', 'subject_id', 'message_id'], unique=False,
                              postgresql_where=sa.text('archive_time IS NULL'), sqlite_where=sa.text('archive_time IS NULL'))
        batch_op.create_index('connectors_inbox_messages_unread', ['tenant', 'subject_id'], unique=False,
                              postgresql_where=sa.text('read_time IS NULL AND archive_time IS NULL'),
                              sqlite_where=sa.text('read_time IS NULL AND archive_time IS NULL'))


def downgrade() -> None:
    op.drop_table('connectors_inbox_messages')
