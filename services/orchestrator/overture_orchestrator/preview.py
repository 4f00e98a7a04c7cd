"""PreviewJourney: the path a run would take, with no side effect at all.

A definition to preview gets the checks of publish (a template name that
cannot exist, an unknown rule set); a published journey is previewed at its
latest version. The subject's profile is the stored one or one the caller
gives. The trigger's filter and profile condition say whether the subject
would enter; the steps are walked either way (:mod:`.walk`, the engine's own
semantics in simulated time), and each send is decided by the rules service
in dry-run CHECK mode (:mod:`.dryrun`): nothing is reserved, stored or sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import rule_engine
import structlog
from google.protobuf import struct_pb2

from overture.common.v1 import event_pb2, messaging_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, run_pb2
from overture.rules.v1 import decision_pb2, profile_pb2, rules_service_pb2_grpc
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.errors import InvalidArgument, Unavailable
from overture_runtime.privacy import mask
from overture_runtime.templates import event_scope, profile_scope

from .calls import Transient
from .definition import SEGMENT_ENTERED, CompiledJourney, compile_journey, evaluate_expression, event_matches
from .dryrun import DrySend, decide_dry
from .inactivity import INACTIVE_EVENT
from .journeys import JourneyStore, ReferenceCheck
from .profiles import ERASED, ProfileReader, Profiles, scope_of
from .schedules import SCHEDULED_EVENT
from .sends import mask_url
from .walk import Outgoing, Walk

__all__ = ["Previewer"]

log = structlog.get_logger("overture.orchestrator")
OS = orchestrator_service_pb2
D = decision_pb2


class Previewer:
    """Walks journeys for PreviewJourney."""

    def __init__(self, *, journeys: JourneyStore, references: ReferenceCheck | None, profiles: ProfileReader,
                 rules: rules_service_pb2_grpc.RulesServiceStub, settings: Settings, clock: Clock) -> None:
        self._journeys = journeys
        self._references = references
        self._profiles = profiles
        self._rules = rules
        self._settings = settings
        self._clock = clock

    async def preview(self, tenant: str, *, name: str, spec: journey_pb2.JourneySpec | None, subject_id: str,
                      attributes: struct_pb2.Struct, profile: profile_pb2.Profile | None = None) -> OS.PreviewJourneyResponse:
        """The path a run of the journey *name* (its latest version), or of
        *spec*, would take for *subject_id* and an event with *attributes*,
        on the subject's stored profile or on *profile*."""
        journey = await self._journey(tenant, name, spec)
        now = self._clock.now()
        event = _event(journey.spec.trigger, subject_id, attributes, now)
        scope, erased = await self._profile(tenant, subject_id, profile)
        response = OS.PreviewJourneyResponse()
        response.entry_reason = _entry_reason(journey, event, scope, erased)
        response.entered = not response.entry_reason
        if erased:
            response.steps.append(run_pb2.StepRun(step_id=journey.first_step, state=run_pb2.STEP_RUN_STATE_SKIPPED,
                                                  outcome="skipped: the subject's profile was erased"))
            return response
        walked = Walk(journey, name=name or "preview", subject_id=subject_id, event=event, profile=scope, now=now).run()
        sends = [m for m in walked.messages if m.step.WhichOneof("kind") == "send"]
        decisions = await decide_dry(self._settings, self._rules, tenant, [
            DrySend(rule_set=journey.spec.rule_set, subject_id=subject_id, step=m.step, context=event.attributes, at=m.at, profile=profile)
            for m in sends])
        decided = {id(m): d for m, d in zip(sends, decisions, strict=True)}
        for message in walked.messages:
            decision = decided.get(id(message))
            if decision is not None:
                _settle(message, decision)
            response.messages.append(_previewed(message, decision))
        response.steps.extend(walked.steps)  # after _settle completed the sends' records
        return response

    async def _journey(self, tenant: str, name: str, spec: journey_pb2.JourneySpec | None) -> CompiledJourney:
        if spec is None:
            latest = await self._journeys.get(tenant=tenant, name=name)
            return await self._journeys.compiled(tenant, name, latest.version)
        compiled, problems = compile_journey(spec)
        if compiled is None:
            raise InvalidArgument(f"the journey is invalid: {problems[0].description}", violations=problems)
        if self._references is not None:
            await self._references.check(tenant, spec)
        return compiled

    async def _profile(self, tenant: str, subject_id: str, given: profile_pb2.Profile | None) -> tuple[dict[str, Any], bool]:
        """The profile scope to walk with, and whether the subject is erased."""
        if given is not None:
            return scope_of(subject_id, given), given.erased
        found: Profiles = {}
        await self._profiles.load([(tenant, subject_id)], found)
        profile = found[(tenant, subject_id)]
        if isinstance(profile, Transient):
            log.warning("journey.preview_profile_unavailable", error=str(profile)[:200])
            raise Unavailable("the subject's profile could not be read; retry", reason="PROFILE_UNAVAILABLE")
        if profile is ERASED:
            return profile_scope(subject_id=subject_id, traits={}, segments=[], timezone=""), True
        assert isinstance(profile, dict)
        return profile, False


