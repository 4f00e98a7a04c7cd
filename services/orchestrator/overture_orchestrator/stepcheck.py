"""Each step kind's own checks at publish, and what they compile. Pure.

:class:`Compiler` collects the compiled expressions, multi-split cases,
joins and templates of one definition while it reports every problem at
its field, naming the step.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

import jinja2
import rule_engine

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import journey_pb2
from overture_runtime.errors import Violations
from overture_runtime.protojson import struct_to_dict
from overture_runtime.templates import check_template, html_environment, text_environment
from overture_runtime.validation import check_name

from .nodes import WEEKDAYS

__all__ = ["SUPPORTED_STEPS", "Compiler"]

SUPPORTED_STEPS = frozenset({"send", "condition", "multi_split", "split", "delay", "wait_for_event", "wait_until", "approval",
                             "update_profile", "notify", "webhook", "parallel", "join", "exit"})
"""Step kinds this release runs; the others are part of the contract, not built yet."""
MAX_WAIT = dt.timedelta(days=90)
"""The longest delay or wait a step may take."""
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}$")
_LOCAL_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_TRAIT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_expressions = rule_engine.Context(default_value=None)


class Compiler:
    """Checks and compiles the parts of one definition."""

    def __init__(self, v: Violations, spec: journey_pb2.JourneySpec, prefix: str) -> None:
        self._v = v
        self._spec = spec
        self._prefix = prefix
        self.conditions: dict[str, rule_engine.Rule] = {}
        self.cases: dict[str, tuple[tuple[str, rule_engine.Rule, str], ...]] = {}
        self.joins: dict[str, int] = {}
        self.sends = False

    def rule(self, field: str, text: str) -> rule_engine.Rule | None:
        """A rule-engine expression, or None after reporting why it does not compile."""
        try:
            return rule_engine.Rule(text, context=_expressions)
        except rule_engine.RuleSyntaxError as error:
            position = error.token.lexpos if error.token is not None else len(text)
            self._v.add(field, f"syntax error at position {position}", "SYNTAX_ERROR")
        except rule_engine.EngineError as error:
            self._v.add(field, f"invalid expression: {error.message}", "INVALID_EXPRESSION")
        return None

    def templates(self) -> dict[str, dict[str, jinja2.Template]]:
        """The journey's message templates, compiled; each problem names the steps that use the template."""
        users: dict[str, list[str]] = {}
        for i, step in enumerate(self._spec.steps):
            kind = step.WhichOneof("kind")
            name = step.send.template if kind == "send" else step.notify.template if kind == "notify" else ""
            if name:
                users.setdefault(name, []).append(f"step {step.id!r} ({self._prefix}.steps[{i}])")
        compiled: dict[str, dict[str, jinja2.Template]] = {}
        for name, template in self._spec.templates.items():
            parts: dict[str, jinja2.Template] = {}
            for part in ("subject", "text_body", "html_body"):
                text = getattr(template, part)
                if not text:
                    continue
                environment = html_environment if part == "html_body" else text_environment
                field = f"{self._prefix}.templates[{name}].{part}"
                try:
                    parts[part] = environment.from_string(text)
                except jinja2.TemplateSyntaxError as error:
                    self._v.add(field, f"template syntax error on line {error.lineno}: {error.message}", "TEMPLATE_SYNTAX_ERROR")
                    continue
                used_by = f" (template {name!r} {part}, sent by {', '.join(users[name])})" if name in users else f" (template {name!r} {part})"
                for problem in check_template(text, environment=environment):
                    self._v.add(field, problem.description + used_by, "UNKNOWN_TEMPLATE_VARIABLE")
            self._inline_struct(f"{self._prefix}.templates[{name}].data", struct_to_dict(template.data), f"template {name!r} data")
            compiled[name] = parts
        return compiled

    def step(self, where: str, step: journey_pb2.Step) -> None:
        """Check one step of a kind this release runs, and compile what it evaluates."""
        kind = step.WhichOneof("kind")
        if kind is None:
            self._v.add(where, "a step needs one kind: send, condition, delay, exit, ...", "REQUIRED")
            return
        if kind not in SUPPORTED_STEPS:
            self._v.add(f"{where}.{kind}", f"{kind} steps are not supported by this release", "UNSUPPORTED")
            return
        if not 0 <= step.max_visits <= 1000:
            self._v.add(f"{where}.max_visits", "max_visits must be between 0 and 1000", "OUT_OF_RANGE")
        if step.HasField("retry"):
            self._retry(f"{where}.retry", step.retry)
        getattr(self, f"_{kind}")(f"{where}.{kind}", step)

    def _retry(self, where: str, policy: journey_pb2.RetryPolicy) -> None:
        if not 0 <= policy.max_attempts <= 100:
            self._v.add(f"{where}.max_attempts", "max_attempts must be between 0 (the default, 5) and 100", "OUT_OF_RANGE")
        initial, ceiling = policy.initial_backoff.ToTimedelta(), policy.max_backoff.ToTimedelta()
        if not dt.timedelta(0) <= initial <= dt.timedelta(days=1):
            self._v.add(f"{where}.initial_backoff", "initial_backoff must be between 0 (the default, 1 s) and 1 day", "OUT_OF_RANGE")
        if not dt.timedelta(0) <= ceiling <= dt.timedelta(days=7):
            self._v.add(f"{where}.max_backoff", "max_backoff must be between 0 (the default, 5 min) and 7 days", "OUT_OF_RANGE")
        elif policy.HasField("initial_backoff") and policy.HasField("max_backoff") and ceiling and initial > ceiling:
            self._v.add(f"{where}.max_backoff", "max_backoff must not be shorter than initial_backoff", "OUT_OF_RANGE")

    # -- kinds -------------------------------------------------------------

    def _send(self, where: str, step: journey_pb2.Step) -> None:
        self.sends = True
        send = step.send
        self._channel(f"{where}.channel", send.channel)
        self._template(f"{where}.template", send.template)
        if not 0 <= send.priority <= 100:
            self._v.add(f"{where}.priority", "priority must be between 0 and 100", "OUT_OF_RANGE")
        self._inline(f"{where}.to", send.to, f"the address of step {step.id!r}")

    def _notify(self, where: str, step: journey_pb2.Step) -> None:
        notify = step.notify
        self._channel(f"{where}.channel", notify.channel)
        self._template(f"{where}.template", notify.template)
        if not notify.to:
            self._v.add(f"{where}.to", "to is required: where the notification goes", "REQUIRED")
        self._inline(f"{where}.to", notify.to, f"the address of step {step.id!r}")
        if notify.assignee and not notify.task:
            self._v.add(f"{where}.assignee", "an assignee needs task: true", "ASSIGNEE_WITHOUT_TASK")

    def _webhook(self, where: str, step: journey_pb2.Step) -> None:
        webhook = step.webhook
        if not webhook.url:
            self._v.add(f"{where}.url", "url is required", "REQUIRED")
        elif not webhook.url.startswith(("https://", "http://", "{{")):
            self._v.add(f"{where}.url", "url must be an http(s) URL (or a template giving one)", "INVALID_URL")
        self._inline(f"{where}.url", webhook.url, f"the URL of step {step.id!r}")
        self._inline_struct(f"{where}.body", struct_to_dict(webhook.body), f"the body of step {step.id!r}")

    def _condition(self, where: str, step: journey_pb2.Step) -> None:
        self._expression(f"{where}.expression", step.id, step.condition.expression)

    def _multi_split(self, where: str, step: journey_pb2.Step) -> None:
        cases = step.multi_split.cases
        if not cases:
            self._v.add(f"{where}.cases", "a multi-split needs at least one case", "REQUIRED")
        compiled = []
        self._unique_names(f"{where}.cases", [c.name for c in cases], reserved={"default"})
        for i, case in enumerate(cases):
            if not case.expression:
                self._v.add(f"{where}.cases[{i}].expression", "expression is required", "REQUIRED")
                continue
            rule = self.rule(f"{where}.cases[{i}].expression", case.expression)
            if rule is not None:
                compiled.append((case.name, rule, case.step))
        self.cases[step.id] = tuple(compiled)

    def _split(self, where: str, step: journey_pb2.Step) -> None:
        branches = step.split.branches
        if len(branches) < 2:
            self._v.add(f"{where}.branches", "a split needs at least two branches", "TOO_FEW")
        self._unique_names(f"{where}.branches", [b.name for b in branches])
        for i, branch in enumerate(branches):
            if not 1 <= branch.weight <= 10_000:
                self._v.add(f"{where}.branches[{i}].weight", "weight must be between 1 and 10,000", "OUT_OF_RANGE")
        if branches and all(b.holdout for b in branches):
            self._v.add(f"{where}.branches", "every branch is a holdout: nothing would ever be sent", "ALL_HOLDOUT")

    def _delay(self, where: str, step: journey_pb2.Step) -> None:
        delay = step.delay
        given = [name for name in ("duration", "until", "until_local_time", "until_trait") if delay.HasField(name)]
        if len(given) != 1:
            self._v.add(where, "a delay needs exactly one of duration, until, until_local_time or until_trait", "ONE_OF")
            return
        if given == ["duration"]:
            self._wait_length(f"{where}.duration", delay.duration.ToTimedelta(), what="duration")
        elif given == ["until_local_time"]:
            local = delay.until_local_time
            if not _LOCAL_TIME.fullmatch(local.time):
                self._v.add(f"{where}.until_local_time.time", "time must be HH:MM on a 24-hour clock, for example 09:00", "INVALID_TIME")
            for i, day in enumerate(local.weekdays):
                if day not in WEEKDAYS:
                    self._v.add(f"{where}.until_local_time.weekdays[{i}]", f"weekday must be one of {', '.join(WEEKDAYS)}", "INVALID_WEEKDAY")
        elif given == ["until_trait"]:
            if not _TRAIT.fullmatch(delay.until_trait.trait):
                self._v.add(f"{where}.until_trait.trait", "trait must name a profile trait", "INVALID_TRAIT")
            if abs(delay.until_trait.offset.ToTimedelta()) > dt.timedelta(days=366):
                self._v.add(f"{where}.until_trait.offset", "offset must be within 366 days either way", "OUT_OF_RANGE")

    def _wait_for_event(self, where: str, step: journey_pb2.Step) -> None:
        wait = step.wait_for_event
        if not _EVENT_TYPE.fullmatch(wait.event_type):
            self._v.add(f"{where}.event_type", "event_type must be lower-case words separated by dots", "INVALID_EVENT_TYPE")
        self._wait_length(f"{where}.timeout", wait.timeout.ToTimedelta(), what="timeout")
        if wait.filter:
            self._expression(f"{where}.filter", step.id, wait.filter)

    def _wait_until(self, where: str, step: journey_pb2.Step) -> None:
        self._expression(f"{where}.expression", step.id, step.wait_until.expression)
        self._wait_length(f"{where}.timeout", step.wait_until.timeout.ToTimedelta(), what="timeout")

    def _approval(self, where: str, step: journey_pb2.Step) -> None:
        timeout = step.approval.timeout.ToTimedelta()
        if timeout < dt.timedelta(0) or timeout > MAX_WAIT:
            self._v.add(f"{where}.timeout", "timeout must be between 0 (the default, 24 hours) and 90 days", "OUT_OF_RANGE")
        self._inline(f"{where}.message", step.approval.message, f"the approval message of step {step.id!r}")

    def _update_profile(self, where: str, step: journey_pb2.Step) -> None:
        update = step.update_profile
        if not (update.traits.fields or update.unset_traits or update.add_tags or update.remove_tags or update.enter_segments
                or update.exit_segments or update.increment):
            self._v.add(where, "an update-profile step needs at least one change", "REQUIRED")
        self._inline_struct(f"{where}.traits", struct_to_dict(update.traits), f"the traits of step {step.id!r}")
        for i, trait in enumerate(update.unset_traits):
            if not _TRAIT.fullmatch(trait):
                self._v.add(f"{where}.unset_traits[{i}]", f"{trait!r} is not a trait name", "INVALID_TRAIT")
        for trait in sorted(update.increment):  # a map: named by key (as templates[name]), its order is not the file's
            if not _TRAIT.fullmatch(trait):
                self._v.add(f"{where}.increment[{trait}]", f"{trait!r} is not a trait name", "INVALID_TRAIT")
        for name, values in (("add_tags", update.add_tags), ("remove_tags", update.remove_tags),
                             ("enter_segments", update.enter_segments), ("exit_segments", update.exit_segments)):
            for i, value in enumerate(values):
                check_name(self._v, f"{where}.{name}[{i}]", value)

    def _parallel(self, where: str, step: journey_pb2.Step) -> None:
        if len(step.parallel.branches) < 2:
            self._v.add(f"{where}.branches", "a parallel step needs at least two branches", "TOO_FEW")
        seen: set[str] = set()
        for i, start in enumerate(step.parallel.branches):
            if not start:
                self._v.add(f"{where}.branches[{i}]", "a branch needs its first step (the join itself for an empty branch)", "REQUIRED")
            elif start in seen and start != step.parallel.join:
                self._v.add(f"{where}.branches[{i}]", f"step {start!r} starts two branches", "DUPLICATE")
            seen.add(start)
        if not step.parallel.join:
            self._v.add(f"{where}.join", "join is required: the step where the branches meet", "REQUIRED")
        elif step.parallel.join in self.joins:
            self._v.add(f"{where}.join", f"join {step.parallel.join!r} already closes another parallel step", "DUPLICATE")
        else:
            self.joins[step.parallel.join] = len(step.parallel.branches)

    def _join(self, where: str, step: journey_pb2.Step) -> None:
        if step.join.mode not in journey_pb2.JoinMode.values():
            self._v.add(f"{where}.mode", f"unknown join mode {step.join.mode}", "INVALID_ENUM")

    def _exit(self, where: str, step: journey_pb2.Step) -> None:
        if step.exit.goal:
            check_name(self._v, f"{where}.goal", step.exit.goal)

    # -- parts -------------------------------------------------------------

    def _expression(self, field: str, step_id: str, text: str) -> None:
        if not text:
            self._v.add(field, "expression is required", "REQUIRED")
            return
        rule = self.rule(field, text)
        if rule is not None:
            self.conditions[step_id] = rule

    def _channel(self, field: str, channel: int) -> None:
        if channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            self._v.add(field, "channel is required", "REQUIRED")

    def _template(self, field: str, name: str) -> None:
        if not name:
            self._v.add(field, "template is required", "REQUIRED")
        elif name not in self._spec.templates:
            self._v.add(field, f"no template named {name!r} in templates", "UNKNOWN_TEMPLATE")

    def _wait_length(self, field: str, length: dt.timedelta, *, what: str) -> None:
        if length <= dt.timedelta(0) or length > MAX_WAIT:
            self._v.add(field, f"{what} must be positive and at most 90 days", "OUT_OF_RANGE")

    def _inline(self, field: str, source: str, what: str) -> None:
        if not source:
            return
        try:
            for problem in check_template(source):
                self._v.add(field, f"{problem.description} ({what})", "UNKNOWN_TEMPLATE_VARIABLE")
        except jinja2.TemplateSyntaxError as error:
            self._v.add(field, f"template syntax error: {error.message}", "TEMPLATE_SYNTAX_ERROR")

    def _inline_struct(self, field: str, value: Any, what: str) -> None:
        if isinstance(value, str):
            self._inline(field, value, what)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._inline_struct(f"{field}.{key}", item, what)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._inline_struct(f"{field}[{i}]", item, what)

    def _unique_names(self, field: str, names: Iterable[str], *, reserved: frozenset[str] | set[str] = frozenset()) -> None:
        seen: set[str] = set()
        for i, name in enumerate(names):
            check_name(self._v, f"{field}[{i}].name", name)
            if name in seen:
                self._v.add(f"{field}[{i}].name", f"name {name!r} is used twice", "DUPLICATE")
            if name in reserved:
                self._v.add(f"{field}[{i}].name", f"{name!r} is reserved", "RESERVED")
            seen.add(name)
