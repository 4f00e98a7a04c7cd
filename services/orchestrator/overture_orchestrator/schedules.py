"""Schedule triggers: a cron, in a time zone, over a segment or a profile
condition.

Each active journey on a schedule has a row with its next firing
(reconciled from the journeys table every few seconds: new, changed, paused
or archived journeys are picked up). A due row is claimed like a token (SKIP
LOCKED, a lease); its firing pages through the segment's subjects (or all
subjects) from the rules service in bounded batches, starting runs through
the usual entry checks, and keeps a cursor after each batch, so a firing
interrupted by a crash resumes where it was. Every run of one firing has
the same trigger event id (the journey and the firing's time), so a batch
started twice starts each subject's run once. The next firing is the cron's
next time after this one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import structlog
from croniter import croniter

from overture.common.v1 import event_pb2
from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.errors import NotFound

from .calls import call
from .definition import SCHEDULED
from .journeys import JourneyStore
from .loops import repeat
from .tables import journeys, schedules
from .work import NewRun

__all__ = ["SCHEDULED_EVENT", "Scheduler", "next_fire"]

log = structlog.get_logger("overture.orchestrator")
SCHEDULED_EVENT = "journey.scheduled"
"""The event type of a run a schedule starts."""
_LEASE = dt.timedelta(minutes=2)
_PAGE = 500
Start = Callable[[str, Sequence[NewRun]], Awaitable[object]]


def next_fire(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The cron's first time after *after*, read in *timezone* (UTC)."""
    zone = ZoneInfo(timezone or "UTC")
    return croniter(cron, after.astimezone(zone)).get_next(dt.datetime).astimezone(dt.UTC)  # type: ignore[no-any-return]


class Scheduler:
    """Fires schedule triggers."""

    def __init__(self, db: Database, clock: Clock, journeys: JourneyStore, *, profiles: profile_service_pb2_grpc.ProfileServiceStub,
                 settings: Settings, owner: str) -> None:
        self._db = db
        self._clock = clock
        self._journeys = journeys
        self._profiles = profiles
        self._settings = settings
        self._owner = owner

    async def reconcile(self) -> None:
        """Give every active scheduled journey a row (its next firing), move
        rows to new versions, and drop the rows of journeys no longer scheduled."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            active = {(r.tenant, r.name): r.latest_version for r in (await conn.execute(sa.select(
                journeys.c.tenant, journeys.c.name, journeys.c.latest_version).where(
                (journeys.c.trigger_event_type == SCHEDULED) & (journeys.c.state == "active")))).all()}
            held = {(r.tenant, r.journey): r for r in (await conn.execute(sa.select(schedules))).all()}
            for key in held.keys() - active.keys():
                await conn.execute(schedules.delete().where((schedules.c.tenant == key[0]) & (schedules.c.journey == key[1])))
            for (tenant, name), version in active.items():
                row = held.get((tenant, name))
                if row is not None and row.version == version:
                    continue
                try:
                    trigger = (await self._journeys.compiled(tenant, name, version)).spec.trigger.schedule
                except NotFound:
                    continue
                due = next_fire(trigger.cron, trigger.timezone, now)
                if row is None:
                    await conn.execute(schedules.insert().values(tenant=tenant, journey=name, version=version, due_time=due, fire_time=None,
                                                                 cursor="", lease_owner=None))
                else:  # a new version: its cron decides the next firing (one in progress finishes on the new version)
                    values = dict(version=version) if row.fire_time is not None else dict(version=version, due_time=due)
                    await conn.execute(schedules.update().where((schedules.c.tenant == tenant) & (schedules.c.journey == name)).values(**values))

    async def fire_once(self, start: Start) -> int:
        """Work on one due schedule for one page of subjects; returns how many subjects were handed to *start*."""
        now = self._clock.now()
        s = schedules
        async with self._db.begin() as conn:
            row = (await conn.execute(sa.select(s).where(s.c.due_time <= now).order_by(s.c.due_time).limit(1)
                                      .with_for_update(skip_locked=True))).first()
            if row is None:
                return 0
            fire_time = row.fire_time or row.due_time
            await conn.execute(s.update().where((s.c.tenant == row.tenant) & (s.c.journey == row.journey)).values(
                fire_time=fire_time, due_time=now + _LEASE, lease_owner=self._owner))
        compiled = await self._journeys.compiled(row.tenant, row.journey, row.version)
        trigger = compiled.spec.trigger.schedule
        response = await call(self._settings, self._profiles.ListProfiles, profile_service_pb2.ListProfilesRequest(
            segment=trigger.segment, page_size=_PAGE, page_token=row.cursor), row.tenant, "profiles")
        runs = []
        for profile in response.profiles:
            event = event_pb2.Event(event_id=f"schedule:{row.journey}:{int(fire_time.timestamp())}", event_type=SCHEDULED_EVENT,
                                    subject_id=profile.subject_id, source="overture.orchestrator")
            event.occurred_at.FromDatetime(fire_time)
            runs.append(NewRun(tenant=row.tenant, journey=row.journey, version=row.version, subject_id=profile.subject_id, event=event,
                               first_step=compiled.first_step))
        if runs:
            await start(row.tenant, runs)
        async with self._db.begin() as conn:
            key = (s.c.tenant == row.tenant) & (s.c.journey == row.journey) & (s.c.lease_owner == self._owner)
            if response.next_page_token:
                await conn.execute(s.update().where(key).values(cursor=response.next_page_token, due_time=self._clock.now()))
            else:
                await conn.execute(s.update().where(key).values(cursor="", fire_time=None, lease_owner=None,
                                                                due_time=next_fire(trigger.cron, trigger.timezone, fire_time)))
                log.info("schedule.fired", journey=row.journey, fire_time=fire_time.isoformat())
        return len(runs)

    async def run(self, stopping: asyncio.Event, start: Start, *, interval: float = 1.0, reconcile_every: float = 10.0) -> None:
        """Fire due schedules until *stopping* is set (a failed firing's lease
        runs out; it resumes from its cursor); reconcile every *reconcile_every* seconds."""
        loop = asyncio.get_running_loop()
        reconciled = -reconcile_every

        async def step() -> int:
            nonlocal reconciled
            if loop.time() - reconciled >= reconcile_every:
                await self.reconcile()
                reconciled = loop.time()
            return await self.fire_once(start)

        await repeat(stopping, step, interval=interval, failure="schedule.fire_failed")
