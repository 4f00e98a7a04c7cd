"""segment members

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 10:00:00

ListProfiles pages through a segment's subjects by subject id. The segments
stay in each profile's JSON array (what decisions read), and are also kept
as rows of ``rules_segment_members`` (tenant, segment, subject_id), written
in the same transactions: a page is then one range of its primary key, the
page's rows and no others, in subject order.

A GIN index on the JSONB array was the alternative. It finds a segment's
members, but in no order: every page would read all of the segment's rows
and sort them to return a hundred (a million-member segment listed in pages
of 1,000 reads its members a thousand times over), and it does not exist on
SQLite (``overture dev``). The table costs a row per membership and a
statement per write that changes segments, which are rare next to reads.

Existing memberships are copied from the arrays; a segment name longer than
63 characters (events could set one before they were refused) is left out.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'rules_segment_members',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('segment', sa.String(length=63), nullable=False),
        sa.Column('subject_id', sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint('tenant', 'segment', 'subject_id'),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            INSERT INTO rules_segment_members (tenant, segment, subject_id)
            SELECT DISTINCT p.tenant, s.value, p.subject_id
            FROM rules_profiles p CROSS JOIN LATERAL jsonb_array_elements_text(p.segments) AS s(value)
            WHERE NOT p.erased AND length(s.value) BETWEEN 1 AND 63
        """)
    else:
        op.execute("""
            INSERT OR IGNORE INTO rules_segment_members (tenant, segment, subject_id)
            SELECT p.tenant, s.value, p.subject_id FROM rules_profiles p, json_each(p.segments) s
            WHERE NOT p.erased AND length(s.value) BETWEEN 1 AND 63
        """)


def downgrade() -> None:
    op.drop_table('rules_segment_members')
