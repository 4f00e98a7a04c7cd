"""Segment membership: the profiles' ``segments`` arrays, also kept as one
row per (tenant, segment, subject) so that a segment's subjects are read in
order, a page at a time (see migration 0006 for why not a GIN index).

Every write that changes a profile's segments calls :func:`sync_segments`
in its own transaction, with the segments before and after; the table is
never written anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from overture_runtime.db import insert_ignore

from .tables import segment_members

__all__ = ["sync_segments"]


async def sync_segments(conn: AsyncConnection, tenant: str, changes: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> None:
    """Make the membership rows of each subject of *changes* (segments
    before, segments after) match its segments after, on *conn*: one
    statement for what was entered and one for what was left, whatever the
    number of subjects."""
    entered = [dict(tenant=tenant, segment=s, subject_id=subject)
               for subject, (before, after) in changes.items() for s in dict.fromkeys(after) if s not in before]
    left = [dict(b_segment=s, b_subject=subject)
            for subject, (before, after) in changes.items() for s in dict.fromkeys(before) if s not in after]
    if entered:
        await conn.execute(insert_ignore(conn, segment_members, index_elements=["tenant", "segment", "subject_id"]), entered)
    if left:
        t = segment_members
        await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.segment == bindparam("b_segment"))
                                            & (t.c.subject_id == bindparam("b_subject"))), left)
