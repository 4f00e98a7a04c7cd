"""Validating and compiling a journey definition. Pure.

A definition is rejected with a field violation for each problem, naming
the step: a bad trigger, entry policy or goal; unknown or duplicate step
ids; a step kind's own problems (:mod:`.stepcheck`); the graph's problems
(:mod:`.graph`: an edge to nothing, an unreachable step, an unbounded loop,
a parallel branch that does not reach its join); a run that could take more
actions than allowed. What is allowed but unwise (more than 50 action
steps) comes back as a warning.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import rule_engine
from croniter import croniter

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2
from overture_runtime.errors import FieldViolation, Violations
from overture_runtime.protojson import struct_to_dict
from overture_runtime.validation import check_name

from .graph import ACTION_KINDS, check_graph
from .stepcheck import Compiler

__all__ = ["SCHEDULED", "SEGMENT_ENTERED", "CompiledJourney", "compile_journey", "evaluate_expression", "event_matches",
           "trigger_event_type"]

_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}$")
_MAX_STEPS = 200
_MAX_ACTIONS = 100
_WARN_ACTIONS = 50
_MIN_INACTIVITY = dt.timedelta(minutes=1)
_MAX_INACTIVITY = dt.timedelta(days=366)
SEGMENT_ENTERED = "segment.entered"
"""The event type a segment-entered trigger listens to."""
SCHEDULED = "@schedule"
"""The trigger key of a schedule trigger: no event type can be it, so no event starts such a journey."""


@dataclass(frozen=True)
class CompiledJourney:
    """A journey ready to run. Immutable; shared across runs."""

    spec: journey_pb2.JourneySpec
    """The definition."""
    steps: Mapping[str, journey_pb2.Step]
    """Steps by id."""
    first_step: str
    """Where a run starts."""
    filter: rule_engine.Rule | None
    """The trigger's event filter (a segment-entered trigger's segment test), if any."""
    conditions: Mapping[str, rule_engine.Rule]
    """Condition and wait-until expressions, and wait-for-event filters, by step id."""
    templates: Mapping[str, Mapping[str, jinja2.Template]]
    """Compiled templates: name -> field -> template."""
    profile_condition: rule_engine.Rule | None = None
    """The trigger's second condition, over the profile."""
    goal_filter: rule_engine.Rule | None = None
    """The goal event's filter, if any."""
    cases: Mapping[str, tuple[tuple[str, rule_engine.Rule, str], ...]] = field(default_factory=dict)
    """Multi-split cases by step id: (name, expression, target)."""
    joins: Mapping[str, int] = field(default_factory=dict)
    """Join step id -> how many branches of its parallel step meet there."""
    warnings: tuple[FieldViolation, ...] = ()
    """What publish accepts but warns about."""
    max_actions: int = _MAX_ACTIONS
    """The most actions a run may take."""
    repeatable: frozenset[str] = frozenset()
    """The action steps a run may take more than once (those of a journey
    with a bounded loop): each time's effects carry their own key
    (:func:`.contexts.effect_key`)."""


def trigger_event_type(spec: journey_pb2.JourneySpec) -> str | None:
    """The event type that starts runs of *spec*, if events start them
    (:data:`SCHEDULED` for a schedule: the journeys table indexes both)."""
    kind = spec.trigger.WhichOneof("kind")
    if kind == "event":
        return spec.trigger.event.event_type
    if kind == "segment_entered":
        return SEGMENT_ENTERED
    if kind == "schedule":
        return SCHEDULED
    return None


def compile_journey(spec: journey_pb2.JourneySpec, *, prefix: str = "spec") -> tuple[CompiledJourney | None, list[FieldViolation]]:
    """Validate and compile *spec*. Warnings are on the compiled journey."""
    v = Violations()
    c = Compiler(v, spec, prefix)
    filter_rule, profile_condition = _trigger(v, c, spec, prefix)
    goal_filter = _goal(v, c, spec, prefix)
    entry = spec.entry
    if entry.mode == journey_pb2.ENTRY_MODE_ONCE_PER_WINDOW and entry.window.ToTimedelta() <= dt.timedelta(0):
        v.add(f"{prefix}.entry.window", "a once-per-window entry needs a positive window", "REQUIRED")
    if entry.mode not in journey_pb2.EntryMode.values():
        v.add(f"{prefix}.entry.mode", f"unknown entry mode {entry.mode}", "INVALID_ENUM")
    templates = c.templates()
    steps: dict[str, journey_pb2.Step] = {}
    if not spec.steps:
        v.add(f"{prefix}.steps", "a journey needs at least one step", "REQUIRED")
    elif len(spec.steps) > _MAX_STEPS:
        v.add(f"{prefix}.steps", f"at most {_MAX_STEPS} steps", "TOO_MANY")
    for i, step in enumerate(spec.steps):
        where = f"{prefix}.steps[{i}]"
        check_name(v, f"{where}.id", step.id)
        if step.id in steps:
            v.add(f"{where}.id", f"step id {step.id!r} is used twice", "DUPLICATE")
        steps[step.id] = step
        c.step(where, step)
    if c.sends:
        check_name(v, f"{prefix}.rule_set", spec.rule_set)
    max_actions = spec.settings.max_actions or _MAX_ACTIONS
    if not 0 <= spec.settings.max_actions <= 1000:
        v.add(f"{prefix}.settings.max_actions", "max_actions must be between 0 (the default, 100) and 1000", "OUT_OF_RANGE")
    found: list[FieldViolation] = []
    if not v:
        check_graph(v, spec, prefix)
    if not v:
        found = _actions(v, spec, prefix, max_actions)
    if v:
        return None, v.items
    return CompiledJourney(
        spec=spec, steps=steps, first_step=spec.steps[0].id, filter=filter_rule, conditions=c.conditions, templates=templates,
        profile_condition=profile_condition, goal_filter=goal_filter, cases=c.cases, joins=c.joins, warnings=tuple(found),
        max_actions=max_actions, repeatable=frozenset(s.id for s in spec.steps if s.WhichOneof("kind") in ACTION_KINDS)
        if any(s.max_visits for s in spec.steps) else frozenset(),
    ), []