def _event(trigger: journey_pb2.JourneyTrigger, subject_id: str, attributes: struct_pb2.Struct, now: dt.datetime) -> event_pb2.Event:
    """The trigger event a preview walks with."""
    kind = trigger.WhichOneof("kind")
    event_type = {"event": trigger.event.event_type, "segment_entered": SEGMENT_ENTERED, "inactivity": INACTIVE_EVENT,
                  "schedule": SCHEDULED_EVENT}.get(kind or "", "journey.triggered")
    event = event_pb2.Event(event_id="preview", subject_id=subject_id, source="overture.orchestrator", event_type=event_type)
    event.attributes.CopyFrom(attributes)
    if kind == "segment_entered" and "segment" not in event.attributes.fields:
        event.attributes["segment"] = trigger.segment_entered.segment
    if kind == "inactivity" and "inactive_for" not in event.attributes.fields:
        event.attributes["inactive_for"] = trigger.inactivity.event_type
    event.occurred_at.FromDatetime(now)
    return event


def _entry_reason(journey: CompiledJourney, event: event_pb2.Event, profile: dict[str, Any], erased: bool) -> str:
    """Why the subject would not enter on *event*, or empty when it would."""
    if erased:
        return "the subject's profile was erased"
    if journey.filter is not None and not event_matches(journey.filter, event):
        return "the event does not pass the trigger's filter"
    if journey.profile_condition is not None:
        try:
            held = evaluate_expression(journey.profile_condition, {"profile": profile, "event": event_scope(event)})
        except rule_engine.EngineError:
            held = False
        if not held:
            return "the profile does not meet the trigger's profile condition"
    return ""


def _settle(message: Outgoing, decision: decision_pb2.Decision) -> None:
    """Complete a send's record with the decision."""
    record = message.record
    if not decision.allowed:
        record.state, record.outcome = run_pb2.STEP_RUN_STATE_SKIPPED, f"would not send: {decision.summary}"
    elif decision.HasField("defer_until"):
        record.outcome = f"{record.outcome}, deferred by quiet hours until {decision.defer_until.ToJsonString()}"
        record.wake_time.CopyFrom(decision.defer_until)


def _previewed(message: Outgoing, decision: decision_pb2.Decision | None) -> OS.PreviewedMessage:
    rendered = message.rendered
    webhook = message.channel == messaging_pb2.CHANNEL_WEBHOOK
    found = OS.PreviewedMessage(step_id=message.step.id, channel=message.channel,
                                to=mask_url(message.address) if webhook else mask(message.address),
                                subject=rendered["subject"], text_body=rendered["text_body"], html_body=rendered["html_body"])
    if decision is not None:
        found.decision.CopyFrom(decision)
    return found
