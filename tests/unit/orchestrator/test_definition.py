"""Unit tests of :mod:`overture_orchestrator.definition`: validating and compiling a journey definition."""

from __future__ import annotations

import warnings
from pathlib import Path

import jinja2.sandbox
import pytest
from google.protobuf import duration_pb2

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_cli.specfile import load_spec
from overture_orchestrator import stepcheck
from overture_orchestrator.definition import compile_journey, evaluate_expression
from overture_orchestrator.rendering import render, templates_env
from overture_orchestrator.stepcheck import SUPPORTED_STEPS
from overture_runtime.errors import FieldViolation

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def send(id_: str, next_: str = "", template: str = "welcome", **fields: object) -> J.Step:
    """A send step of the welcome template by email."""
    return J.Step(id=id_, next=next_, send=J.SendStep(channel=M.CHANNEL_EMAIL, template=template, **fields))  # type: ignore[arg-type]


def delay(id_: str, seconds: int, next_: str = "") -> J.Step:
    """A delay step."""
    return J.Step(id=id_, next=next_, delay=J.DelayStep(duration=duration_pb2.Duration(seconds=seconds)))


def condition(id_: str, expression: str, then: str = "", else_: str = "") -> J.Step:
    """A condition step."""
    return J.Step(id=id_, condition=J.ConditionStep(expression=expression, then_step=then, else_step=else_))


def journey(*steps: J.Step, trigger: J.JourneyTrigger | None = None, rule_set: str = "marketing-email",
            templates: dict[str, J.MessageTemplate] | None = None) -> J.JourneySpec:
    """A journey triggered by user.signed_up with *steps* and a welcome template."""
    return J.JourneySpec(
        trigger=trigger or J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up")),
        rule_set=rule_set,
        steps=list(steps),
        templates=templates if templates is not None else {"welcome": J.MessageTemplate(subject="Hi {{ profile.traits.first_name }}", text_body="Welcome")},
    )


def violations_of(spec: J.JourneySpec) -> set[tuple[str, str]]:
    """Compile *spec*, expecting rejection; return the (field, reason) pairs."""
    compiled, violations = compile_journey(spec)
    assert compiled is None
    assert violations
    assert all(isinstance(v, FieldViolation) for v in violations)
    return {(v.field, v.reason) for v in violations}


# --- valid journeys ----------------------------------------------------------


def test_example_journey_compiles() -> None:
    """examples/welcome-journey.yaml loads and compiles, starting at its send step with both templates compiled."""
    name, spec = load_spec(EXAMPLES / "welcome-journey.yaml", J.JourneySpec)
    assert name == "welcome"
    compiled, violations = compile_journey(spec)
    assert violations == []
    assert compiled is not None
    assert compiled.first_step == "send-welcome"
    assert set(compiled.templates["welcome"]) == {"subject", "text_body"}
    scope = {"profile": {"traits": {"first_name": "Ada"}}, "event": {"attributes": {"plan": "pro"}}}
    assert render(compiled.templates["welcome"]["subject"], scope) == "Welcome to Overture, Ada!"
    assert "for the pro plan" in render(compiled.templates["welcome"]["text_body"], scope)


def test_multi_step_journey_compiles() -> None:
    """A journey with send, delay, condition and exit steps compiles, with its filter and conditions compiled."""
    spec = journey(
        send("hello", "wait"),
        delay("wait", 86400, "check"),
        condition("check", 'profile["traits"]["plan"] == "pro"', then="thanks", else_="bye"),
        send("thanks", "bye"),
        J.Step(id="bye", exit=J.ExitStep(goal="done")),
        trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up", filter='attributes["plan"] == "pro"')),
    )
    compiled, violations = compile_journey(spec)
    assert violations == []
    assert compiled is not None
    assert compiled.first_step == "hello"
    assert set(compiled.steps) == {"hello", "wait", "check", "thanks", "bye"}
    assert set(compiled.conditions) == {"check"}
    assert compiled.conditions["check"].matches({"profile": {"traits": {"plan": "pro"}}})
    assert not compiled.conditions["check"].matches({"profile": {"traits": {"plan": "free"}}})
    assert compiled.filter is not None
    assert compiled.filter.matches({"attributes": {"plan": "pro"}})
    assert compiled.steps["wait"].next == "check" and compiled.steps["thanks"].next == "bye"


