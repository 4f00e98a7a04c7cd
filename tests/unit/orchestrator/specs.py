"""Builders of journey definitions for the orchestrator's unit tests, and
the two ways a test reads what :func:`compile_journey` made of one."""

from __future__ import annotations

import datetime as dt

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.definition import CompiledJourney, compile_journey
from overture_runtime.errors import FieldViolation

__all__ = ["compiled", "condition", "delay", "duration", "exit_step", "journey", "outcome", "send", "step", "violations_of"]


def duration(**length: float) -> duration_pb2.Duration:
    """A Duration of ``dt.timedelta(**length)``."""
    value = duration_pb2.Duration()
    value.FromTimedelta(dt.timedelta(**length))
    return value


def step(id_: str, next_: str = "", *, max_visits: int = 0, **kind: Message) -> J.Step:
    """A step of the one kind given as a keyword (``delay=J.DelayStep(...)``)."""
    return J.Step(id=id_, next=next_, max_visits=max_visits, **kind)  # type: ignore[arg-type]


def send(id_: str, next_: str = "", template: str = "welcome", *, max_visits: int = 0, **fields: object) -> J.Step:
    """A send step of the welcome template by email; *fields* are the SendStep's."""
    return J.Step(id=id_, next=next_, max_visits=max_visits,
                  send=J.SendStep(channel=M.CHANNEL_EMAIL, template=template, **fields))  # type: ignore[arg-type]


def delay(id_: str, seconds: int, next_: str = "", *, max_visits: int = 0) -> J.Step:
    """A delay step for a duration."""
    return J.Step(id=id_, next=next_, max_visits=max_visits, delay=J.DelayStep(duration=duration_pb2.Duration(seconds=seconds)))


def condition(id_: str, expression: str, then: str = "", else_: str = "", *, max_visits: int = 0) -> J.Step:
    """A condition step."""
    return J.Step(id=id_, max_visits=max_visits, condition=J.ConditionStep(expression=expression, then_step=then, else_step=else_))


def exit_step(id_: str, goal: str = "") -> J.Step:
    """An exit step."""
    return J.Step(id=id_, exit=J.ExitStep(goal=goal))


def journey(*steps: J.Step, trigger: J.JourneyTrigger | None = None, rule_set: str = "marketing-email",
            templates: dict[str, J.MessageTemplate] | None = None, **fields: Message) -> J.JourneySpec:
    """A journey triggered by user.signed_up with *steps*, a welcome template and any other spec *fields* (entry, goal, settings)."""
    return J.JourneySpec(
        trigger=trigger or J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up")),
        rule_set=rule_set,
        steps=list(steps),
        templates=templates if templates is not None else {"welcome": J.MessageTemplate(subject="Hi {{ profile.traits.first_name }}", text_body="Welcome")},
        **fields,  # type: ignore[arg-type]
    )


def violations_of(spec: J.JourneySpec) -> set[tuple[str, str]]:
    """Compile *spec*, expecting rejection; return the (field, reason) pairs."""
    compiled_, violations = compile_journey(spec)
    assert compiled_ is None
    assert violations
    assert all(isinstance(v, FieldViolation) for v in violations)
    return {(v.field, v.reason) for v in violations}


def outcome(spec: J.JourneySpec) -> set[tuple[str, str]]:
    """The (field, reason) pairs :func:`compile_journey` reports for *spec*: empty exactly when it compiles."""
    result, violations = compile_journey(spec)
    assert (result is None) == bool(violations)
    return {(v.field, v.reason) for v in violations}


def compiled(spec: J.JourneySpec) -> CompiledJourney:
    """Compile *spec*, expecting it to be valid."""
    result, violations = compile_journey(spec)
    assert [(v.field, v.reason, v.description) for v in violations] == []
    assert result is not None
    return result