def _trigger(v: Violations, c: Compiler, spec: journey_pb2.JourneySpec, prefix: str) -> tuple[Any, Any]:
    trigger = spec.trigger
    kind = trigger.WhichOneof("kind")
    where = f"{prefix}.trigger"
    filter_rule = profile_condition = None
    if kind is None:
        v.add(where, "trigger is required: event, schedule, inactivity, segment_entered or manual", "REQUIRED")
    elif kind == "event":
        _event_type(v, f"{where}.event.event_type", trigger.event.event_type)
        if trigger.event.filter:
            filter_rule = c.rule(f"{where}.event.filter", trigger.event.filter)
        if trigger.event.profile_condition:
            profile_condition = c.rule(f"{where}.event.profile_condition", trigger.event.profile_condition)
    elif kind == "segment_entered":
        check_name(v, f"{where}.segment_entered.segment", trigger.segment_entered.segment)
        filter_rule = c.rule(f"{where}.segment_entered.segment", f"attributes.segment == {trigger.segment_entered.segment!r}")
    elif kind == "inactivity":
        _event_type(v, f"{where}.inactivity.event_type", trigger.inactivity.event_type)
        period = trigger.inactivity.period.ToTimedelta()
        if not _MIN_INACTIVITY <= period <= _MAX_INACTIVITY:
            v.add(f"{where}.inactivity.period", "period must be between 1 minute and 366 days", "OUT_OF_RANGE")
    elif kind == "schedule":
        schedule = trigger.schedule
        if not croniter.is_valid(schedule.cron) or len(schedule.cron.split()) != 5:
            v.add(f"{where}.schedule.cron", "cron is not a valid five-field cron expression", "INVALID_CRON")
        try:
            ZoneInfo(schedule.timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            v.add(f"{where}.schedule.timezone", f"unknown time zone {schedule.timezone!r}", "INVALID_TIMEZONE")
        if not schedule.segment and not schedule.profile_condition:
            v.add(f"{where}.schedule", "a schedule enrols a segment, subjects matching a profile condition, or both", "REQUIRED")
        if schedule.segment:
            check_name(v, f"{where}.schedule.segment", schedule.segment)
        if schedule.profile_condition:
            profile_condition = c.rule(f"{where}.schedule.profile_condition", schedule.profile_condition)
    return filter_rule, profile_condition


def _goal(v: Violations, c: Compiler, spec: journey_pb2.JourneySpec, prefix: str) -> Any:
    if not spec.HasField("goal"):
        return None
    _event_type(v, f"{prefix}.goal.event_type", spec.goal.event_type)
    return c.rule(f"{prefix}.goal.filter", spec.goal.filter) if spec.goal.filter else None


def _event_type(v: Violations, where: str, event_type: str) -> None:
    if not _EVENT_TYPE.fullmatch(event_type):
        v.add(where, "event_type must be lower-case words separated by dots", "INVALID_EVENT_TYPE")


def _actions(v: Violations, spec: journey_pb2.JourneySpec, prefix: str, max_actions: int) -> list[FieldViolation]:
    """The most actions a run can take (a bounded loop's actions count once
    per visit) must be within *max_actions*; past 50 action steps, a warning."""
    index = {s.id: i for i, s in enumerate(spec.steps)}
    count = sum(1 for s in spec.steps if s.WhichOneof("kind") in ACTION_KINDS)
    bound = sum(max(1, max((x.max_visits for x in spec.steps if x.max_visits), default=1)) for s in spec.steps
                if s.WhichOneof("kind") in ACTION_KINDS)
    if bound > max_actions:
        first = next(s for s in spec.steps if s.WhichOneof("kind") in ACTION_KINDS)
        v.add(f"{prefix}.steps[{index[first.id]}]", f"a run could take up to {bound} actions ({count} action steps, loops counted per "
              f"visit), more than the journey's limit of {max_actions} (settings.max_actions)", "TOO_MANY_ACTIONS")
    if count > _WARN_ACTIONS:
        return [FieldViolation(f"{prefix}.steps", f"{count} action steps: journeys this long are hard to reason about; consider "
                               "splitting it", "MANY_ACTIONS")]
    return []


def evaluate_expression(rule: rule_engine.Rule, scope: Mapping[str, Any]) -> bool:
    """Whether *rule* holds for *scope*. Expressions read nested data with dot
    syntax (``profile.traits.plan``), which rule-engine 5 (pinned) supports and
    announces it will drop in 6; the notice is silenced here, and moving to
    rule-engine 6 means migrating expressions to ``profile["traits"]["plan"]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rule_engine.errors.MappingAttributeLookupDeprecation)
        return bool(rule.matches(scope))


def event_matches(rule: rule_engine.Rule | None, event: event_pb2.Event) -> bool:
    """Whether an event passes a trigger's, a wait's or a goal's filter (read
    over ``attributes`` and ``event_type``); no filter passes everything, and
    a filter that cannot be evaluated does not match."""
    if rule is None:
        return True
    try:
        return evaluate_expression(rule, {"attributes": struct_to_dict(event.attributes), "event_type": event.event_type})
    except Exception:  # noqa: BLE001 - a filter that cannot evaluate does not match
        return False
