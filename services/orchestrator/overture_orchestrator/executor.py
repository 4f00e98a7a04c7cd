"""Advancing runs, step by step.

A run is advanced only under its lease. Each step's outcome is recorded
before the run moves on, and every side effect carries a key derived from
``run_id:step_id``, so a run resumed after a crash repeats no effect: the
rules decision is idempotent on its id, and connectors send at most once
per key.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import rule_engine
import sqlalchemy as sa
import structlog

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc, delivery_pb2
from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import decision_pb2, profile_service_pb2, profile_service_pb2_grpc, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.protojson import from_json, struct_to_dict
from overture_runtime.templates import event_scope, profile_scope, run_scope, template_scope

from .definition import CompiledJourney, RenderError, compile_journey, evaluate_expression, render_message
from .journeys import JourneyStore
from .runs import RunRecord, RunStore, StepRecord
from .tables import dead_letters

__all__ = ["Executor"]

log = structlog.get_logger("overture.orchestrator")
D = decision_pb2
_NS = uuid.UUID("6f1c4d2e-8a5b-4c3d-9e7f-0a1b2c3d4e5f")
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_ADDRESS_TRAIT = {messaging_pb2.CHANNEL_EMAIL: "email", messaging_pb2.CHANNEL_SMS: "phone", messaging_pb2.CHANNEL_WEBHOOK: "webhook_url"}


@dataclass(frozen=True)
class StepResult:
    """What executing a step decided."""

    state: str
    """The step's state: completed, skipped, waiting, retry or failed."""
    next_step: str = ""
    """Where the run goes after a completed or skipped step."""
    wake_time: dt.datetime | None = None
    """When a waiting or retrying step runs again."""


class _Retry(Exception):
    """A transient failure: try the step again after a backoff."""


