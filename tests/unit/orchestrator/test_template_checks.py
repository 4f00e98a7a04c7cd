"""Unit tests of the template checks of :func:`overture_orchestrator.definition.compile_journey`: a name that cannot exist is refused at publish, naming the step and the variable."""

from __future__ import annotations

from google.protobuf import duration_pb2

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.definition import compile_journey


def spec(subject: str, *, to: str = "", html: str = "") -> J.JourneySpec:
    """A journey whose second step sends the `welcome` template with *subject*."""
    return J.JourneySpec(
        trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up")), rule_set="marketing-email",
        steps=[J.Step(id="wait", next="send-welcome", delay=J.DelayStep(duration=duration_pb2.Duration(seconds=60))),
               J.Step(id="send-welcome", send=J.SendStep(channel=M.CHANNEL_EMAIL, template="welcome", to=to))],
        templates={"welcome": J.MessageTemplate(subject=subject, text_body="Thanks", html_body=html)},
    )


def test_a_misspelt_namespace_in_a_template_is_refused_naming_the_step_and_the_variable() -> None:
    """`profile.trait.first_name` fails publish at the template's field, naming the variable, its line, the template and the step that sends it."""
    compiled, violations = compile_journey(spec("Hi {{ profile.trait.first_name | default('there') }}"))
    assert compiled is None
    (violation,) = violations
    assert violation.field == "spec.templates[welcome].subject" and violation.reason == "UNKNOWN_TEMPLATE_VARIABLE"
    assert "profile.trait " in violation.description and "line 1" in violation.description
    assert "step 'send-welcome' (spec.steps[1])" in violation.description


def test_an_unknown_name_in_an_html_body_or_address_is_refused() -> None:
    """The HTML body and the `to` address are checked too, each at its own field."""
    _, violations = compile_journey(spec("Hi", html="<p>{{ name }}</p>", to="{{ profile.traits.work_email }}{{ addres }}"))
    assert {(v.field, v.reason) for v in violations} == {
        ("spec.templates[welcome].html_body", "UNKNOWN_TEMPLATE_VARIABLE"), ("spec.steps[1].send.to", "UNKNOWN_TEMPLATE_VARIABLE")}
    assert any("'addres'" in v.description and "send-welcome" in v.description for v in violations)


def test_templates_reading_only_names_that_can_exist_compile() -> None:
    """Traits, attributes and run fields that the renderer provides pass, whatever the data holds."""
    compiled, violations = compile_journey(spec("{{ profile.traits.first_name | default('there') }} ({{ run.run_id }}, {{ event.event_type }})"))
    assert violations == [] and compiled is not None


def test_a_template_that_does_not_parse_is_refused_naming_its_line() -> None:
    """A template part that does not compile is TEMPLATE_SYNTAX_ERROR at templates[name].part, naming the line."""
    spec_ = spec("fine")
    spec_.templates["welcome"].text_body = "line one\n{% if x %}never closed"
    _, violations = compile_journey(spec_)
    assert [(v.field, v.reason) for v in violations] == [("spec.templates[welcome].text_body", "TEMPLATE_SYNTAX_ERROR")]
    assert "line 2" in violations[0].description


def test_structured_template_data_is_checked_string_by_string() -> None:
    """Each string inside a template's data (for push, webhook and in-app messages) is checked at its own path."""
    spec_ = spec("fine")
    spec_.templates["welcome"].data.update({"title": "{{ profile.traits.first_name }}", "actions": [{"url": "{{ link }}"}]})
    _, violations = compile_journey(spec_)
    assert [(v.field, v.reason) for v in violations] == [("spec.templates[welcome].data.actions[0].url", "UNKNOWN_TEMPLATE_VARIABLE")]
