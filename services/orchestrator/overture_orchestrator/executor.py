"""Executing a claimed batch of tokens, node by node, with batched sends.

A batch moves every token as far as it can go now: pure nodes (condition,
delay, exit) run inline; the batch's sends are decided together with one
``EvaluateBatch`` in RESERVE mode, committed with one ``EvaluateBatch`` in
COMMIT mode just before the provider call, and delivered with one
``SendBatch``. The outcomes come back to the worker, which records them in
one transaction.

Every side effect carries a key derived from ``run_id:step_id``, so a batch
executed again after a crash repeats no effect: a decision is idempotent on
its id (derived from the run, the step and the decisions made there), and
connectors send at most once per idempotency key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import rule_engine
import structlog

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc, delivery_pb2
from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import decision_pb2, profile_service_pb2, profile_service_pb2_grpc, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.errors import OvertureError
from overture_runtime.protojson import from_json, struct_to_dict
from overture_runtime.templates import event_scope, profile_scope, run_scope, template_scope

from .definition import CompiledJourney, RenderError, compile_journey, evaluate_expression, render_message
from .journeys import JourneyStore
from .model import RunState, StepState, TokenState
from .runs import Attempt, Outcome, Work

__all__ = ["Executor"]

log = structlog.get_logger("overture.orchestrator")
D = decision_pb2
_NS = uuid.UUID("6f1c4d2e-8a5b-4c3d-9e7f-0a1b2c3d4e5f")
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_ADDRESS_TRAIT = {messaging_pb2.CHANNEL_EMAIL: "email", messaging_pb2.CHANNEL_SMS: "phone", messaging_pb2.CHANNEL_WEBHOOK: "webhook_url"}
_EVALUATE_CHUNK = 1000
_SEND_CHUNK = 500


class _Retry(Exception):
    """A transient failure: try the step again after a backoff."""


@dataclass
class _Token:
    """A claimed token while its batch executes."""

    work: Work
    journey: CompiledJourney | None
    attempts: list[Attempt] = field(default_factory=list)
    outcome: Outcome | None = None
    decision_id: str = ""
    rendered: dict[str, str] = field(default_factory=dict)
    address: str = ""


class Executor:
    """Runs journeys' nodes against the rules and connectors services."""

    def __init__(
        self, *, journeys: JourneyStore, settings: Settings, clock: Clock,
        rules: rules_service_pb2_grpc.RulesServiceStub, profiles: profile_service_pb2_grpc.ProfileServiceStub,
        connectors: connector_service_pb2_grpc.ConnectorServiceStub, max_steps: int = 50, profile_concurrency: int = 32,
    ) -> None:
        self._journeys = journeys
        self._settings = settings
        self._clock = clock
        self._rules = rules
        self._profiles = profiles
        self._connectors = connectors
        self._max_steps = max_steps
        self._profile_gate = asyncio.Semaphore(profile_concurrency)

    async def execute(self, batch: Sequence[Work]) -> list[Outcome]:
        """Move each token of *batch* until it waits, ends, or has taken
        ``max_steps`` steps (then it is due again at once); one outcome each."""
        tokens = [await self._prepare(work) for work in batch]
        profiles: dict[tuple[str, str], dict[str, Any] | Exception] = {}
        for _ in range(self._max_steps):
            ready = [t for t in tokens if t.outcome is None]
            if not ready:
                break
            await self._load_profiles(ready, profiles)
            sends: list[_Token] = []
            for token in ready:
                assert token.journey is not None
                step = token.journey.steps.get(token.work.node)
                if step is None:
                    self._fail(token, token.work.node, f"step {token.work.node!r} is not in version {token.work.journey_version}")
                    continue
                profile = profiles.get((token.work.tenant, token.work.subject_id))
                if isinstance(profile, Exception) and step.WhichOneof("kind") in ("send", "condition"):
                    self._retry(token, step, f"profile: {profile}")
                    continue
                kind = step.WhichOneof("kind")
                if kind == "send":
                    sends.append(token)
                elif kind == "condition":
                    self._condition(token, step, profile)  # type: ignore[arg-type]
                elif kind == "delay":
                    self._delay(token, step)
                elif kind == "exit":
                    self._complete(token, step, StepState.COMPLETED, "", f"exited{': goal ' + step.exit.goal if step.exit.goal else ''}")
                else:
                    self._fail(token, step.id, f"unsupported step kind {kind!r}")
            if sends:
                await self._sends(sends, profiles)
        for token in tokens:
            if token.outcome is None:  # took max_steps: due again at once, so one run cannot hold a worker
                token.outcome = Outcome(work=token.work, run_state=RunState.RUNNING, node=token.work.node, attempts=token.attempts)
        return [t.outcome for t in tokens if t.outcome is not None]

    async def _prepare(self, work: Work) -> _Token:
        token = _Token(work=work, journey=None)
        try:
            if work.inline_spec is not None:
                compiled, _ = compile_journey(from_json(work.inline_spec, journey_pb2.JourneySpec))
                token.journey = compiled
            else:
                if work.journey in await self._journeys.paused(work.tenant):
                    token.outcome = Outcome(work=work, run_state=RunState.CANCELLED, node="")
                    log.info("run.cancelled", run_id=work.run_id, reason="journey paused")
                    return token
                token.journey = await self._journeys.compiled(work.tenant, work.journey, work.journey_version)
        except OvertureError as error:
            self._fail(token, work.node, f"the journey cannot run: {error.message}")
        if token.journey is None and token.outcome is None:
            self._fail(token, work.node, "the journey does not compile")
        return token

    # -- outcomes ------------------------------------------------------------

    def _attempt(self, token: _Token, step_id: str, state: StepState, *, outcome: str = "", error: str = "",
                 wake: dt.datetime | None = None) -> Attempt:
        now = self._clock.now()
        attempt = Attempt(step_id=step_id, state=state, start_time=now, outcome=outcome, error=error, decision_id=token.decision_id,
                          end_time=None if state in (StepState.WAITING, StepState.RETRY) else now, wake_time=wake)
        token.attempts.append(attempt)
        return attempt

    def _complete(self, token: _Token, step: journey_pb2.Step, state: StepState, next_node: str, outcome: str,
                  *, delivery_id: str = "") -> None:
        """The step is done: the token moves along its edge, or the run ends."""
        self._attempt(token, step.id, state, outcome=outcome).delivery_id = delivery_id
        token.decision_id, token.rendered, token.address = "", {}, ""
        if next_node:
            token.work.node, token.work.attempts, token.work.evaluations, token.work.state = next_node, 0, 0, TokenState.READY
        else:
            token.outcome = Outcome(work=token.work, run_state=RunState.COMPLETED, node="", attempts=token.attempts)

    def _wait(self, token: _Token, step: journey_pb2.Step, until: dt.datetime, outcome: str) -> None:
        self._attempt(token, step.id, StepState.WAITING, outcome=outcome, wake=until)
        token.work.state = TokenState.WAITING
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=TokenState.WAITING,
                                due_time=until, attempts=token.attempts)

    def _retry(self, token: _Token, step: journey_pb2.Step, error: str) -> None:
        """A transient failure: again after a backoff, or failed for good after the step's attempts."""
        policy = step.retry
        token.work.attempts += 1
        if token.work.attempts >= (policy.max_attempts or 5):
            self._fail(token, step.id, f"gave up after {token.work.attempts} attempts: {error}")
            return
        initial = policy.initial_backoff.ToTimedelta() if policy.HasField("initial_backoff") else dt.timedelta(seconds=1)
        ceiling = policy.max_backoff.ToTimedelta() if policy.HasField("max_backoff") else dt.timedelta(minutes=5)
        wake = self._clock.now() + min(initial * (2 ** (token.work.attempts - 1)), ceiling)
        self._attempt(token, step.id, StepState.RETRY, error=error, wake=wake)
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=TokenState.RETRY, due_time=wake,
                                attempts=token.attempts)

    def _fail(self, token: _Token, step_id: str, error: str) -> None:
        self._attempt(token, step_id, StepState.FAILED, error=error)
        token.outcome = Outcome(work=token.work, run_state=RunState.FAILED, node=step_id, attempts=token.attempts, dead_letter=error)
        log.warning("run.dead_lettered", run_id=token.work.run_id, step_id=step_id, error=error[:200])

    # -- pure nodes ----------------------------------------------------------

    def _condition(self, token: _Token, step: journey_pb2.Step, profile: dict[str, Any]) -> None:
        assert token.journey is not None
        scope = {"event": event_scope(token.work.trigger_event), "profile": profile}
        try:
            matched = evaluate_expression(token.journey.conditions[step.id], scope)
        except rule_engine.EngineError as error:
            self._fail(token, step.id, f"condition failed to evaluate: {error.message}")
            return
        self._complete(token, step, StepState.COMPLETED, step.condition.then_step if matched else step.condition.else_step,
                       f"condition was {str(matched).lower()}")

    def _delay(self, token: _Token, step: journey_pb2.Step) -> None:
        # A waiting token is claimed only once due, so it never fires early.
        if token.work.state == TokenState.WAITING:
            self._complete(token, step, StepState.COMPLETED, step.next, "delay elapsed")
            return
        wake = self._clock.now() + step.delay.duration.ToTimedelta()
        self._wait(token, step, wake, f"waiting until {wake.isoformat()}")

    # -- profiles ------------------------------------------------------------

    async def _load_profiles(self, ready: Sequence[_Token], profiles: dict[tuple[str, str], dict[str, Any] | Exception]) -> None:
        wanted = {(t.work.tenant, t.work.subject_id) for t in ready if t.journey is not None
                  and (step := t.journey.steps.get(t.work.node)) is not None and step.WhichOneof("kind") in ("send", "condition")}
        missing = [key for key in wanted if key not in profiles]

        async def one(tenant: str, subject_id: str) -> None:
            async with self._profile_gate:
                try:
                    profiles[(tenant, subject_id)] = await self.profile_of(tenant, subject_id)
                except _Retry as error:
                    profiles[(tenant, subject_id)] = error

        await asyncio.gather(*(one(tenant, subject) for tenant, subject in missing))

    async def profile_of(self, tenant: str, subject_id: str) -> dict[str, Any]:
        """The ``profile`` templates and conditions read; empty for an unknown
        subject. Transient failures raise the executor's retry signal."""
        try:
            response = await self._call(self._profiles.GetProfile, profile_service_pb2.GetProfileRequest(subject_id=subject_id),
                                        tenant, "profile")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return profile_scope(subject_id=subject_id, traits={}, segments=[], timezone="")
            raise _Retry(f"profile: {error.code().name}") from None
        profile = response.profile
        return profile_scope(subject_id=subject_id, traits=struct_to_dict(profile.traits), segments=profile.segments,
                             timezone=profile.timezone)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, tenant: str, what: str, *, batch: bool = False) -> Any:
        # A batch of 500 sends can outlast one RPC's deadline on a slow relay;
        # it completes either way, and a retry would only find duplicates.
        timeout = self._settings.rpc_timeout_seconds * (6 if batch else 1)
        try:
            return await method(request, metadata=call_metadata(self._settings, tenant), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                raise _Retry(f"{what}: {error.code().name}: {error.details()}") from None
            raise

    # -- sends ---------------------------------------------------------------

    async def _sends(self, tokens: Sequence[_Token], profiles: Mapping[tuple[str, str], Any]) -> None:
        by_tenant: dict[str, list[_Token]] = {}
        for token in tokens:
            by_tenant.setdefault(token.work.tenant, []).append(token)
        for tenant, group in by_tenant.items():
            for start in range(0, len(group), _EVALUATE_CHUNK):
                await self._send_group(tenant, group[start:start + _EVALUATE_CHUNK], profiles)

    def _step(self, token: _Token) -> journey_pb2.Step:
        assert token.journey is not None
        return token.journey.steps[token.work.node]

    async def _send_group(self, tenant: str, tokens: Sequence[_Token], profiles: Mapping[tuple[str, str], Any]) -> None:
        """Decide, commit and deliver the sends of one tenant."""
        requests = []
        for token in tokens:
            step, work = self._step(token), token.work
            assert token.journey is not None
            token.decision_id = str(uuid.uuid5(_NS, f"{tenant}:{work.run_id}:{step.id}:{work.evaluations}"))
            requests.append(rules_service_pb2.EvaluateRequest(
                rule_set=token.journey.spec.rule_set, subject_id=work.subject_id, channel=step.send.channel, tags=step.send.tags,
                category=step.send.category, priority=step.send.priority, context=work.trigger_event.attributes,
                mode=D.EVALUATION_MODE_RESERVE, decision_id=token.decision_id))
        decided = await self._evaluate(tenant, tokens, requests, "rules")
        allowed: list[_Token] = []
        releases: list[_Token] = []
        now = self._clock.now()
        for token, result in decided:
            step = self._step(token)
            decision = result.decision
            if not decision.allowed:
                denying = [v for v in decision.verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]
                if denying and all(v.kind == D.VERDICT_KIND_SYSTEM for v in denying):
                    # Failing closed on a store outage is not a verdict about
                    # the person: decide again later, with a new decision.
                    token.work.evaluations += 1
                    self._retry(token, step, decision.summary)
                else:
                    self._complete(token, step, StepState.SKIPPED, step.next, decision.summary)
                continue
            if decision.HasField("defer_until") and decision.defer_until.ToDatetime(tzinfo=dt.UTC) > now:
                wake = decision.defer_until.ToDatetime(tzinfo=dt.UTC)
                token.work.evaluations += 1
                token.work.attempts = 0
                self._wait(token, step, wake, f"deferred by quiet hours until {wake.isoformat()}")
                continue
            profile = profiles[(tenant, token.work.subject_id)]
            assert token.journey is not None
            scope = template_scope(profile=profile, event=event_scope(token.work.trigger_event),
                                   run=run_scope(run_id=token.work.run_id, journey=token.work.journey, step_id=step.id))
            try:
                token.rendered = render_message(token.journey, step, scope)
            except RenderError as error:
                releases.append(token)
                self._fail(token, step.id, str(error))
                continue
            token.address = token.rendered["to"] or _default_address(step.send, profile, scope["event"])
            if not token.address:
                releases.append(token)
                self._complete(token, step, StepState.SKIPPED, step.next, "the subject has no address for this channel")
                continue
            allowed.append(token)
        await self._release(tenant, releases)
        if not allowed:
            return
        # Commit before the provider call: a held reservation can still be
        # preempted by a higher-priority message, a committed one cannot, so
        # the cap holds even when messages race.
        committed = await self._evaluate(tenant, allowed, [
            rules_service_pb2.EvaluateRequest(decision_id=t.decision_id, mode=D.EVALUATION_MODE_COMMIT) for t in allowed], "rules")
        deliver: list[_Token] = []
        for token, result in committed:
            step = self._step(token)
            state = result.decision.reservation_state
            if state == D.RESERVATION_STATE_PREEMPTED:
                self._complete(token, step, StepState.SKIPPED, step.next,
                               f"denied by frequency cap: a higher-priority message ({result.decision.preempted_by}) took the slot")
            elif state in (D.RESERVATION_STATE_EXPIRED, D.RESERVATION_STATE_RELEASED):
                token.work.evaluations += 1
                self._retry(token, step, "the reservation lapsed before the send; deciding again")
            else:
                deliver.append(token)
        for start in range(0, len(deliver), _SEND_CHUNK):
            await self._deliver(tenant, deliver[start:start + _SEND_CHUNK])

    async def _evaluate(self, tenant: str, tokens: Sequence[_Token], requests: Sequence[rules_service_pb2.EvaluateRequest],
                        what: str) -> list[tuple[_Token, Any]]:
        """One EvaluateBatch; the (token, result) pairs that have a decision.
        Tokens whose item was refused fail; a transient failure retries them all."""
        try:
            response = await self._call(self._rules.EvaluateBatch, rules_service_pb2.EvaluateBatchRequest(requests=requests), tenant, what)
        except _Retry as error:
            for token in tokens:
                self._retry(token, self._step(token), str(error))
            return []
        except grpc.aio.AioRpcError as error:
            for token in tokens:
                self._fail(token, self._step(token).id, f"rules refused: {error.code().name}: {error.details()}")
            return []
        decided = []
        for token, result in zip(tokens, response.results, strict=True):
            if result.violations:
                first = result.violations[0]
                self._fail(token, self._step(token).id, f"rules refused: {first.field}: {first.description}")
            else:
                decided.append((token, result))
        return decided

    async def _release(self, tenant: str, tokens: Sequence[_Token]) -> None:
        """Give reservations back; if that fails, they expire on their own."""
        if not tokens:
            return
        try:
            await self._call(self._rules.EvaluateBatch, rules_service_pb2.EvaluateBatchRequest(requests=[
                rules_service_pb2.EvaluateRequest(decision_id=t.attempts[-1].decision_id or t.decision_id, mode=D.EVALUATION_MODE_RELEASE)
                for t in tokens]), tenant, "rules")
        except (grpc.aio.AioRpcError, _Retry) as error:
            log.warning("run.release_failed", count=len(tokens), error=str(error)[:200])

    async def _deliver(self, tenant: str, tokens: Sequence[_Token]) -> None:
        messages = []
        for token in tokens:
            step, work = self._step(token), token.work
            messages.append(delivery_pb2.Message(
                idempotency_key=f"{work.run_id}:{step.id}", channel=step.send.channel, subject_id=work.subject_id, address=token.address,
                content=delivery_pb2.MessageContent(subject=token.rendered["subject"], text_body=token.rendered["text_body"],
                                                    html_body=token.rendered["html_body"]),
                category=step.send.category, tags=step.send.tags,
                metadata={"run_id": work.run_id, "journey": work.journey, "step_id": step.id, "decision_id": token.decision_id},
            ))
        results = await self._send_batch(tenant, messages)
        releases = []
        for token, result in zip(tokens, results, strict=True):
            step = self._step(token)
            if isinstance(result, _Retry):
                self._retry(token, step, str(result))
            elif isinstance(result, str):
                releases.append(token)
                self._fail(token, step.id, f"connectors refused: {result}")
            elif result.status == messaging_pb2.DELIVERY_STATUS_SENDING:
                self._retry(token, step, "the delivery is still in flight")
            elif result.status == messaging_pb2.DELIVERY_STATUS_FAILED:
                releases.append(token)
                self._fail(token, step.id, f"delivery failed: {result.last_error}")
            else:
                name = messaging_pb2.DeliveryStatus.Name(result.status).removeprefix("DELIVERY_STATUS_").lower()
                self._complete(token, step, StepState.COMPLETED, step.next, "sent" if name == "sent" else f"delivery {name}",
                               delivery_id=result.delivery_id)
        await self._release(tenant, releases)

    async def _send_batch(self, tenant: str, messages: Sequence[delivery_pb2.Message]) -> list[Any]:
        """One result per message: its Delivery, a _Retry, or why connectors refused it."""
        try:
            response = await self._call(self._connectors.SendBatch, connector_service_pb2.SendBatchRequest(messages=messages), tenant,
                                        "connectors", batch=True)
        except _Retry as error:
            return [error] * len(messages)
        except grpc.aio.AioRpcError as error:
            return [f"{error.code().name}: {error.details()}"] * len(messages)
        return [_batch_result(r) for r in response.results]


def _batch_result(result: Any) -> Any:
    """A SendBatch result as what ``Send`` would have given: the delivery, a
    retry for what the provider could not take for now, or the refusal."""
    if result.HasField("error"):
        error = result.error
        if error.code == grpc.StatusCode.UNAVAILABLE.value[0]:
            return _Retry(f"connectors: UNAVAILABLE: {error.message}")
        return f"{error.reason}: {error.message}"
    if result.violations:
        return f"{result.violations[0].field}: {result.violations[0].description}"
    if result.HasField("delivery"):
        return result.delivery
    return _Retry("the connector gave no result")


def _default_address(send: journey_pb2.SendStep, profile: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """The channel's trait (``email`` for email) of the profile, then of the
    event's attributes, when the step has no ``to``."""
    trait = _ADDRESS_TRAIT.get(send.channel, "")
    value = profile.get("traits", {}).get(trait) or event["attributes"].get(trait)
    return str(value).strip() if value else ""
