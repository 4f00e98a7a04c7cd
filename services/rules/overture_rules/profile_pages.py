"""ListProfiles: a tenant's profiles, or a segment's, by subject id, a page
at a time; erased profiles are left out.

A segment's page is one range of the membership table's primary key
(:mod:`.segments`) joined to the profiles by theirs; every profile's page
is one range of the profiles' primary key. Either reads the page's rows
(and the erased ones among them, which erasure makes rare and takes out of
every segment), then their consents by primary key.
"""

from __future__ import annotations

import sqlalchemy as sa

from overture.rules.v1 import profile_pb2
from overture_runtime.db import Database

from .profiles import ProfileStore
from .tables import profiles, segment_members

__all__ = ["list_profiles", "page_query"]


def page_query(*, tenant: str, segment: str, after: str, limit: int) -> sa.Select[tuple[str]]:
    """The subject ids of a page: *tenant*'s (in *segment*, when given),
    after *after*, by subject id, at most *limit*."""
    p, m = profiles, segment_members
    if segment:
        return (sa.select(m.c.subject_id)
                .join(p, (p.c.tenant == m.c.tenant) & (p.c.subject_id == m.c.subject_id))
                # The bound on both sides, so that a merge join starts both at the page.
                .where((m.c.tenant == tenant) & (m.c.segment == segment) & (m.c.subject_id > after) & (p.c.subject_id > after)
                       & ~p.c.erased)
                .order_by(m.c.subject_id).limit(limit))
    return (sa.select(p.c.subject_id).where((p.c.tenant == tenant) & (p.c.subject_id > after) & ~p.c.erased)
            .order_by(p.c.subject_id).limit(limit))


async def list_profiles(db: Database, *, tenant: str, segment: str, after: str, limit: int) -> list[profile_pb2.Profile]:
    """Up to *limit* profiles of *tenant* (in *segment*, when given) whose
    subject id sorts after *after*, by subject id."""
    async with db.connect() as conn:
        subjects = [row.subject_id for row in (await conn.execute(page_query(tenant=tenant, segment=segment, after=after, limit=limit))).all()]
        found = await ProfileStore.load_protos(conn, tenant, subjects) if subjects else {}
    return [found[s] for s in subjects if s in found]
