"""Validating and compiling a journey definition. Pure.

A definition is rejected with a field violation for each problem: a bad
trigger, unknown or duplicate step ids, a reference to a step or template
that does not exist, a cycle, an expression that does not parse, a
template that does not compile or reads a name that cannot exist (checked
against the scope the renderer provides, :mod:`overture_runtime.templates`),
or a step kind this release cannot run.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import rule_engine
from croniter import croniter

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import journey_pb2
from overture_runtime.errors import FieldViolation, Violations
from overture_runtime.templates import check_template, html_environment, text_environment
from overture_runtime.validation import check_name

__all__ = ["SUPPORTED_STEPS", "CompiledJourney", "RenderError", "compile_journey", "render_message", "templates_env"]

SUPPORTED_STEPS = frozenset({"send", "condition", "delay", "exit"})
"""Step kinds this release runs; the others are part of the contract, not built yet."""
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}$")
_MAX_STEPS = 200
_MAX_DELAY = dt.timedelta(days=366)

templates_env = text_environment
"""The sandbox text templates render in (see :mod:`overture_runtime.templates`)."""
_expressions = rule_engine.Context(default_value=None)


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
    """The compiled event filter, if any."""
    conditions: Mapping[str, rule_engine.Rule]
    """Compiled condition expressions by step id."""
    templates: Mapping[str, Mapping[str, jinja2.Template]]
    """Compiled templates: name -> field -> template."""

    def next_of(self, step: journey_pb2.Step) -> str:
        """The step after a linear step; empty at the end."""
        return step.next


def _compile_rule(v: Violations, field: str, text: str) -> rule_engine.Rule | None:
    try:
        return rule_engine.Rule(text, context=_expressions)
    except rule_engine.RuleSyntaxError as error:
        position = error.token.lexpos if error.token is not None else len(text)
        v.add(field, f"syntax error at position {position}", "SYNTAX_ERROR")
    except rule_engine.EngineError as error:
        v.add(field, f"invalid expression: {error.message}", "INVALID_EXPRESSION")
    return None


def _targets(step: journey_pb2.Step) -> list[tuple[str, str]]:
    kind = step.WhichOneof("kind")
    if kind == "condition":
        return [("condition.then_step", step.condition.then_step), ("condition.else_step", step.condition.else_step)]
    if kind == "split":
        return [(f"split.branches[{i}].step", b.step) for i, b in enumerate(step.split.branches)]
    if kind == "exit":
        return []
    return [("next", step.next)]


def compile_journey(spec: journey_pb2.JourneySpec, *, prefix: str = "spec") -> tuple[CompiledJourney | None, list[FieldViolation]]:
    """Validate and compile *spec*."""
    v = Violations()
    trigger = spec.trigger.WhichOneof("kind")
    filter_rule = None
    if trigger is None:
        v.add(f"{prefix}.trigger", "trigger is required: event, schedule or manual", "REQUIRED")
    elif trigger == "event":
        event_type = spec.trigger.event.event_type
        if not _EVENT_TYPE.fullmatch(event_type):
            v.add(f"{prefix}.trigger.event.event_type", "event_type must be lower-case words separated by dots", "INVALID_EVENT_TYPE")
        if spec.trigger.event.filter:
            filter_rule = _compile_rule(v, f"{prefix}.trigger.event.filter", spec.trigger.event.filter)
    elif trigger == "schedule":
        v.add(f"{prefix}.trigger.schedule", "schedule triggers are not supported by this release", "UNSUPPORTED")
        if not croniter.is_valid(spec.trigger.schedule.cron):
            v.add(f"{prefix}.trigger.schedule.cron", "cron is not a valid five-field cron expression", "INVALID_CRON")

    users: dict[str, list[str]] = {}
    for i, step in enumerate(spec.steps):
        if step.WhichOneof("kind") == "send" and step.send.template:
            users.setdefault(step.send.template, []).append(f"step {step.id!r} ({prefix}.steps[{i}])")
    templates: dict[str, dict[str, jinja2.Template]] = {}
    for name, template in spec.templates.items():
        compiled: dict[str, jinja2.Template] = {}
        for part in ("subject", "text_body", "html_body"):
            text = getattr(template, part)
            if not text:
                continue
            environment = html_environment if part == "html_body" else text_environment
            field = f"{prefix}.templates[{name}].{part}"
            try:
                compiled[part] = environment.from_string(text)
            except jinja2.TemplateSyntaxError as error:
                v.add(field, f"template syntax error on line {error.lineno}: {error.message}", "TEMPLATE_SYNTAX_ERROR")
                continue
            used_by = f" (template {name!r} {part}, sent by {', '.join(users[name])})" if name in users else f" (template {name!r} {part})"
            for problem in check_template(text, environment=environment):
                v.add(field, problem.description + used_by, "UNKNOWN_TEMPLATE_VARIABLE")
        templates[name] = compiled

    steps: dict[str, journey_pb2.Step] = {}
    conditions: dict[str, rule_engine.Rule] = {}
    if not spec.steps:
        v.add(f"{prefix}.steps", "a journey needs at least one step", "REQUIRED")
    elif len(spec.steps) > _MAX_STEPS:
        v.add(f"{prefix}.steps", f"at most {_MAX_STEPS} steps", "TOO_MANY")
    sends = False
    for i, step in enumerate(spec.steps):
        field = f"{prefix}.steps[{i}]"
        check_name(v, f"{field}.id", step.id)
        if step.id in steps:
            v.add(f"{field}.id", f"step id {step.id!r} is used twice", "DUPLICATE")
        steps[step.id] = step
        kind = step.WhichOneof("kind")
        if kind is None:
            v.add(field, "a step needs one kind: send, condition, delay, exit, ...", "REQUIRED")
            continue
        if kind not in SUPPORTED_STEPS:
            v.add(f"{field}.{kind}", f"{kind} steps are not supported by this release", "UNSUPPORTED")
            continue
        if kind == "send":
            sends = True
            send = step.send
            if send.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
                v.add(f"{field}.send.channel", "channel is required", "REQUIRED")
            if not send.template:
                v.add(f"{field}.send.template", "template is required", "REQUIRED")
            elif send.template not in spec.templates:
                v.add(f"{field}.send.template", f"no template named {send.template!r} in templates", "UNKNOWN_TEMPLATE")
            if not 0 <= send.priority <= 100:
                v.add(f"{field}.send.priority", "priority must be between 0 and 100", "OUT_OF_RANGE")
            if send.to:
                try:
                    for problem in check_template(send.to):
                        v.add(f"{field}.send.to", f"{problem.description} (the address of step {step.id!r})", "UNKNOWN_TEMPLATE_VARIABLE")
                except jinja2.TemplateSyntaxError as error:
                    v.add(f"{field}.send.to", f"template syntax error: {error.message}", "TEMPLATE_SYNTAX_ERROR")
        elif kind == "condition":
            if not step.condition.expression:
                v.add(f"{field}.condition.expression", "expression is required", "REQUIRED")
            else:
                rule = _compile_rule(v, f"{field}.condition.expression", step.condition.expression)
                if rule is not None:
                    conditions[step.id] = rule
        elif kind == "delay":
            delay = step.delay.duration.ToTimedelta()
            if delay <= dt.timedelta(0) or delay > _MAX_DELAY:
                v.add(f"{field}.delay.duration", "duration must be positive and at most 366 days", "OUT_OF_RANGE")
    if sends:
        check_name(v, f"{prefix}.rule_set", spec.rule_set)
    for i, step in enumerate(spec.steps):
        for path, target in _targets(step):
            if target and target not in steps:
                v.add(f"{prefix}.steps[{i}].{path}", f"no step with id {target!r}", "UNKNOWN_STEP")
    if not v:
        _check_graph(v, spec, prefix)
    if v:
        return None, v.items
    return CompiledJourney(
        spec=spec, steps=steps, first_step=spec.steps[0].id, filter=filter_rule, conditions=conditions, templates=templates
    ), []


def _check_graph(v: Violations, spec: journey_pb2.JourneySpec, prefix: str) -> None:
    """The journey is a graph of steps whose edges are their targets: the
    first step is its one entry, every step must be reachable from it, and
    no path may lead back to a step it came through. Each problem names its step."""
    index = {s.id: i for i, s in enumerate(spec.steps)}
    graph = {s.id: [t for _, t in _targets(s) if t] for s in spec.steps}
    state: dict[str, int] = {}
    cycles: list[tuple[str, str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        for target in graph.get(node, []):
            if state.get(target) == 1:
                cycles.append((node, target))
            elif target not in state:
                visit(target)
        state[node] = 2

    if spec.steps:
        visit(spec.steps[0].id)
    for source, target in cycles:
        v.add(f"{prefix}.steps[{index[source]}]", f"step {source!r} leads back to step {target!r}: the steps form a cycle, and journeys "
              "must be acyclic", "CYCLE")
    for step in spec.steps:
        if step.id not in state:
            v.add(f"{prefix}.steps[{index[step.id]}]", f"step {step.id!r} cannot be reached from the first step {spec.steps[0].id!r}",
                  "UNREACHABLE_STEP")


def evaluate_expression(rule: rule_engine.Rule, scope: Mapping[str, Any]) -> bool:
    """Whether *rule* holds for *scope*. Expressions read nested data with dot
    syntax (``profile.traits.plan``), which rule-engine 5 (pinned) supports and
    announces it will drop in 6; the notice is silenced here, and moving to
    rule-engine 6 means migrating expressions to ``profile["traits"]["plan"]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rule_engine.errors.MappingAttributeLookupDeprecation)
        return bool(rule.matches(scope))


