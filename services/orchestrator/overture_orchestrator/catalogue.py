"""The step-type catalogue (ListStepTypes): every trigger and step kind with
its fields and edges, for builders and tools.

Fields come from the contract's descriptors, so the catalogue cannot drift
from what publish accepts; titles, descriptions, groups and which fields are
required are written here, once. A test checks that every kind of the
contract is described.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2

from .stepcheck import SUPPORTED_STEPS

__all__ = ["STEPS", "TRIGGERS", "step_types"]

OS = orchestrator_service_pb2
_STEP_FIELDS = frozenset({"next", "then_step", "else_step", "on_event_step", "on_timeout_step", "on_reject_step", "on_true_step",
                          "default_step", "step", "branches", "join", "on_missing_step"})
_EXPRESSIONS = frozenset({"expression", "filter", "profile_condition"})
_TEMPLATES = frozenset({"to", "message", "url"})

# kind: (title, group, description, required fields, edges)
STEPS: Mapping[str, tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = {
    "send": ("Send message", "action", "Sends a template to the subject on a channel, after consent, caps, quiet hours and rules allow it.",
             ("channel", "template"), ("next",)),
    "notify": ("Notify team / create task", "action", "Sends an internal notification or a task through a connector; not subject to the "
               "subject's consent or caps.", ("channel", "to", "template"), ("next",)),
    "update_profile": ("Update profile", "action", "Sets or removes traits, adds to a score, tags, enters or leaves segments; once per run.",
                       (), ("next",)),
    "webhook": ("Call webhook", "action", "Calls an HTTP endpoint, signed per Standard Webhooks; the response can be kept for later steps.",
                ("url",), ("next",)),
    "condition": ("If / else", "flow", "Branches on an expression over the event, the profile and earlier steps.", ("expression",),
                  ("true", "false")),
    "multi_split": ("Multi-split", "flow", "Takes the first case whose expression holds, else the default.", ("cases",),
                    ("<case name>", "default")),
    "split": ("Random / A-B split", "flow", "Splits subjects by weight, the same way every time for a subject; a holdout branch sends "
              "nothing and measures uplift.", ("branches",), ("<branch name>",)),
    "parallel": ("Parallel branches", "flow", "Runs branches side by side until they meet at a join.", ("branches", "join"),
                 ("branch:<n>",)),
    "join": ("Join", "flow", "Waits for every parallel branch, or goes on with the first.", (), ("next",)),
    "delay": ("Delay", "wait", "Waits for a duration, until a time, until a local time of day, or until a date in a trait.", (),
              ("next", "missing")),
    "wait_for_event": ("Wait for event", "wait", "Waits for an event of the subject, with a filter, or a timeout.",
                       ("event_type", "timeout"), ("event", "timeout")),
    "wait_until": ("Wait until", "wait", "Waits until a profile condition holds, re-checked on every profile change, or a timeout.",
                   ("expression", "timeout"), ("true", "timeout")),
    "approval": ("Approval", "wait", "Waits for a person to approve or reject; rejected automatically after the timeout (24 h by default).",
                 (), ("approved", "rejected")),
    "exit": ("Exit", "flow", "Ends the run, optionally recording a goal (a conversion).", (), ()),
}
TRIGGERS: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "event": ("Event", "Starts a run for each matching event, with an optional filter and profile condition.", ("event_type",)),
    "schedule": ("Schedule", "Enrols a segment, or the subjects matching a profile condition, on a cron schedule in a time zone.",
                 ("cron",)),
    "inactivity": ("Inactivity", "Starts a run when a subject has had no event of a type for a period.", ("event_type", "period")),
    "segment_entered": ("Segment entered", "Starts a run when the subject enters a segment.", ("segment",)),
    "manual": ("Manual", "Only the Trigger RPC starts runs.", ()),
}


def step_types() -> OS.ListStepTypesResponse:
    """The catalogue."""
    response = OS.ListStepTypesResponse()
    trigger_kinds = journey_pb2.JourneyTrigger.DESCRIPTOR.oneofs_by_name["kind"].fields
    for field in trigger_kinds:
        title, description, required = TRIGGERS[field.name]
        response.triggers.append(OS.StepType(kind=field.name, title=title, description=description, category="trigger",
                                            fields=_fields(field.message_type, required)))
    for field in journey_pb2.Step.DESCRIPTOR.oneofs_by_name["kind"].fields:
        if field.name not in SUPPORTED_STEPS:
            continue
        title, group, description, required, edges = STEPS[field.name]
        response.steps.append(OS.StepType(kind=field.name, title=title, description=description, category=group,
                                         fields=_fields(field.message_type, required), edges=list(edges)))
    return response


def _fields(message: Descriptor | None, required: tuple[str, ...]) -> list[OS.StepField]:
    out: list[OS.StepField] = []
    if message is None:
        return out
    for field in message.fields:
        values = []
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            values = [v.name for v in field.enum_type.values if v.number != 0]
        out.append(OS.StepField(name=field.name, type=_type(field), required=field.name in required, values=values,
                               description=_describe(field)))
    return out


def _type(field: FieldDescriptor) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return "map"
    if field.is_repeated:
        return "list"
    if field.name in _STEP_FIELDS:
        return "step"
    if field.name in _EXPRESSIONS:
        return "expression"
    if field.name in _TEMPLATES:
        return "template"
    if field.name == "template":
        return "template_name"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "enum"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "bool"
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return "int"
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        name = field.message_type.full_name
        return {"google.protobuf.Duration": "duration", "google.protobuf.Timestamp": "timestamp", "google.protobuf.Struct": "struct"}.get(
            name, "object")
    return "string"


def _describe(field: FieldDescriptor) -> str:
    kind = _type(field)
    return {"step": "the id of the step this edge leads to; empty ends the run", "expression": "a rule-engine expression",
            "template": "a Jinja2 template over profile, event, run and steps", "duration": "a duration such as 2d or 30m",
            "template_name": "the name of a template in the journey's templates"}.get(kind, "")
