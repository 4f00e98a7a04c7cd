"""ReplayEvents: a window of stored events fed again to one journey's trigger.

The window's events of the trigger's type are read from ingest's
``ListEvents`` a page at a time and handed to the starter's normal path
(:meth:`~.starter.Starter.start_runs`): the trigger's filter, the entry
checks (profile condition, entry policy, concurrent runs), and the runs'
once-key, which makes at most one run per (journey, subject, event) whatever
the version. So an event that already started a run starts nothing, and
replaying a window twice sends nothing new. Only the journey's trigger sees
the events again: waits, goals and inactivity timers are not fed (they saw
the events when they came). Events past the journey's causation limit are
left out, without pausing it. The replay is audited (``EVENTS_REPLAYED``)
with who asked, why, the window and what it started, also when it stops
part way; it runs within the call, so a large window may need a long
deadline, and a call cut short can simply be made again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, Unavailable

from .audit_outbox import stage
from .calls import Transient, call
from .definition import CompiledJourney, event_matches
from .journeys import JourneyStore
from .projection import trigger_type
from .starter import Starter
from .work import NewRun

__all__ = ["Replayed", "Replayer"]

log = structlog.get_logger("overture.orchestrator")
_PAGE = 1000
_DEFAULT_MAX_DEPTH = 5


@dataclass(frozen=True)
class Replayed:
    """What a replay did."""

    events_read: int
    """Events of the trigger's type read from the window."""
    runs_started: int
    """Runs started (events that had started none before)."""


class Replayer:
    """Replays windows of events to journeys."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, journeys: JourneyStore, starter: Starter,
                 ingest: ingest_service_pb2_grpc.IngestServiceStub, settings: Settings, audited: Callable[[str], Awaitable[None]]) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._journeys = journeys
        self._starter = starter
        self._ingest = ingest
        self._settings = settings
        self._audited = audited

    async def replay(self, tenant: str, *, journey: str, start: dt.datetime, end: dt.datetime, reason: str, actor: str) -> Replayed:
        """Feed *journey*'s trigger the window's events again; what it read and started."""
        record = await self._journeys.get(tenant=tenant, name=journey)
        if record.state != journey_pb2.JOURNEY_STATE_ACTIVE:
            state = journey_pb2.JourneyState.Name(record.state).removeprefix("JOURNEY_STATE_").lower()
            raise FailedPrecondition(f"journey {journey!r} is {state}: only an active journey takes events", reason="JOURNEY_NOT_ACTIVE")
        compiled = await self._journeys.compiled(tenant, journey, record.version)
        event_type = trigger_type(compiled)
        if event_type is None:
            raise FailedPrecondition("only journeys that events start (an event or a segment-entered trigger) can replay events",
                                     reason="REPLAY_UNSUPPORTED_TRIGGER")
        read = started = 0
        outcome = "completed"
        try:
            token = ""
            while True:
                page = await self._page(tenant, event_type, start, end, token)
                read += len(page.events)
                started += await self._feed(tenant, journey, record.version, compiled, [e.event for e in page.events])
                token = page.next_page_token
                if not token:
                    break
        except BaseException as error:
            outcome = f"stopped after {read} events: {type(error).__name__}"
            raise
        finally:
            await self._audit(tenant, journey=journey, version=record.version, start=start, end=end, reason=reason, actor=actor,
                              read=read, started=started, outcome=outcome)
        log.info("events.replayed", journey=journey, events=read, runs_started=started)
        return Replayed(events_read=read, runs_started=started)

    async def _page(self, tenant: str, event_type: str, start: dt.datetime, end: dt.datetime, token: str) -> ingest_service_pb2.ListEventsResponse:
        request = ingest_service_pb2.ListEventsRequest(event_types=[event_type], page_size=_PAGE, page_token=token)
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        try:
            response: ingest_service_pb2.ListEventsResponse = await call(self._settings, self._ingest.ListEvents, request, tenant, "ingest")
        except Transient as error:
            raise Unavailable(f"the event log could not be read: {error}", reason="INGEST_UNAVAILABLE") from None
        return response

    async def _feed(self, tenant: str, journey: str, version: int, compiled: CompiledJourney, events: Sequence[event_pb2.Event]) -> int:
        limit = compiled.spec.settings.max_causation_depth or _DEFAULT_MAX_DEPTH
        candidates = [(compiled, NewRun(tenant=tenant, journey=journey, version=version, subject_id=e.subject_id, event=e,
                                        first_step=compiled.first_step))
                      for e in events if e.causation.depth < limit and event_matches(compiled.filter, e)]
        try:
            return await self._starter.start_runs(tenant, candidates)
        except Transient as error:
            raise Unavailable(f"the runs could not be started: {error}", reason="PROFILES_UNAVAILABLE") from None

    async def _audit(self, tenant: str, *, journey: str, version: int, start: dt.datetime, end: dt.datetime, reason: str, actor: str,
                     read: int, started: int, outcome: str) -> None:
        async with self._db.begin() as conn:
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_EVENTS_REPLAYED, actor=actor,
                        time=self._clock.now(), reason=reason, target=f"journey/{journey}",
                        details={"version": version, "start_time": start.isoformat(), "end_time": end.isoformat(), "events_read": read,
                                 "runs_started": started, "outcome": outcome})
        await self._audited(tenant)
