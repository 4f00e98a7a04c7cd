"""Starting runs: from events on the stream, from Trigger, from Enqueue.

A trigger event makes at most one run per journey and subject, whatever the
journey's version (the runs table's unique key): an event delivered again,
republished from the log after Redis lost the stream, or redriven, finds the
run it made and starts nothing. Events caused by journeys carry their causation
depth; past the journey's limit the journey is paused and an alert logged,
so that journeys triggering each other stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.errors import FailedPrecondition, InvalidArgument
from overture_runtime.protojson import canonical_json, struct_to_dict

from .definition import compile_journey, evaluate_expression
from .executor import Executor
from .journeys import JourneyStore
from .runs import RunStore

__all__ = ["Starter"]

log = structlog.get_logger("overture.orchestrator")
_DEFAULT_MAX_DEPTH = 5


class Starter:
    """Decides which runs an event, a Trigger or an Enqueue starts."""

    def __init__(self, *, journeys: JourneyStore, runs: RunStore, executor: Executor, clock: Clock, ids: IdGenerator) -> None:
        self._journeys = journeys
        self._runs = runs
        self._executor = executor
        self._clock = clock
        self._ids = ids
        self._inflight: set[asyncio.Task[None]] = set()

    async def on_event(self, tenant: str, event: event_pb2.Event) -> None:
        """Start the runs *event* triggers, and advance them."""
        for journey in await self._journeys.triggered_by(tenant, event.event_type):
            compiled = journey.compiled
            limit = compiled.spec.settings.max_causation_depth or _DEFAULT_MAX_DEPTH
            if event.causation.depth >= limit:
                await self._journeys.set_state(tenant=tenant, name=journey.name, state="paused")
                log.error("journey.loop_detected", alert=True, journey=journey.name, depth=event.causation.depth,
                          root_event_id=event.causation.root_event_id, action="journey paused")
                continue
            if compiled.filter is not None and not _matches(compiled.filter, event):
                continue
            if not compiled.spec.settings.allow_concurrent_runs and await self._runs.has_unfinished(tenant, journey.name, event.subject_id):
                log.info("run.not_started", journey=journey.name, reason="the subject is already in this journey")
                continue
            run_id, new = await self._runs.create(
                tenant=tenant, journey=journey.name, version=journey.version, subject_id=event.subject_id,
                trigger_event_id=event.event_id, event=event, first_step=compiled.first_step,
            )
            if new:
                log.info("run.started", run_id=run_id, journey=journey.name, version=journey.version, event_id=event.event_id)
                await self._executor.advance(tenant, run_id)

    async def trigger(self, tenant: str, *, journey: str, subject_id: str, context: Any, request_id: str) -> str:
        """Start a run of *journey* now; returns its id."""
        record = await self._journeys.get(tenant=tenant, name=journey)
        if record.state == journey_pb2.JOURNEY_STATE_PAUSED:
            raise FailedPrecondition(f"journey {journey!r} is paused", reason="JOURNEY_PAUSED")
        compiled = await self._journeys.compiled(tenant, journey, record.version)
        event = self._synthetic_event(subject_id, "journey.triggered", context, request_id)
        run_id, new = await self._runs.create(
            tenant=tenant, journey=journey, version=record.version, subject_id=subject_id,
            trigger_event_id=event.event_id, event=event, first_step=compiled.first_step,
        )
        if new:
            self._background(tenant, run_id)
        return run_id

    async def enqueue(self, tenant: str, *, spec: journey_pb2.JourneySpec, subject_id: str, context: Any, request_id: str) -> str:
        """Start a one-step run that sends one message; returns its id."""
        compiled, problems = compile_journey(spec)
        if compiled is None:
            raise InvalidArgument(f"the message is invalid: {problems[0].description}", violations=problems)
        event = self._synthetic_event(subject_id, "message.enqueued", context, request_id)
        run_id, new = await self._runs.create(
            tenant=tenant, journey="", version=0, subject_id=subject_id, trigger_event_id=event.event_id, event=event,
            first_step=compiled.first_step, inline_spec=canonical_json(spec),
        )
        if new:
            self._background(tenant, run_id)
        return run_id

    def _synthetic_event(self, subject_id: str, event_type: str, context: Any, request_id: str) -> event_pb2.Event:
        event = event_pb2.Event(event_id=f"req:{request_id}" if request_id else self._ids.new(), event_type=event_type,
                                subject_id=subject_id, source="overture.orchestrator")
        event.attributes.CopyFrom(context)
        event.occurred_at.FromDatetime(self._clock.now())
        return event

    def _background(self, tenant: str, run_id: str) -> None:
        # The RPC answers with the run as started; its steps go on here. A
        # crash before they finish leaves the run due, and the timer loop resumes it.
        task = asyncio.create_task(self._executor.advance(tenant, run_id))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def drain(self) -> None:
        """Wait for runs advancing in the background."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)


def _matches(rule: Any, event: event_pb2.Event) -> bool:
    try:
        return evaluate_expression(rule, {"attributes": struct_to_dict(event.attributes), "event_type": event.event_type})
    except Exception:  # noqa: BLE001 - a filter that cannot evaluate does not match
        return False
