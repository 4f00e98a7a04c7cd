"""ListEvents: the accepted events of a commit-time window, oldest first, a
page at a time, optionally of some event types or one subject.

A page is one range of the ``ingest_events_window`` index (tenant, commit
time, seq) from the page's cursor, or with event types one range of
``ingest_events_type_window`` (tenant, event type, commit time, seq) per
type, each cut at the page size and merged: the page's rows, and with
several types at most a page per type. A
subject filter is checked on the rows of the window (of its types): an
operator's look-up, not a hot path, and not worth a third index on the
log's inserts. Events committed in one batch share their commit time and
are ordered by their place in the log (``seq``), so the cursor is the last
event's (commit time, seq).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from overture_runtime.db import Database

from .log import StoredEvent, stored_events
from .tables import events

__all__ = ["list_window", "window_query"]


def window_query(
    *, tenant: str, start: dt.datetime, end: dt.datetime, event_types: Sequence[str] = (), subject_id: str = "",
    after: tuple[dt.datetime, int] | None = None, limit: int,
) -> sa.Select[Any]:
    """The rows of one page: *tenant*'s events committed in [*start*, *end*),
    after the cursor *after* (commit time, seq), oldest first.

    With event types, one ordered range of ``ingest_events_type_window`` per
    type, each cut at *limit*, merged; without, one range of
    ``ingest_events_window``."""
    t = events

    def one(event_type: str | None) -> sa.Select[Any]:
        # A row comparison over consecutive columns of the index is one of its
        # range bounds: the page starts at the cursor, inside a batch too.
        lower = (t.c.commit_time >= start) if after is None else (
            (t.c.commit_time >= start) & (sa.tuple_(t.c.commit_time, t.c.seq) > sa.tuple_(sa.literal(after[0], t.c.commit_time.type),
                                                                                             sa.literal(after[1], t.c.seq.type))))
        query = sa.select(t).where((t.c.tenant == tenant) & lower & (t.c.commit_time < end))
        if event_type is not None:
            query = query.where(t.c.event_type == event_type)
        if subject_id:
            query = query.where(t.c.subject_id == subject_id)
        return query

    types = list(dict.fromkeys(event_types))
    if len(types) <= 1:
        return one(types[0] if types else None).order_by(t.c.commit_time, t.c.seq).limit(limit)
    # Each type's range is cut at the page size, so a page reads at most
    # (types x page size) rows, whatever the planner makes of the union.
    ranges = [one(event_type).order_by(t.c.commit_time, t.c.seq).limit(limit).subquery(f"type_{i}") for i, event_type in enumerate(types)]
    merged = sa.union_all(*(sa.select(r) for r in ranges)).subquery("page")
    return sa.select(merged).order_by(merged.c.commit_time, merged.c.seq).limit(limit)


async def list_window(
    db: Database, *, tenant: str, start: dt.datetime, end: dt.datetime, event_types: Sequence[str], subject_id: str,
    after: tuple[dt.datetime, int] | None, limit: int,
) -> list[tuple[StoredEvent, int]]:
    """Up to *limit* events of the window after *after*, each with its seq (the cursor's second part)."""
    query = window_query(tenant=tenant, start=start, end=end, event_types=event_types, subject_id=subject_id, after=after, limit=limit)
    async with db.connect() as conn:
        rows = (await conn.execute(query)).all()
        stored = await stored_events(conn, rows)
    return [(event, int(row.seq)) for event, row in zip(stored, rows, strict=True)]