def test_documented_dot_syntax_compiles() -> None:
    """Conditions and filters in the documented dot syntax (`profile.traits.plan == "pro"`) compile."""
    spec = journey(
        condition("check", 'profile.traits.plan == "pro"', then="hello"),
        send("hello"),
        trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up", filter='attributes.plan == "pro"')),
    )
    compiled, violations = compile_journey(spec)
    assert violations == []
    assert compiled is not None


@pytest.mark.parametrize(
    ("spec", "scope"),
    [
        (
            journey(condition("check", 'profile.traits.plan == "pro"')),
            {"profile": {"traits": {"plan": "pro"}}, "event": {}},
        ),
        (
            journey(J.Step(id="bye", exit=J.ExitStep()),
                    trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up", filter='attributes.plan == "pro"'))),
            {"attributes": {"plan": "pro"}, "event_type": "user.signed_up"},
        ),
    ],
    ids=["condition", "filter"],
)
def test_documented_dot_syntax_evaluates_without_deprecation(monkeypatch: pytest.MonkeyPatch, spec: J.JourneySpec, scope: dict[str, object]) -> None:
    """Evaluating a condition or filter in the documented dot syntax over the executor's dict scope matches without a deprecation warning."""
    # rule-engine warns once per Context; reset its flag so the outcome does not depend on test order.
    monkeypatch.setattr(stepcheck._expressions, "_mapping_fallback_warned", False)
    compiled, violations = compile_journey(spec)
    assert violations == []
    assert compiled is not None
    rule = compiled.filter if compiled.filter is not None else compiled.conditions["check"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate_expression(rule, scope)
    assert [w.message for w in caught if issubclass(w.category, DeprecationWarning)] == []


def test_manual_trigger_is_accepted() -> None:
    """A manual trigger is valid."""
    compiled, violations = compile_journey(journey(send("hello"), trigger=J.JourneyTrigger(manual=J.ManualTrigger())))
    assert violations == []
    assert compiled is not None
    assert compiled.filter is None


def test_journey_without_sends_needs_no_rule_set() -> None:
    """A journey with no send step may omit the rule set."""
    compiled, violations = compile_journey(journey(delay("wait", 60), rule_set=""))
    assert violations == []
    assert compiled is not None


def test_diamond_is_not_a_cycle() -> None:
    """Two branches that meet again at one step are acyclic."""
    spec = journey(condition("check", "true", then="a", else_="b"), send("a", "end"), send("b", "end"), J.Step(id="end", exit=J.ExitStep()))
    compiled, violations = compile_journey(spec)
    assert violations == []
    assert compiled is not None


# --- triggers ----------------------------------------------------------------


def test_missing_trigger_is_required() -> None:
    """A journey without a trigger is REQUIRED at spec.trigger."""
    spec = journey(send("hello"))
    spec.ClearField("trigger")
    assert violations_of(spec) == {("spec.trigger", "REQUIRED")}


def test_bad_trigger_event_type_is_rejected() -> None:
    """An event trigger whose type is not lower-case dotted words is INVALID_EVENT_TYPE."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="User Signed Up")))
    assert violations_of(spec) == {("spec.trigger.event.event_type", "INVALID_EVENT_TYPE")}


def test_bad_trigger_filter_is_a_syntax_error() -> None:
    """An event filter that does not parse is a SYNTAX_ERROR at the filter."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up", filter="attributes.plan ==")))
    assert violations_of(spec) == {("spec.trigger.event.filter", "SYNTAX_ERROR")}


def test_schedule_trigger_over_a_segment_compiles() -> None:
    """A schedule trigger with a valid cron, time zone and segment compiles."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(schedule=J.ScheduleTrigger(cron="0 9 * * MON", timezone="Europe/Berlin",
                                                                                       segment="all")))
    compiled, violations = compile_journey(spec)
    assert violations == [] and compiled is not None


def test_schedule_trigger_problems_are_each_named() -> None:
    """A schedule trigger with a bad cron, an unknown zone and nothing to enrol reports each at its field."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(schedule=J.ScheduleTrigger(cron="every monday", timezone="Mars/Olympus")))
    assert violations_of(spec) == {("spec.trigger.schedule", "REQUIRED"), ("spec.trigger.schedule.cron", "INVALID_CRON"),
                                   ("spec.trigger.schedule.timezone", "INVALID_TIMEZONE")}


# --- steps -------------------------------------------------------------------


def test_journey_needs_steps() -> None:
    """A journey without steps is REQUIRED at spec.steps."""
    assert violations_of(journey()) == {("spec.steps", "REQUIRED")}


