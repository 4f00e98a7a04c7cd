"""Journey backtests: long-running operations in ``orchestrator_backtests``
(ADR 0021).

``StartJourneyBacktest`` checks the candidate (a definition, or the
journey's latest version) and queues a row; a runner loop in every replica
claims queued rows (``FOR UPDATE SKIP LOCKED``), at most
``OVERTURE_BACKTEST_CONCURRENCY`` at a time per replica, each under a lease
it renews as it goes. A run reads the window's events of the types the two
versions need through ingest's ``ListEvents`` (a thousand a page, progress
written after each), the trigger subjects' profiles (``BatchGetProfiles``),
projects the candidate and the active version (:mod:`.projection`), decides
their sends in dry-run mode (:mod:`.dryrun`), and stores both reports.
Nothing else is written anywhere: no run, decision record, reservation or
message.

A backtest whose replica stops (a restart, a crash) is not resumed: the
lease it held runs out, and the next sweep marks it failed, saying it was
interrupted, so that its caller starts it again. A queued backtest that no
replica had claimed survives any restart and runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog

from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2_grpc
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, OvertureError
from overture_runtime.protojson import canonical_json, from_json

from .calls import Transient, call
from .definition import CompiledJourney, compile_journey
from .dryrun import DrySend, decide_dry
from .journeys import JourneyStore, ReferenceCheck
from .profiles import ERASED, ProfileReader, Profiles
from .projection import UNSUPPORTED, Window, WindowEvent, awaited_types, project, trigger_type
from .tables import backtests

__all__ = ["Backtests"]

log = structlog.get_logger("overture.orchestrator")
OS = orchestrator_service_pb2
_LEASE = dt.timedelta(seconds=60)
_POLL = 1.0
_PAGE = 1000
_TYPES_MAX = 20
_STATES = {"queued": OS.BACKTEST_STATE_RUNNING, "running": OS.BACKTEST_STATE_RUNNING, "succeeded": OS.BACKTEST_STATE_SUCCEEDED,
           "failed": OS.BACKTEST_STATE_FAILED}
INTERRUPTED = "interrupted: the orchestrator replica running it stopped; start the backtest again"
"""The error of a backtest whose replica stopped mid-way."""


class _LostLease(Exception):
    """Another replica swept this backtest as interrupted: stop working on it."""


class Backtests:
    """Starts, runs and reads journey backtests."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, journeys: JourneyStore, references: ReferenceCheck | None,
                 profiles: ProfileReader, ingest: ingest_service_pb2_grpc.IngestServiceStub, rules: rules_service_pb2_grpc.RulesServiceStub,
                 settings: Settings, owner: str) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._journeys = journeys
        self._references = references
        self._profiles = profiles
        self._ingest = ingest
        self._rules = rules
        self._settings = settings
        self._owner = owner
        self._wake = asyncio.Event()

    # -- the API -----------------------------------------------------------------

    async def start(self, tenant: str, *, name: str, spec: journey_pb2.JourneySpec | None, start: dt.datetime,
                    end: dt.datetime | None) -> OS.JourneyBacktest:
        """Queue a backtest of *spec* (or the journey's latest version) against the active version."""
        now = self._clock.now()
        end = end or now
        if end <= start:
            raise InvalidArgument("the window must end after it starts (start_time in the past, or an end_time after it)",
                                  reason="EMPTY_WINDOW")
        latest: journey_pb2.Journey | None
        try:
            latest = await self._journeys.get(tenant=tenant, name=name)
        except NotFound:
            if spec is None:
                raise
            latest = None
        if spec is not None:
            compiled, problems = compile_journey(spec)
            if compiled is None:
                raise InvalidArgument(f"the journey is invalid: {problems[0].description}", violations=problems)
            if self._references is not None:
                await self._references.check(tenant, spec)
        else:
            assert latest is not None
            compiled = await self._journeys.compiled(tenant, name, latest.version)
        if trigger_type(compiled) is None:
            raise FailedPrecondition(UNSUPPORTED, reason="BACKTEST_UNSUPPORTED_TRIGGER")
        active = latest is not None and latest.state == journey_pb2.JOURNEY_STATE_ACTIVE
        row = dict(tenant=tenant, backtest_id=self._ids.new(), journey=name, candidate_spec=canonical_json(spec) if spec is not None else None,
                   candidate_version=0 if spec is not None or latest is None else latest.version,
                   baseline_version=latest.version if active and latest is not None else None, start_time=start, end_time=end,
                   state="queued", events_scanned=0, events_total=0, error="", create_time=now)
        async with self._db.begin() as conn:
            await conn.execute(sa.insert(backtests).values(**row))
        self._wake.set()
        log.info("backtest.queued", backtest_id=row["backtest_id"], journey=name)
        return await self.get(tenant, str(row["backtest_id"]))

    async def get(self, tenant: str, backtest_id: str) -> OS.JourneyBacktest:
        """One backtest, with its progress and, when done, its reports."""
        t = backtests
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & (t.c.backtest_id == backtest_id)))).first()
        if row is None:
            raise NotFound(f"backtest {backtest_id!r} does not exist", reason="BACKTEST_NOT_FOUND")
        found = OS.JourneyBacktest(backtest_id=row.backtest_id, name=row.journey, state=_STATES[row.state], events_scanned=row.events_scanned,
                                   events_total=row.events_total, error=row.error)
        if row.candidate_report is not None:
            found.candidate.ParseFromString(row.candidate_report)
        if row.baseline_report is not None:
            found.baseline.ParseFromString(row.baseline_report)
        found.create_time.FromDatetime(row.create_time)
        if row.finish_time is not None:
            found.end_time.FromDatetime(row.finish_time)
        return found

    # -- the runner ----------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep interrupted backtests and run queued ones, until *stopping*."""
        running: set[asyncio.Task[None]] = set()
        try:
            while not stopping.is_set():
                await self.sweep()
                free = self._settings.backtest_concurrency - len(running)
                for row in await self._claim(free) if free > 0 else []:
                    task = asyncio.create_task(self._execute(row), name=f"backtest:{row.backtest_id}")
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: self._wake.set())
                self._wake.clear()
                waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._wake.wait())]
                try:
                    await asyncio.wait(waits, timeout=_POLL, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def sweep(self) -> int:
        """Mark running backtests whose lease ran out as failed (interrupted); how many."""
        t = backtests
        now = self._clock.now()
        async with self._db.begin() as conn:
            result = await conn.execute(t.update().where((t.c.state == "running") & (t.c.lease_until < now))
                                        .values(state="failed", error=INTERRUPTED, finish_time=now, lease_owner=None, lease_until=None))
        if result.rowcount:
            log.warning("backtest.interrupted", count=result.rowcount)
        return int(result.rowcount)

    async def _claim(self, limit: int) -> list[Any]:
        t = backtests
        now = self._clock.now()
        async with self._db.begin() as conn:
            rows = (await conn.execute(sa.select(t).where(t.c.state == "queued").order_by(t.c.create_time).limit(limit)
                                       .with_for_update(skip_locked=True))).all()
            for row in rows:
                await conn.execute(t.update().where((t.c.tenant == row.tenant) & (t.c.backtest_id == row.backtest_id) & (t.c.state == "queued"))
                                   .values(state="running", lease_owner=self._owner, lease_until=now + _LEASE))
        return list(rows)

    async def _progress(self, row: Any, **values: Any) -> None:
        """Write *values* and renew the lease; raises :class:`_LostLease` when the backtest is no longer this replica's."""
        t = backtests
        async with self._db.begin() as conn:
            result = await conn.execute(t.update().where(
                (t.c.tenant == row.tenant) & (t.c.backtest_id == row.backtest_id) & (t.c.state == "running") & (t.c.lease_owner == self._owner))
                .values(lease_until=self._clock.now() + _LEASE, **values))
        if result.rowcount == 0:
            raise _LostLease

    async def _execute(self, row: Any) -> None:
        log.info("backtest.started", backtest_id=row.backtest_id, journey=row.journey)
        try:
            versions = await self._versions(row)
            window = await self._read(row, set().union(*(awaited_types(j) for j, _ in versions)))
            profiles = await self._profiles_of(row.tenant, window, [j for j, _ in versions])
            reports: list[bytes] = []
            for journey, version in versions:
                projection = project(journey, name=row.journey, version=version, window=window, profiles=profiles)
                report = projection.settle(await self._decide(row, projection.sends))
                reports.append(report.SerializeToString())
            await self._progress(row, state="succeeded", finish_time=self._clock.now(), lease_owner=None, candidate_report=reports[0],
                                 baseline_report=reports[1] if len(reports) > 1 else None)
            log.info("backtest.succeeded", backtest_id=row.backtest_id, events=len(window.events))
        except _LostLease:
            log.warning("backtest.lease_lost", backtest_id=row.backtest_id)
        except (OvertureError, Transient) as error:
            await self._fail(row, getattr(error, "message", None) or str(error))
        except Exception as error:
            log.exception("backtest.failed", backtest_id=row.backtest_id)
            await self._fail(row, f"internal error: {type(error).__name__}")

    async def _fail(self, row: Any, error: str) -> None:
        try:
            await self._progress(row, state="failed", error=error[:2000], finish_time=self._clock.now(), lease_owner=None)
        except _LostLease:
            pass
        log.warning("backtest.failed", backtest_id=row.backtest_id, error=error[:200])

    async def _versions(self, row: Any) -> list[tuple[CompiledJourney, int]]:
        """The candidate, then the baseline when there is one that can be backtested."""
        if row.candidate_spec is not None:
            compiled, _ = compile_journey(from_json(row.candidate_spec, journey_pb2.JourneySpec))
            if compiled is None:
                raise InvalidArgument("the candidate no longer compiles", reason="INVALID_CANDIDATE")
            found = [(compiled, 0)]
        else:
            found = [(await self._journeys.compiled(row.tenant, row.journey, row.candidate_version), int(row.candidate_version))]
        if row.baseline_version is not None:
            baseline = await self._journeys.compiled(row.tenant, row.journey, row.baseline_version)
            if trigger_type(baseline) is not None:
                found.append((baseline, int(row.baseline_version)))
        return found

    async def _read(self, row: Any, types: set[str]) -> Window:
        """The window's events of *types* (of every type past 20 of them), page after page, with progress."""
        window = Window()
        token = ""
        span = (row.end_time - row.start_time).total_seconds()
        while True:
            request = ingest_service_pb2.ListEventsRequest(event_types=sorted(types) if len(types) <= _TYPES_MAX else [], page_size=_PAGE,
                                                           page_token=token)
            request.start_time.FromDatetime(row.start_time)
            request.end_time.FromDatetime(row.end_time)
            page = await call(self._settings, self._ingest.ListEvents, request, row.tenant, "ingest")
            for found in page.events:
                if found.event.event_type in types:
                    window.add(WindowEvent(found.event, found.commit_time.ToDatetime(tzinfo=dt.UTC)))
            scanned = len(window.events)
            if scanned > self._settings.backtest_max_events:
                raise FailedPrecondition(f"the window holds more than {self._settings.backtest_max_events} events of the journey's "
                                         "types; backtest a narrower window", reason="BACKTEST_TOO_LARGE")
            token = page.next_page_token
            if not token:
                await self._progress(row, events_scanned=scanned, events_total=scanned)
                return window
            covered = (window.events[-1].at - row.start_time).total_seconds() if window.events else 0.0
            estimate = int(scanned * span / covered) if covered > 0 else scanned * 2
            await self._progress(row, events_scanned=scanned, events_total=max(estimate, scanned + 1))

    async def _profiles_of(self, tenant: str, window: Window, journeys: Sequence[CompiledJourney]) -> dict[str, dict[str, Any] | None]:
        """The profiles of the trigger events' subjects (None for an erased one)."""
        triggers = {trigger_type(j) for j in journeys}
        subjects = list(dict.fromkeys(w.event.subject_id for w in window.events if w.event.event_type in triggers))
        found: Profiles = {}
        await self._profiles.load([(tenant, s) for s in subjects], found)
        profiles: dict[str, dict[str, Any] | None] = {}
        for subject in subjects:
            profile = found[(tenant, subject)]
            if isinstance(profile, Transient):
                raise profile
            profiles[subject] = None if profile is ERASED else profile  # type: ignore[assignment]
        return profiles

    async def _decide(self, row: Any, sends: Sequence[DrySend]) -> list[decision_pb2.Decision]:
        """Dry-run decisions of *sends*, a thousand at a time, renewing the lease between calls."""
        decisions: list[decision_pb2.Decision] = []
        for start in range(0, len(sends), _PAGE):
            decisions += await decide_dry(self._settings, self._rules, row.tenant, sends[start:start + _PAGE])
            await self._progress(row)
        return decisions
