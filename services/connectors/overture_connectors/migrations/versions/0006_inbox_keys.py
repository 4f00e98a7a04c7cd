"""Inbox keys: the primary key is (tenant, message_id), and the unread index holds the message id,
so each query of a subject's messages has one index holding only its rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNREAD = 'read_time IS NULL AND archive_time IS NULL'


def _keys(primary: list[str], unread: list[str]) -> None:
    # SQLite reflects the primary key without a name; the convention gives it the one PostgreSQL has.
    with op.batch_alter_table('connectors_inbox_messages', schema=None, naming_convention={"pk": "%(table_name)s_pkey"}) as batch_op:
        batch_op.drop_constraint('connectors_inbox_messages_pkey', type_='primary')
        batch_op.create_primary_key('connectors_inbox_messages_pkey', primary)
        batch_op.drop_index('connectors_inbox_messages_unread', postgresql_where=sa.text(_UNREAD), sqlite_where=sa.text(_UNREAD))
        batch_op.create_index('connectors_inbox_messages_unread', unread, unique=False,
                              postgresql_where=sa.text(_UNREAD), sqlite_where=sa.text(_UNREAD))


def upgrade() -> None:
    _keys(['tenant', 'message_id'], ['tenant', 'subject_id', 'message_id'])


def downgrade() -> None:
    _keys(['tenant', 'subject_id', 'message_id'], ['tenant', 'subject_id'])
