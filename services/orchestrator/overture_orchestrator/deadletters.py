"""The dead-letter queue, its one owner: what is put in, listed and taken out.

Two kinds of entry:

- **run**: a run whose step failed for good. Re-driving it sends it back to
  the failed step (``RunStore.retry``), which removes its entry.
- **event**: a poison stream entry, one that failed to be handled after the
  consumer's N deliveries (or that could not be read at all). It is acked
  so that it never blocks its partition; re-driving it hands the stored
  event to the starter again, once whatever made it fail is fixed, and
  removes its entry. The runs' once-key makes a re-drive start each run at
  most once, however often it is repeated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database

from .tables import dead_letters

__all__ = ["DeadLetters", "PoisonEntry"]

RUN, EVENT = "run", "event"


@dataclass(frozen=True)
class PoisonEntry:
    """A stream entry that could not be handled."""

    tenant: str
    entry_id: str
    stream_entry: str
    """The stream message id it had."""
    event: event_pb2.Event | None
    """The event, when its bytes could be read."""
    attempts: int
    last_error: str
    create_time: dt.datetime


class DeadLetters:
    """Dead-lettered runs and poison stream entries of all tenants."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids

    async def add_runs(self, conn: AsyncConnection, failed: Sequence[tuple[str, str, bytes, int, str]]) -> None:
        """Enter failed runs, as (tenant, run id, trigger event bytes, attempts,
        last error), in the caller's transaction (the one that fails them)."""
        now = self._clock.now()
        await conn.execute(dead_letters.insert(), [
            dict(tenant=tenant, entry_id=self._ids.new(), kind=RUN, ref=run_id, payload=payload, attempts=attempts,
                 last_error=error[:2000], create_time=now) for tenant, run_id, payload, attempts, error in failed])

    async def remove_run(self, conn: AsyncConnection, tenant: str, run_id: str) -> None:
        """Take a run's entry out, in the caller's transaction (its retry)."""
        t = dead_letters
        await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.kind == RUN) & (t.c.ref == run_id)))

    async def add_poison(self, *, tenant: str, stream_entry: str, payload: bytes, attempts: int, error: str) -> None:
        """Enter a poison stream entry."""
        async with self._db.begin() as conn:
            await conn.execute(dead_letters.insert().values(
                tenant=tenant or "-", entry_id=self._ids.new(), kind=EVENT, ref=stream_entry, payload=payload, attempts=attempts,
                last_error=error[:2000], create_time=self._clock.now()))

    async def poison(self, tenant: str, *, limit: int, after: str = "") -> list[PoisonEntry]:
        """Poison entries of *tenant*, oldest first, after entry id *after*."""
        t = dead_letters
        query = sa.select(t).where((t.c.tenant == tenant) & (t.c.kind == EVENT))
        if after:
            query = query.where(t.c.entry_id > after)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.entry_id).limit(limit))).all()
        return [PoisonEntry(tenant=r.tenant, entry_id=r.entry_id, stream_entry=r.ref, event=_event(r.payload), attempts=r.attempts,
                            last_error=r.last_error, create_time=r.create_time) for r in rows]

    async def redrive_poison(
        self, tenant: str, entry_ids: Sequence[str], handle: Callable[[Sequence[tuple[str, event_pb2.Event]]], Awaitable[object]],
    ) -> tuple[int, list[tuple[str, str, str]]]:
        """Hand the named poison entries to *handle* (the starter) again, one
        at a time, and remove each that it handled. Returns how many were
        re-driven, and (entry id, reason, description) for the others, which
        stay in the queue."""
        t = dead_letters
        async with self._db.connect() as conn:
            rows = {r.entry_id: r for r in (await conn.execute(sa.select(t).where(
                (t.c.tenant == tenant) & (t.c.kind == EVENT) & t.c.entry_id.in_(list(entry_ids))))).all()}
        redriven, refused = 0, []
        for entry_id in dict.fromkeys(entry_ids):
            row = rows.get(entry_id)
            if row is None:
                refused.append((entry_id, "ENTRY_NOT_FOUND", f"no poison entry {entry_id!r}"))
                continue
            event = _event(row.payload)
            if event is None:
                refused.append((entry_id, "UNREADABLE", "the entry's bytes are not an event; it can only be listed"))
                continue
            try:
                await handle([(tenant, event)])
            except Exception as error:  # noqa: BLE001 - it stays in the queue, with why
                refused.append((entry_id, "STILL_FAILING", f"handling it failed again: {type(error).__name__}"))
                continue
            async with self._db.begin() as conn:
                await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.entry_id == entry_id)))
            redriven += 1
        return redriven, refused


def _event(payload: bytes) -> event_pb2.Event | None:
    try:
        return event_pb2.Event.FromString(payload)
    except Exception:  # noqa: BLE001 - an unreadable entry stays unreadable; it is listed, not re-driven
        return None
