"""PreviewJourney: the path a run would take, without sending anything.

A definition to preview gets the checks of publish (a template name that
cannot exist, an unknown rule set) and then is walked for a sample subject
and event: conditions are evaluated on the subject's profile, delays are
reported instead of waited, and send steps render their message exactly as
a send would (strictly), so a value the subject lacks shows up as the step's
error. Nothing is decided, reserved, stored or sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import rule_engine
import structlog

from overture.common.v1 import event_pb2, messaging_pb2
from overture.orchestrator.v1 import journey_pb2, run_pb2
from overture_runtime.errors import InvalidArgument, Unavailable
from overture_runtime.templates import event_scope, run_scope, template_scope

from .definition import CompiledJourney, compile_journey, evaluate_expression
from .journeys import JourneyStore, ReferenceCheck
from .rendering import RenderError, render_message

__all__ = ["Previewer"]

log = structlog.get_logger("overture.orchestrator")
_MAX_STEPS = 200
_PREVIEW_RUN = "preview"


class Previewer:
    """Walks journeys for PreviewJourney."""

    def __init__(self, *, journeys: JourneyStore, references: ReferenceCheck | None,
                 profile_of: Callable[[str, str], Awaitable[dict[str, Any]]]) -> None:
        self._journeys = journeys
        self._references = references
        self._profile_of = profile_of

    async def preview(self, tenant: str, *, name: str, spec: journey_pb2.JourneySpec | None, subject_id: str,
                      attributes: Any) -> list[run_pb2.StepRun]:
        """The steps a run of the journey *name* (its latest version), or of
        *spec*, would reach for *subject_id* and an event with *attributes*."""
        if spec is None:
            latest = await self._journeys.get(tenant=tenant, name=name)
            journey = await self._journeys.compiled(tenant, name, latest.version)
        else:
            compiled, problems = compile_journey(spec)
            if compiled is None:
                raise InvalidArgument(f"the journey is invalid: {problems[0].description}", violations=problems)
            if self._references is not None:
                await self._references.check(tenant, spec)
            journey = compiled
        trigger = journey.spec.trigger
        event = event_pb2.Event(event_id="preview", subject_id=subject_id, source="overture.orchestrator",
                                event_type=trigger.event.event_type if trigger.WhichOneof("kind") == "event" else "journey.triggered")
        event.attributes.CopyFrom(attributes)
        try:
            profile = await self._profile_of(tenant, subject_id)
        except Exception as error:  # noqa: BLE001 - whatever kept the profile away, the preview cannot go on
            log.warning("journey.preview_profile_unavailable", error=type(error).__name__)
            raise Unavailable("the subject's profile could not be read; retry", reason="PROFILE_UNAVAILABLE") from None
        return _walk(journey, name or "preview", {"profile": profile, "event": event_scope(event)})


def _walk(journey: CompiledJourney, name: str, scope: dict[str, Any]) -> list[run_pb2.StepRun]:
    steps: list[run_pb2.StepRun] = []
    current = journey.first_step
    while current and len(steps) < _MAX_STEPS:
        step = journey.steps[current]
        kind = step.WhichOneof("kind")
        result = run_pb2.StepRun(step_id=step.id, state=run_pb2.STEP_RUN_STATE_COMPLETED, attempts=0)
        current = step.next
        if kind == "send":
            full = template_scope(profile=scope["profile"], event=scope["event"],
                                  run=run_scope(run_id=_PREVIEW_RUN, journey=name, step_id=step.id))
            try:
                render_message(journey.templates, step.send.template, step.send.to, full, step_id=step.id)
            except RenderError as error:
                result.state, result.error = run_pb2.STEP_RUN_STATE_FAILED, str(error)
                steps.append(result)
                break
            channel = messaging_pb2.Channel.Name(step.send.channel).removeprefix("CHANNEL_").lower()
            result.outcome = (f"would send template {step.send.template!r} by {channel}, "
                              f"if rule set {journey.spec.rule_set!r} allows it at send time")
        elif kind == "condition":
            try:
                matched = evaluate_expression(journey.conditions[step.id], scope)
            except rule_engine.EngineError as error:
                result.state, result.error = run_pb2.STEP_RUN_STATE_FAILED, f"condition failed to evaluate: {error.message}"
                steps.append(result)
                break
            result.outcome = f"condition was {str(matched).lower()}"
            current = step.condition.then_step if matched else step.condition.else_step
        elif kind == "delay":
            result.state = run_pb2.STEP_RUN_STATE_WAITING
            result.outcome = f"would wait {step.delay.duration.ToTimedelta()}"
        elif kind == "exit":
            result.outcome = f"would exit{': goal ' + step.exit.goal if step.exit.goal else ''}"
            current = ""
        steps.append(result)
    return steps