class Executor:
    """Runs journeys' steps against the rules and connectors services."""

    def __init__(
        self, *, db: Database, runs: RunStore, journeys: JourneyStore, settings: Settings, clock: Clock, ids: IdGenerator,
        rules: rules_service_pb2_grpc.RulesServiceStub, profiles: profile_service_pb2_grpc.ProfileServiceStub,
        connectors: connector_service_pb2_grpc.ConnectorServiceStub,
    ) -> None:
        self._db = db
        self._runs = runs
        self._journeys = journeys
        self._settings = settings
        self._clock = clock
        self._ids = ids
        self._rules = rules
        self._profiles = profiles
        self._connectors = connectors
        self._active: set[tuple[str, str]] = set()

    async def advance(self, tenant: str, run_id: str) -> None:
        """Execute the run's steps until it waits or ends. A run already being
        advanced in this process is left to that task."""
        key = (tenant, run_id)
        if key in self._active:
            return
        self._active.add(key)
        try:
            await self._advance(tenant, run_id)
        finally:
            self._active.discard(key)

    async def _advance(self, tenant: str, run_id: str) -> None:
        run = await self._runs.lease(tenant, run_id)
        if run is None:
            return
        if run.inline_spec is not None:
            compiled, _ = compile_journey(from_json(run.inline_spec, journey_pb2.JourneySpec))
            assert compiled is not None
            journey = compiled
        else:
            if await self._journeys.state(tenant, run.journey) == "paused":
                await self._runs.finish(run, "cancelled")
                log.info("run.cancelled", run_id=run_id, reason="journey paused")
                return
            journey = await self._journeys.compiled(tenant, run.journey, run.journey_version)
        positions = {s.id: i for i, s in enumerate(journey.spec.steps)}
        while run.state in ("running", "waiting") and run.current_step:
            step = journey.steps[run.current_step]
            record = await self._runs.step(tenant, run_id, step.id, positions[step.id])
            result = await self._execute(run, journey, step, record)
            if result.state in ("completed", "skipped"):
                record.end_time = self._clock.now()
                record.wake_time = None
                run_state = "running" if result.next_step else "completed"
                await self._runs.save(run, record, run_state=run_state, next_step=result.next_step, wake_time=self._clock.now())
            elif result.state in ("waiting", "retry"):
                record.state = "waiting" if result.state == "waiting" else "running"
                record.wake_time = result.wake_time
                await self._runs.save(run, record, run_state="waiting", next_step=step.id, wake_time=result.wake_time)
                return
            else:
                record.end_time = self._clock.now()
                await self._runs.save(run, record, run_state="failed", next_step=step.id, wake_time=None)
                await self._dead_letter(run, record)
                return

    async def _execute(self, run: RunRecord, journey: CompiledJourney, step: journey_pb2.Step, record: StepRecord) -> StepResult:
        record.attempts += 1
        kind = step.WhichOneof("kind")
        try:
            if kind == "send":
                return await self._send(run, journey, step, record)
            if kind == "condition":
                scope = {"event": event_scope(run.trigger_event), "profile": await self._profile(run)}
                try:
                    matched = evaluate_expression(journey.conditions[step.id], scope)
                except rule_engine.EngineError as error:
                    record.state, record.error = "failed", f"condition failed to evaluate: {error.message}"
                    return StepResult("failed")
                record.state, record.outcome = "completed", f"condition was {str(matched).lower()}"
                return StepResult("completed", step.condition.then_step if matched else step.condition.else_step)
            if kind == "delay":
                if record.state == "waiting" and record.wake_time is not None and record.wake_time > self._clock.now():
                    return StepResult("waiting", wake_time=record.wake_time)  # never early, whoever advanced the run
                if record.state == "waiting":
                    record.state, record.outcome = "completed", "delay elapsed"
                    return StepResult("completed", step.next)
                wake = self._clock.now() + step.delay.duration.ToTimedelta()
                record.state, record.outcome, record.attempts = "waiting", f"waiting until {wake.isoformat()}", 0
                return StepResult("waiting", wake_time=wake)
            if kind == "exit":
                record.state, record.outcome = "completed", f"exited{': goal ' + step.exit.goal if step.exit.goal else ''}"
                return StepResult("completed", "")
        except _Retry as error:
            result = self._retry(step, record, str(error))
            if result.state == "failed" and kind == "send" and record.decision_id:
                await self._release(run, record.decision_id)  # never sent: give the cap slot back
            return result
        record.state, record.error = "failed", f"unsupported step kind {kind!r}"
        return StepResult("failed")

    def _retry(self, step: journey_pb2.Step, record: StepRecord, error: str) -> StepResult:
        policy = step.retry
        max_attempts = policy.max_attempts or 5
        record.error = error
        if record.attempts >= max_attempts:
            record.state = "failed"
            record.error = f"gave up after {record.attempts} attempts: {error}"
            return StepResult("failed")
        initial = policy.initial_backoff.ToTimedelta() if policy.HasField("initial_backoff") else dt.timedelta(seconds=1)
        ceiling = policy.max_backoff.ToTimedelta() if policy.HasField("max_backoff") else dt.timedelta(minutes=5)
        delay = min(initial * (2 ** (record.attempts - 1)), ceiling)
        return StepResult("retry", wake_time=self._clock.now() + delay)

    async def _call(self, method: Any, request: Any, tenant: str, what: str) -> Any:
        try:
            return await method(request, metadata=call_metadata(self._settings, tenant), timeout=self._settings.rpc_timeout_seconds)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                raise _Retry(f"{what}: {error.code().name}: {error.details()}") from None
            raise

    async def _profile(self, run: RunRecord) -> dict[str, Any]:
        return await self.profile_of(run.tenant, run.subject_id)

    async def profile_of(self, tenant: str, subject_id: str) -> dict[str, Any]:
        """The ``profile`` templates and conditions read; empty for an unknown
        subject. Transient failures raise the executor's retry signal."""
        try:
            response = await self._call(self._profiles.GetProfile, profile_service_pb2.GetProfileRequest(subject_id=subject_id),
                                        tenant, "profile")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return profile_scope(subject_id=subject_id, traits={}, segments=[], timezone="")
            raise
        profile = response.profile
        return profile_scope(subject_id=subject_id, traits=struct_to_dict(profile.traits), segments=profile.segments,
                             timezone=profile.timezone)

    async def _release(self, run: RunRecord, decision_id: str) -> None:
        """Give a reservation back; if that fails, it expires on its own."""
        try:
            await self._call(self._rules.Evaluate, rules_service_pb2.EvaluateRequest(
                decision_id=decision_id, mode=D.EVALUATION_MODE_RELEASE), run.tenant, "rules")
        except (grpc.aio.AioRpcError, _Retry) as error:
            log.warning("run.release_failed", run_id=run.run_id, error=str(error)[:200])

    async def _commit(self, run: RunRecord, decision_id: str) -> decision_pb2.Decision:
        """Confirm a reservation just before the send; transient failures retry the step."""
        try:
            response = await self._call(self._rules.Evaluate, rules_service_pb2.EvaluateRequest(
                decision_id=decision_id, mode=D.EVALUATION_MODE_COMMIT), run.tenant, "rules")
        except grpc.aio.AioRpcError as error:
            raise _Retry(f"rules: {error.code().name}: {error.details()}") from None
        decision: decision_pb2.Decision = response.decision
        return decision

    async def _send(self, run: RunRecord, journey: CompiledJourney, step: journey_pb2.Step, record: StepRecord) -> StepResult:
        send = step.send
        tenant = run.tenant
        decision_id = str(uuid.uuid5(_NS, f"{tenant}:{run.run_id}:{step.id}:{record.evaluations}"))
        record.decision_id = decision_id
        try:
            profile = await self._profile(run)
            response = await self._call(self._rules.Evaluate, rules_service_pb2.EvaluateRequest(
                rule_set=journey.spec.rule_set, subject_id=run.subject_id, channel=send.channel, tags=send.tags,
                category=send.category, priority=send.priority, context=run.trigger_event.attributes,
                mode=D.EVALUATION_MODE_RESERVE, decision_id=decision_id,
            ), tenant, "rules")
        except grpc.aio.AioRpcError as error:
            record.state, record.error = "failed", f"rules refused: {error.code().name}: {error.details()}"
            return StepResult("failed")
        decision = response.decision
        if not decision.allowed:
            denying = [v for v in decision.verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]
            if denying and all(v.kind == D.VERDICT_KIND_SYSTEM for v in denying):
                # Failing closed on a store outage is not a verdict about the
                # person: decide again later, with a new decision.
                record.evaluations += 1
                raise _Retry(decision.summary)
            record.state, record.outcome = "skipped", decision.summary
            return StepResult("skipped", step.next)
        now = self._clock.now()
        if decision.HasField("defer_until") and decision.defer_until.ToDatetime(tzinfo=dt.UTC) > now:
            wake = decision.defer_until.ToDatetime(tzinfo=dt.UTC)
            record.evaluations += 1
            record.state, record.outcome, record.attempts = "waiting", f"deferred by quiet hours until {wake.isoformat()}", 0
            return StepResult("waiting", wake_time=wake)
        scope = template_scope(profile=profile, event=event_scope(run.trigger_event),
                               run=run_scope(run_id=run.run_id, journey=run.journey, step_id=step.id))
        try:
            rendered = render_message(journey, step, scope)
        except RenderError as error:
            await self._release(run, decision_id)
            record.state, record.error = "failed", str(error)
            return StepResult("failed")
        address = rendered["to"] or _default_address(send, profile, scope["event"])
        content = delivery_pb2.MessageContent(subject=rendered["subject"], text_body=rendered["text_body"], html_body=rendered["html_body"])
        if not address:
            await self._release(run, decision_id)
            record.state, record.outcome = "skipped", "the subject has no address for this channel"
            return StepResult("skipped", step.next)
        # Commit before the provider call: a held reservation can still be
        # preempted by a higher-priority message, a committed one cannot, so
        # the cap holds even when messages race.
        committed = await self._commit(run, decision_id)
        if committed.reservation_state == D.RESERVATION_STATE_PREEMPTED:
            record.state = "skipped"
            record.outcome = f"denied by frequency cap: a higher-priority message ({committed.preempted_by}) took the slot"
            return StepResult("skipped", step.next)
        if committed.reservation_state in (D.RESERVATION_STATE_EXPIRED, D.RESERVATION_STATE_RELEASED):
            record.evaluations += 1
            raise _Retry("the reservation lapsed before the send; deciding again")
        message = delivery_pb2.Message(
            idempotency_key=f"{run.run_id}:{step.id}", channel=send.channel, subject_id=run.subject_id, address=address,
            content=content, category=send.category, tags=send.tags,
            metadata={"run_id": run.run_id, "journey": run.journey, "step_id": step.id, "decision_id": decision_id},
        )
        try:
            sent = await self._call(self._connectors.Send, connector_service_pb2.SendRequest(message=message), tenant, "connectors")
        except grpc.aio.AioRpcError as error:
            await self._release(run, decision_id)
            record.state, record.error = "failed", f"connectors refused: {error.code().name}: {error.details()}"
            return StepResult("failed")
        delivery = sent.delivery
        record.delivery_id = delivery.delivery_id
        status = delivery.status
        if status == messaging_pb2.DELIVERY_STATUS_SENDING:
            raise _Retry("the delivery is still in flight")
        if status == messaging_pb2.DELIVERY_STATUS_FAILED:
            await self._release(run, decision_id)
            record.state, record.error = "failed", f"delivery failed: {delivery.last_error}"
            return StepResult("failed")
        name = messaging_pb2.DeliveryStatus.Name(status).removeprefix("DELIVERY_STATUS_").lower()
        record.state, record.outcome = "completed", "sent" if name == "sent" else f"delivery {name}"
        return StepResult("completed", step.next)

    async def _dead_letter(self, run: RunRecord, record: StepRecord) -> None:
        log.warning("run.dead_lettered", run_id=run.run_id, step_id=record.step_id, error=record.error[:200])
        async with self._db.begin() as conn:
            await conn.execute(sa.insert(dead_letters).values(
                tenant=run.tenant, entry_id=self._ids.new(), kind="run", ref=run.run_id, payload=run.trigger_event.SerializeToString(),
                attempts=record.attempts, last_error=record.error, create_time=self._clock.now()))


def _default_address(send: journey_pb2.SendStep, profile: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """The channel's trait (``email`` for email) of the profile, then of the
    event's attributes, when the step has no ``to``."""
    trait = _ADDRESS_TRAIT.get(send.channel, "")
    value = profile.get("traits", {}).get(trait) or event["attributes"].get(trait)
    return str(value).strip() if value else ""
