"""Starting runs: from batches of stream events, from Trigger, from Enqueue.

Starting only inserts: the run, its inputs and its first token, handed
to a free worker already claimed, or due now for the workers to claim. A trigger event makes at most one run per journey
and subject, whatever the journey's version (the runs table's unique key):
an event delivered again, republished from the log after Redis lost the
stream, or re-driven from the dead-letter queue, finds the run it made and
starts nothing. Events caused by journeys carry their causation depth; past
the journey's limit the journey is paused and an alert logged, so that
journeys triggering each other stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import structlog

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.errors import FailedPrecondition, InvalidArgument
from overture_runtime.protojson import canonical_json, struct_to_dict

from .definition import CompiledJourney, compile_journey, evaluate_expression
from .entry import EntryGate
from .goals import Goals
from .inactivity import Inactivity
from .journeys import JourneyStore
from .runs import NewRun, RunStore, Work
from .stats import Counts
from .waits import Waits
from .worker import WorkerPool

__all__ = ["Starter"]

log = structlog.get_logger("overture.orchestrator")
_DEFAULT_MAX_DEPTH = 5


class Starter:
    """Decides which runs events, a Trigger or an Enqueue start, and starts them.

    New runs are inserted already claimed and queued for the next free
    worker of *workers* (:meth:`WorkerPool.eager`); when its queue is full
    they are due now and the workers are woken to claim them."""

    def __init__(self, *, journeys: JourneyStore, runs: RunStore, clock: Clock, ids: IdGenerator, workers: WorkerPool, gate: EntryGate,
                 waits: Waits, goals: Goals, inactivity: Inactivity) -> None:
        self._journeys = journeys
        self._runs = runs
        self._clock = clock
        self._ids = ids
        self._workers = workers
        self._gate = gate
        self._waits = waits
        self._goals = goals
        self._inactivity = inactivity

    async def on_events(self, entries: Sequence[tuple[str, event_pb2.Event]]) -> int:
        """Start the runs a batch of (tenant, event) triggers; returns how many are new."""
        by_tenant: dict[str, list[event_pb2.Event]] = {}
        for tenant, event in entries:
            by_tenant.setdefault(tenant, []).append(event)
        started = 0
        for tenant, events in by_tenant.items():
            started += await self._start_for(tenant, events)
        return started

    async def _start_for(self, tenant: str, events: Sequence[event_pb2.Event]) -> int:
        """End the runs *events* are the goal of; then resume the waits they
        end while the runs they trigger start. Those two touch different runs
        (a run started here has no wait yet), so a batch costs the longer of
        their round trips, not both. A failure of either fails the batch (its
        entries are delivered again; every step is idempotent)."""
        await self._goals.convert(tenant, events)
        resuming = asyncio.create_task(self._waits.resume(tenant, events))
        try:
            started = await self._enter(tenant, events)
        except BaseException:
            resuming.cancel()
            with contextlib.suppress(BaseException):
                await resuming
            raise
        await resuming
        return started

    async def _enter(self, tenant: str, events: Sequence[event_pb2.Event]) -> int:
        """Arm the inactivity timers *events* reset, then start the runs they trigger."""
        await self._inactivity.arm(tenant, events)
        candidates: list[tuple[CompiledJourney, NewRun]] = []
        for event in events:
            for journey in await self._journeys.triggered_by(tenant, event.event_type):
                compiled = journey.compiled
                limit = compiled.spec.settings.max_causation_depth or _DEFAULT_MAX_DEPTH
                if event.causation.depth >= limit:
                    await self._journeys.set_state(tenant=tenant, name=journey.name, state="paused",
                                                   reason=f"causation depth {event.causation.depth} reached the limit of {limit}",
                                                   details={"root_event_id": event.causation.root_event_id})
                    await self._runs.cancel_journey(tenant, journey.name)
                    log.error("journey.loop_detected", alert=True, journey=journey.name, depth=event.causation.depth,
                              root_event_id=event.causation.root_event_id, action="journey paused")
                    continue
                if compiled.filter is not None and not _matches(compiled.filter, event):
                    continue
                candidates.append((compiled, NewRun(tenant=tenant, journey=journey.name, version=journey.version,
                                                    subject_id=event.subject_id, event=event, first_step=compiled.first_step)))
        return await self.start_runs(tenant, candidates)

    async def start_new(self, tenant: str, runs: Sequence[NewRun]) -> int:
        """Start *runs* (of the journeys' current versions) through the entry checks; returns how many are new."""
        candidates = [(await self._journeys.compiled(tenant, r.journey, r.version), r) for r in runs]
        return await self.start_runs(tenant, candidates)

    async def start_runs(self, tenant: str, candidates: Sequence[tuple[CompiledJourney, NewRun]]) -> int:
        """Start the candidate runs the entry checks admit (:mod:`.entry`); returns how many are new."""
        if not candidates:
            return 0
        admitted, skipped = await self._gate.admit(tenant, candidates)
        results = await self._start(admitted, skipped=(tenant, skipped) if skipped else None)
        for run, (run_id, work) in zip(admitted, results, strict=True):
            if work is not None:
                log.info("run.started", run_id=run_id, journey=run.journey, version=run.version, event_id=run.event.event_id)
        return sum(1 for _, work in results if work is not None)

    async def _start(self, runs: Sequence[NewRun], *, skipped: tuple[str, Counts] | None = None) -> list[tuple[str, Work | None]]:
        """Insert *runs* (and count *skipped* entries); hand the new ones to a free worker, or wake the workers to claim them."""
        if not runs and not skipped:
            return []
        owner = self._workers.eager(len(runs)) if runs else None
        try:
            results = await self._runs.start(runs, lease_owner=owner, skipped=skipped)
        except BaseException:
            if owner is not None:
                self._workers.dispatch(owner, [])
            raise
        fresh = [work for _, work in results if work is not None]
        if owner is not None:
            self._workers.dispatch(owner, fresh)
        elif fresh:
            self._workers.wake()
        return results

    async def trigger(self, tenant: str, *, journey: str, subject_id: str, context: Any, request_id: str) -> str:
        """Start a run of *journey* now, whatever its trigger's conditions, under
        its entry policy and concurrency setting (FAILED_PRECONDITION when they
        keep the subject out, counted as a skipped entry); returns its id. A
        repeated *request_id* returns the first run."""
        record = await self._journeys.get(tenant=tenant, name=journey)
        if record.state == journey_pb2.JOURNEY_STATE_PAUSED:
            raise FailedPrecondition(f"journey {journey!r} is paused", reason="JOURNEY_PAUSED")
        if record.state == journey_pb2.JOURNEY_STATE_ARCHIVED:
            raise FailedPrecondition(f"journey {journey!r} is archived; publish a new version to revive it", reason="JOURNEY_ARCHIVED")
        compiled = await self._journeys.compiled(tenant, journey, record.version)
        event = self._synthetic_event(subject_id, "journey.triggered", context, request_id)
        run = NewRun(tenant=tenant, journey=journey, version=record.version, subject_id=subject_id, event=event, first_step=compiled.first_step)
        async with self._gate.serialized(tenant, journey, subject_id):
            if request_id:
                # A repeat returns the first run, whatever the entry checks would say now.
                first = await self._runs.list_runs(tenant=tenant, journey=journey, subject_id=subject_id, trigger_event_id=event.event_id,
                                                   limit=1, before=None)
                if first:
                    return first[0].run_id
            refusal = await self._gate.refusal(tenant, compiled, run)
            if refusal is not None:
                await self._start([], skipped=(tenant, Counter({(journey, record.version, "", "skipped"): 1})))
                raise FailedPrecondition(f"journey {journey!r} does not take the subject now: {refusal.description}", reason=refusal.reason)
            return await self._start_one(run)

    async def enqueue(self, tenant: str, *, spec: journey_pb2.JourneySpec, subject_id: str, context: Any, request_id: str) -> str:
        """Start a one-step run that sends one message; returns its id."""
        compiled, problems = compile_journey(spec)
        if compiled is None:
            raise InvalidArgument(f"the message is invalid: {problems[0].description}", violations=problems)
        event = self._synthetic_event(subject_id, "message.enqueued", context, request_id)
        return await self._start_one(NewRun(tenant=tenant, journey="", version=0, subject_id=subject_id, event=event,
                                            first_step=compiled.first_step, inline_spec=canonical_json(spec)))

    async def _start_one(self, run: NewRun) -> str:
        ((run_id, _),) = await self._start([run])
        return run_id

    def _synthetic_event(self, subject_id: str, event_type: str, context: Any, request_id: str) -> event_pb2.Event:
        event = event_pb2.Event(event_id=f"req:{request_id}" if request_id else self._ids.new(), event_type=event_type,
                                subject_id=subject_id, source="overture.orchestrator")
        event.attributes.CopyFrom(context)
        event.occurred_at.FromDatetime(self._clock.now())
        return event


def _matches(rule: Any, event: event_pb2.Event) -> bool:
    try:
        return evaluate_expression(rule, {"attributes": struct_to_dict(event.attributes), "event_type": event.event_type})
    except Exception:  # noqa: BLE001 - a filter that cannot evaluate does not match
        return False
