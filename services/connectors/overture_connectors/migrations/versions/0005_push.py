"""Web push: subscriptions per subject, and per-device send claims

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('connectors_push_subscriptions',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('subject_id', sa.String(length=256), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=False),
    sa.Column('p256dh', sa.String(length=128), nullable=False),
    sa.Column('auth', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=200), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expire_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_send_time', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('tenant', 'subscription_id')
    )
    with op.batch_alter_table('connectors_push_subscriptions', schema=None) as batch_op:
        batch_op.create_index('connectors_push_subscriptions_subject', ['tenant', 'subject_id', 'subscription_id'], unique=False)
    op.create_table('connectors_push_sends',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('idempotency_key', sa.String(length=256), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant', 'idempotency_key', 'subscription_id')
    )


def downgrade() -> None:
    op.drop_table('connectors_push_sends')
    op.drop_table('connectors_push_subscriptions')