def render(template: jinja2.Template | None, scope: Mapping[str, Any]) -> str:
    """Render a compiled template in the sandbox; empty for no template."""
    return template.render(**scope) if template is not None else ""


class RenderError(Exception):
    """A send step's message could not be rendered. The message names the
    part and the missing name, never a value."""


def render_message(journey: CompiledJourney, step: journey_pb2.Step, scope: Mapping[str, Any]) -> dict[str, str]:
    """The rendered ``to`` (empty when the step has none), ``subject``,
    ``text_body`` and ``html_body`` of a send step, all or nothing: any
    failure raises :class:`RenderError`, so nothing half-rendered is sent."""
    send = step.send
    template = journey.templates.get(send.template, {})
    rendered: dict[str, str] = {}
    part = "to"
    try:
        rendered["to"] = templates_env.from_string(send.to).render(**scope).strip() if send.to else ""
        for part in ("subject", "text_body", "html_body"):
            rendered[part] = render(template.get(part), scope)
    except Exception as error:  # noqa: BLE001 - every failure to render is reported the same way
        # Jinja's messages name the missing name and the type it was looked up
        # on, never a value; other exceptions may quote values, so only their
        # type is kept.
        why = error.message if isinstance(error, jinja2.TemplateError) and error.message else type(error).__name__
        where = f"the address of step {step.id!r}" if part == "to" else f"template {send.template!r} {part}"
        raise RenderError(f"{where} failed to render: {why}"[:2000]) from None
    rendered["subject"] = rendered["subject"].strip()
    return rendered
