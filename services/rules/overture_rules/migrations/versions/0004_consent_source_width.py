"""consent source holds event:<event id>

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:00:00

A consent set by an event records ``event:<event id>`` as its source, and
event ids may be 256 characters: the column was 256 wide, so such a consent
failed to store. It is now ``limits.CONSENT_SOURCE_COLUMN`` (262) wide.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('rules_consents') as batch:
        batch.alter_column('source', type_=sa.String(length=262), existing_type=sa.String(length=256), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('rules_consents') as batch:
        batch.alter_column('source', type_=sa.String(length=256), existing_type=sa.String(length=262), existing_nullable=False)