def test_too_many_steps_are_rejected() -> None:
    """More than 200 steps are TOO_MANY."""
    steps = [delay(f"s{i}", 60, f"s{i + 1}" if i < 200 else "") for i in range(201)]
    assert violations_of(journey(*steps)) == {("spec.steps", "TOO_MANY")}


def test_unknown_template_is_rejected() -> None:
    """A send step naming a template that does not exist is UNKNOWN_TEMPLATE."""
    assert violations_of(journey(send("hello", template="nope"))) == {("spec.steps[0].send.template", "UNKNOWN_TEMPLATE")}


def test_send_needs_channel_and_template() -> None:
    """A send step without channel or template is REQUIRED at each."""
    spec = journey(J.Step(id="hello", send=J.SendStep()))
    assert violations_of(spec) == {("spec.steps[0].send.channel", "REQUIRED"), ("spec.steps[0].send.template", "REQUIRED")}


@pytest.mark.parametrize("priority", [-1, 101])
def test_send_priority_out_of_range(priority: int) -> None:
    """A send priority outside 0-100 is OUT_OF_RANGE."""
    assert violations_of(journey(send("hello", priority=priority))) == {("spec.steps[0].send.priority", "OUT_OF_RANGE")}


def test_bad_recipient_template_is_rejected() -> None:
    """A send step's `to` that is not a valid template is TEMPLATE_SYNTAX_ERROR."""
    assert violations_of(journey(send("hello", to="{{ profile.traits.email "))) == {("spec.steps[0].send.to", "TEMPLATE_SYNTAX_ERROR")}


def test_unknown_step_reference_is_rejected() -> None:
    """A next, then_step or else_step naming a step that does not exist is UNKNOWN_STEP at that field."""
    spec = journey(send("hello", "missing"), condition("check", "true", then="ghost", else_="hello"))
    assert violations_of(spec) == {
        ("spec.steps[0].next", "UNKNOWN_STEP"),
        ("spec.steps[1].condition.then_step", "UNKNOWN_STEP"),
    }


def test_duplicate_step_ids_are_rejected() -> None:
    """Two steps with the same id are a DUPLICATE at the second one's id."""
    assert violations_of(journey(send("hello"), send("hello"))) == {("spec.steps[1].id", "DUPLICATE")}


@pytest.mark.parametrize(("step_id", "reason"), [("", "REQUIRED"), ("Hello", "INVALID_NAME"), ("under_score", "INVALID_NAME")])
def test_step_ids_are_names(step_id: str, reason: str) -> None:
    """A step id must be a lower-case name."""
    assert violations_of(journey(send(step_id))) == {("spec.steps[0].id", reason)}


def test_step_without_kind_is_required() -> None:
    """A step with no kind is REQUIRED at the step."""
    assert violations_of(journey(J.Step(id="empty"))) == {("spec.steps[0]", "REQUIRED")}


def test_self_loop_is_a_cycle() -> None:
    """A step whose next is itself, without max_visits, is an UNBOUNDED_LOOP named at that step."""
    assert violations_of(journey(delay("wait", 60, "wait"))) == {("spec.steps[0]", "UNBOUNDED_LOOP")}


def test_longer_cycle_is_rejected() -> None:
    """Steps that lead back to an earlier step without max_visits are an UNBOUNDED_LOOP named at the step whose edge closes it."""
    spec = journey(send("hello", "wait"), delay("wait", 60, "check"), condition("check", "true", then="hello", else_=""))
    assert violations_of(spec) == {("spec.steps[2]", "UNBOUNDED_LOOP")}


def test_a_step_nothing_leads_to_is_unreachable() -> None:
    """A step that no edge from the first step reaches is UNREACHABLE_STEP, named at that step."""
    spec = journey(send("hello"), delay("orphan", 60, "bye"), send("bye"))
    assert violations_of(spec) == {("spec.steps[1]", "UNREACHABLE_STEP"), ("spec.steps[2]", "UNREACHABLE_STEP")}


def test_every_step_reached_through_branches_is_fine() -> None:
    """Steps reached only through a condition's arms are reachable."""
    spec = journey(condition("check", "true", then="yes", else_="no"), send("yes"), send("no"))
    compiled, problems = compile_journey(spec)
    assert problems == [] and compiled is not None


def test_bad_condition_expression_is_rejected() -> None:
    """A condition expression that does not parse is a SYNTAX_ERROR at the condition's expression."""
    violations = violations_of(journey(condition("check", "profile.traits.plan == ")))
    assert violations == {("spec.steps[0].condition.expression", "SYNTAX_ERROR")}


