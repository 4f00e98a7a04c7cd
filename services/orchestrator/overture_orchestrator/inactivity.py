"""Inactivity triggers: a run starts for a subject that had no event of a
type for a while.

Every event of that type (re)arms one durable timer per (journey, subject),
due the period after the event (never moved earlier by an older event
delivered late). A loop claims due timers like workers claim tokens (SKIP
LOCKED, a lease) and starts the runs; each run's trigger is a synthetic
event whose id names the journey, the subject and the timer's due time, so
a timer fired twice (a crash after the start) starts one run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database
from overture_runtime.errors import NotFound

from .journeys import JourneyStore
from .loops import repeat
from .tables import inactivity
from .work import NewRun

__all__ = ["INACTIVE_EVENT", "Inactivity"]

log = structlog.get_logger("overture.orchestrator")
INACTIVE_EVENT = "journey.inactivity"
"""The event type of a run an inactivity trigger starts."""
_LEASE = dt.timedelta(seconds=60)


class Inactivity:
    """Arms inactivity timers from events, and starts runs when they fire."""

    def __init__(self, db: Database, clock: Clock, journeys: JourneyStore, *, owner: str, batch: int = 500) -> None:
        self._db = db
        self._clock = clock
        self._journeys = journeys
        self._owner = owner
        self._batch = batch

    async def arm(self, tenant: str, events: Sequence[event_pb2.Event]) -> int:
        """(Re)arm the timers *events* reset; returns how many."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for event in events:
            for journey in await self._journeys.inactive_after(tenant, event.event_type):
                at = event.occurred_at.ToDatetime(tzinfo=dt.UTC) if event.HasField("occurred_at") else self._clock.now()
                due = at + journey.compiled.spec.trigger.inactivity.period.ToTimedelta()
                key = (journey.name, event.subject_id)
                if key not in rows or rows[key]["due_time"] < due:
                    rows[key] = dict(tenant=tenant, journey=journey.name, subject_id=event.subject_id, due_time=due, fire_time=due,
                                     lease_owner=None)
        if not rows:
            return 0
        async with self._db.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(inactivity)
            newer = insert.excluded.fire_time > inactivity.c.fire_time
            await conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "journey", "subject_id"], set_={
                "due_time": sa.case((newer, insert.excluded.due_time), else_=inactivity.c.due_time),
                "fire_time": sa.case((newer, insert.excluded.fire_time), else_=inactivity.c.fire_time),
                "lease_owner": sa.case((newer, None), else_=inactivity.c.lease_owner)}), list(rows.values()))
        return len(rows)

    async def fire_once(self, start: Callable[[str, Sequence[NewRun]], Awaitable[object]]) -> int:
        """Start the runs of the timers due now (up to a batch) with *start*
        (tenant, runs); returns how many timers fired."""
        now = self._clock.now()
        i = inactivity
        due = (sa.select(i.c.tenant, i.c.journey, i.c.subject_id).where(i.c.due_time <= now).order_by(i.c.due_time).limit(self._batch)
               .with_for_update(skip_locked=True))
        async with self._db.begin() as conn:
            claimed = (await conn.execute(i.update().where(sa.tuple_(i.c.tenant, i.c.journey, i.c.subject_id).in_(due))
                                          .values(lease_owner=self._owner, due_time=now + _LEASE)
                                          .returning(i.c.tenant, i.c.journey, i.c.subject_id, i.c.fire_time))).all()
        if not claimed:
            return 0
        by_tenant: dict[str, list[NewRun]] = {}
        for row in claimed:
            try:
                record = await self._journeys.get(tenant=row.tenant, name=row.journey)
                compiled = await self._journeys.compiled(row.tenant, row.journey, record.version)
            except NotFound:
                continue
            if compiled.spec.trigger.WhichOneof("kind") != "inactivity":
                continue  # the journey's latest version has another trigger now
            event = event_pb2.Event(event_id=f"inactive:{row.journey}:{row.subject_id}:{int(row.fire_time.timestamp())}", event_type=INACTIVE_EVENT,
                                    subject_id=row.subject_id, source="overture.orchestrator")
            event.occurred_at.FromDatetime(now)
            event.attributes.update({"inactive_for": compiled.spec.trigger.inactivity.event_type})
            by_tenant.setdefault(row.tenant, []).append(NewRun(tenant=row.tenant, journey=row.journey, version=record.version,
                                                               subject_id=row.subject_id, event=event, first_step=compiled.first_step))
        for tenant, new in by_tenant.items():
            await start(tenant, new)
        async with self._db.begin() as conn:  # fired: the timer is re-armed only by a newer event
            for r in claimed:  # a timer re-armed meanwhile (a newer fire_time) stays
                await conn.execute(i.delete().where((i.c.tenant == r.tenant) & (i.c.journey == r.journey) & (i.c.subject_id == r.subject_id)
                                                    & (i.c.fire_time == r.fire_time)))
        return len(claimed)

    async def run(self, stopping: asyncio.Event, start: Callable[[str, Sequence[NewRun]], Awaitable[object]], *,
                  interval: float = 1.0) -> None:
        """Fire due timers until *stopping* is set (a failed firing's lease runs out; its timers come due again)."""
        await repeat(stopping, lambda: self.fire_once(start), interval=interval, failure="inactivity.fire_failed")
