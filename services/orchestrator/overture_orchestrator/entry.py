"""Who enters a journey: the checks between a trigger and a new run.

In order, for a batch of candidate runs of one tenant:

1. the journey's profile condition (a trigger's second condition), on the
   subject's profile read in one call for the batch; an erased subject is
   skipped and counted, and a profile that cannot be read fails the batch
   (its stream entries are delivered again);
2. the journey's entry policy: once ever, or once per window, from the
   subject's last run of the journey (through the runs' once-key index);
3. concurrent runs: a subject already in a journey that does not allow
   them is not entered again.

Simultaneous triggers for one subject and journey (in one batch) enter
once under any policy but ``always``. A subject's events are on one stream
partition, read in order by one consumer, so two batches of one subject do
not race here.

A manual ``Trigger`` skips the trigger's own conditions (it starts a run
"regardless of its trigger") but not the journey's entry policy and
concurrency setting (:meth:`EntryGate.refusal`); simultaneous Trigger calls
for one subject and journey are serialized by :meth:`EntryGate.serialized`
(a PostgreSQL advisory lock, so across replicas and worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

import rule_engine
import sqlalchemy as sa
import structlog

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database, any_of
from overture_runtime.templates import event_scope

from .calls import Transient
from .definition import CompiledJourney, evaluate_expression
from .profiles import ERASED, ProfileReader, Profiles
from .runs import RunStore
from .stats import Counts
from .tables import runs
from .work import NewRun

__all__ = ["EntryGate", "Refusal"]

log = structlog.get_logger("overture.orchestrator")
J = journey_pb2
_LOCK_HOLDERS = 4


class Refusal(NamedTuple):
    """Why a manually triggered run may not start."""

    reason: str
    description: str


class EntryGate:
    """Decides which candidate runs start."""

    def __init__(self, db: Database, clock: Clock, runs_store: RunStore, profiles: ProfileReader) -> None:
        self._db = db
        self._clock = clock
        self._runs = runs_store
        self._profiles = profiles
        self._local: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        # Each holder of an entry lock keeps a pooled connection while its
        # checks and insert take others: a few holders at a time, so that
        # many simultaneous Triggers cannot take the whole pool and wait on
        # each other for a connection.
        self._holders = asyncio.Semaphore(max(1, min(_LOCK_HOLDERS, db.connections // 2)))

    async def refusal(self, tenant: str, compiled: CompiledJourney, run: NewRun) -> Refusal | None:
        """Why the journey's entry policy or concurrency setting keeps *run*
        (a manual trigger) out, or None when it may start. A refusal is
        counted as a skipped entry by the caller."""
        skipped: Counts = Counter()
        if not await self._entry_policies(tenant, [(compiled, run)], skipped):
            entry = compiled.spec.entry
            policy = "once ever" if entry.mode == J.ENTRY_MODE_ONCE else f"once per {_span(entry.window.ToTimedelta())}"
            return Refusal("ENTRY_POLICY", f"the journey's entry policy ({policy}) keeps the subject out")
        if not await self._concurrency(tenant, [(compiled, run)]):
            return Refusal("ALREADY_IN_JOURNEY", "the subject is already in this journey, which does not allow concurrent runs")
        return None

    @contextlib.asynccontextmanager
    async def serialized(self, tenant: str, journey: str, subject_id: str) -> AsyncIterator[None]:
        """Hold the entry of *subject_id* into *journey* for one caller at a
        time: a session advisory lock on PostgreSQL (released if the
        process dies, as its connection closes), a lock of this process on
        SQLite (one process there)."""
        key = (tenant, journey, subject_id)
        if self._db.is_sqlite:
            lock = self._local.get(key)
            if lock is None:
                lock = self._local[key] = asyncio.Lock()
            async with lock:
                yield
            return
        name = "\x1f".join(("overture-entry", *key))
        async with self._holders, self._db.connect() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": name})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": name})
                await conn.commit()

    async def admit(self, tenant: str, candidates: Sequence[tuple[CompiledJourney, NewRun]]) -> tuple[list[NewRun], Counts]:
        """The candidates that enter, and the skipped entries to count. Raises
        :class:`~.calls.Transient` when a needed profile cannot be read."""
        skipped: Counts = Counter()
        kept = await self._profile_conditions(tenant, candidates, skipped)
        kept = await self._entry_policies(tenant, kept, skipped)
        return await self._concurrency(tenant, kept), skipped

    async def _profile_conditions(self, tenant: str, candidates: Sequence[tuple[CompiledJourney, NewRun]],
                                  skipped: Counts) -> list[tuple[CompiledJourney, NewRun]]:
        conditional = [(c, r) for c, r in candidates if c.profile_condition is not None]
        if not conditional:
            return list(candidates)
        profiles: Profiles = {}
        await self._profiles.load([(tenant, r.subject_id) for _, r in conditional], profiles)
        kept = []
        for compiled, run in candidates:
            if compiled.profile_condition is None:
                kept.append((compiled, run))
                continue
            profile = profiles[(tenant, run.subject_id)]
            if isinstance(profile, Transient):
                raise profile
            if profile is ERASED:
                skipped[(run.journey, run.version, "", "skipped")] += 1
                log.info("run.skipped", journey=run.journey, event_id=run.event.event_id, reason="the subject was erased")
                continue
            assert isinstance(profile, dict)
            try:
                matched = evaluate_expression(compiled.profile_condition, {"profile": profile, "event": event_scope(run.event)})
            except rule_engine.EngineError:
                matched = False
            if matched:
                kept.append((compiled, run))
        return kept

    async def _entry_policies(self, tenant: str, candidates: list[tuple[CompiledJourney, NewRun]],
                              skipped: Counts) -> list[tuple[CompiledJourney, NewRun]]:
        limited = [(c, r) for c, r in candidates if c.spec.entry.mode in (J.ENTRY_MODE_ONCE, J.ENTRY_MODE_ONCE_PER_WINDOW)]
        if not limited:
            return candidates
        last = await self._last_entries(tenant, {(r.journey, r.subject_id) for _, r in limited})
        now = self._clock.now()
        kept = []
        entered: set[tuple[str, str]] = set()
        for compiled, run in candidates:
            entry = compiled.spec.entry
            key = (run.journey, run.subject_id)
            if entry.mode in (J.ENTRY_MODE_ONCE, J.ENTRY_MODE_ONCE_PER_WINDOW):
                before = last.get(key)
                barred = key in entered or (before is not None and (
                    entry.mode == J.ENTRY_MODE_ONCE or before > now - entry.window.ToTimedelta()))
                if barred:
                    skipped[(run.journey, run.version, "", "skipped")] += 1
                    log.info("run.not_started", journey=run.journey, event_id=run.event.event_id,
                             reason="the journey's entry policy keeps the subject out")
                    continue
                entered.add(key)
            kept.append((compiled, run))
        return kept

    async def _last_entries(self, tenant: str, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], dt.datetime]:
        """When each (journey, subject) last entered, if ever (journey = ANY and subject = ANY: the once-key index)."""
        r = runs
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(r.c.journey, r.c.subject_id, sa.func.max(r.c.create_time).label("last")).where(
                (r.c.tenant == tenant) & any_of(conn, r.c.journey, {j for j, _ in pairs}) & any_of(conn, r.c.subject_id, {s for _, s in pairs}))
                .group_by(r.c.journey, r.c.subject_id))).all()
        return {(row.journey, row.subject_id): row.last for row in rows if (row.journey, row.subject_id) in pairs}

    async def _concurrency(self, tenant: str, candidates: list[tuple[CompiledJourney, NewRun]]) -> list[NewRun]:
        exclusive = {(r.journey, r.subject_id) for c, r in candidates if not c.spec.settings.allow_concurrent_runs}
        if not exclusive:
            return [r for _, r in candidates]
        # A subject already in a journey that forbids concurrent runs is
        # not entered again, and within the batch only its first event counts.
        busy = await self._runs.unfinished(tenant, exclusive)
        kept: list[NewRun] = []
        for _, run in candidates:
            key = (run.journey, run.subject_id)
            if key in exclusive:
                if key in busy:
                    continue
                busy.add(key)
            kept.append(run)
        if len(kept) < len(candidates):
            log.info("run.not_started", count=len(candidates) - len(kept),
                     reason="the subject is already in a journey that does not allow concurrent runs")
        return kept


def _span(window: dt.timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 else f"{hours:g} hours"