def test_invalid_condition_expression_is_rejected() -> None:
    """A condition expression that parses but is invalid (a bad regex) is INVALID_EXPRESSION."""
    violations = violations_of(journey(condition("check", 'profile.traits.plan =~ "("')))
    assert violations == {("spec.steps[0].condition.expression", "INVALID_EXPRESSION")}


def test_empty_condition_expression_is_required() -> None:
    """A condition step without an expression is REQUIRED."""
    assert violations_of(journey(condition("check", ""))) == {("spec.steps[0].condition.expression", "REQUIRED")}


def test_bad_jinja_template_is_rejected() -> None:
    """A template part that does not compile is TEMPLATE_SYNTAX_ERROR at templates[name].part, naming the line."""
    templates = {"welcome": J.MessageTemplate(subject="fine", text_body="line one\n{% if x %}never closed")}
    compiled, violations = compile_journey(journey(send("hello"), templates=templates))
    assert compiled is None
    assert [(v.field, v.reason) for v in violations] == [("spec.templates[welcome].text_body", "TEMPLATE_SYNTAX_ERROR")]
    assert "line 2" in violations[0].description


def test_unsupported_step_kinds_are_rejected() -> None:
    """A step kind this release cannot run (webhook, until its connector takes per-step URLs) is UNSUPPORTED at its kind."""
    assert "webhook" not in SUPPORTED_STEPS
    step = J.Step(id="call", webhook=J.WebhookStep(url="https://example.com"))
    assert violations_of(journey(step)) == {("spec.steps[0].webhook", "UNSUPPORTED")}


def test_supported_steps() -> None:
    """This release runs every step kind of the contract but webhook."""
    kinds = {f.name for f in J.Step.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds - SUPPORTED_STEPS == {"webhook"}


@pytest.mark.parametrize(("rule_set", "reason"), [("", "REQUIRED"), ("Marketing Email", "INVALID_NAME")])
def test_send_step_needs_a_rule_set(rule_set: str, reason: str) -> None:
    """A journey with a send step must name a valid rule set."""
    assert violations_of(journey(send("hello"), rule_set=rule_set)) == {("spec.rule_set", reason)}


@pytest.mark.parametrize("seconds", [0, -60, 90 * 86400 + 1])
def test_delay_out_of_range_is_rejected(seconds: int) -> None:
    """A delay that is not positive, or longer than 90 days, is OUT_OF_RANGE."""
    assert violations_of(journey(delay("wait", seconds))) == {("spec.steps[0].delay.duration", "OUT_OF_RANGE")}


def test_delay_of_90_days_is_allowed() -> None:
    """A delay of exactly 90 days is the longest accepted."""
    compiled, violations = compile_journey(journey(delay("wait", 90 * 86400)))
    assert violations == []
    assert compiled is not None


def test_prefix_roots_field_paths() -> None:
    """The prefix argument roots every field path."""
    _, violations = compile_journey(journey(send("hello", template="nope")), prefix="journey.spec")
    assert [v.field for v in violations] == ["journey.spec.steps[0].send.template"]


# --- templates ---------------------------------------------------------------


def test_render_of_no_template_is_empty() -> None:
    """Rendering a missing template part gives the empty string."""
    assert render(None, {"profile": {}}) == ""


def test_missing_values_fail_the_render_unless_the_template_says_what_to_do() -> None:
    """A value missing at send time fails the render; `default`, `is defined` and `if` handle it, even through a chain."""
    with pytest.raises(jinja2.UndefinedError, match="first_name"):
        templates_env.from_string("Hi {{ profile.traits.first_name }}!").render(profile={"traits": {}})
    template = templates_env.from_string(
        "Hi {{ profile.traits.address.city | default('there') }}{% if profile.traits.vip %} VIP{% endif %}"
        "{{ ' (known)' if profile.traits.first_name is defined else '' }}!")
    assert template.render(profile={"traits": {}}) == "Hi there!"


def test_templates_render_in_a_sandbox() -> None:
    """Templates cannot reach Python internals or mutate what they are given."""
    with pytest.raises(jinja2.sandbox.SecurityError):
        templates_env.from_string("{{ ''.__class__.__mro__ }}").render()
    items: list[int] = []
    with pytest.raises(jinja2.sandbox.SecurityError):
        templates_env.from_string("{{ items.append(1) }}").render(items=items)
    assert items == []
