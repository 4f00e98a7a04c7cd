"""profile tags

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:00:00

Profiles gain ``tags``: free-form labels (``vip``, ``beta-tester``) that
UpdateProfile and journeys' update-profile steps add and remove. A JSON
array like ``segments``; existing profiles start with none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table('rules_profiles') as batch:
        batch.add_column(sa.Column('tags', json_type, nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table('rules_profiles') as batch:
        batch.drop_column('tags')
