"""journey drafts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:00:00

One working copy per journey (SaveJourneyDraft / GetJourneyDraft), with the
problems and warnings found when it was saved; publishing its content
discards it. A journey's state may now also be ``archived`` (a value of the
existing column, no schema change).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('orchestrator_journey_drafts',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=63), nullable=False),
        sa.Column('spec', sa.Text(), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('problems', _JSON, nullable=False),
        sa.Column('warnings', _JSON, nullable=False),
        sa.Column('author', sa.String(length=256), nullable=False),
        sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'name'))


def downgrade() -> None:
    op.drop_table('orchestrator_journey_drafts')
