"""Unit tests of :mod:`overture_runtime.templates`: the scope templates may read, the check against it, and strict rendering."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
import pytest

from overture.common.v1 import event_pb2
from overture_runtime.templates import (
    SCOPE,
    Kind,
    check_template,
    event_scope,
    html_environment,
    profile_scope,
    run_scope,
    template_scope,
    text_environment,
)


def variables(source: str) -> list[str]:
    """The variables *source* reads that cannot exist."""
    return [p.variable for p in check_template(source)]


def test_a_misspelt_namespace_is_a_problem_naming_the_variable_line_and_the_fix() -> None:
    """`profile.trait.first_name` is refused as `profile.trait`, on its line, suggesting `profile.traits`, even under `default`."""
    (problem,) = check_template("Hello\n{{ profile.trait.first_name | default('there') }}")
    assert problem.variable == "profile.trait" and problem.line == 2
    assert "line 2" in problem.description and "did you mean profile.traits?" in problem.description


def test_an_unknown_top_level_name_is_a_problem() -> None:
    """A bare `first_name` or a misspelt `evnt` cannot exist, and the description points at what was meant."""
    problems = {p.variable: p.description for p in check_template("{{ first_name }} {{ evnt.attributes.plan }}")}
    assert set(problems) == {"first_name", "evnt"}
    assert "profile.traits.first_name" in problems["first_name"] and "did you mean event?" in problems["evnt"]


def test_unknown_fields_of_run_and_event_are_problems() -> None:
    """Every namespace is closed: `run.id` and `event["attribute"]` are refused."""
    assert variables("{{ run.id }}{{ event['attribute'].x }}") == ["event.attribute", "run.id"]


def test_data_keys_are_not_checked() -> None:
    """Any key under profile.traits or event.attributes may exist, however it is written."""
    assert variables("{{ profile.traits.anything.deeper }}{{ event.attributes['plan'] }}{{ profile.traits[event.attributes.k] }}") == []


def test_locals_loops_globals_methods_and_filters_are_not_problems() -> None:
    """Names a template defines itself, Jinja's globals, values' methods and mapping methods pass."""
    source = ("{% set greeting = 'Hi' %}{{ greeting }}{% for s in profile.segments %}{{ loop.index }}{{ s | upper }}{% endfor %}"
              "{{ range(2) | list }}{{ profile.timezone.upper() }}{% for k, v in profile.traits.items() %}{{ k }}{% endfor %}")
    assert variables(source) == []


def test_including_other_templates_is_a_problem() -> None:
    """A message template cannot include, import or extend another template."""
    (problem,) = check_template("{% include 'footer' %}")
    assert "include" in problem.description


def test_a_template_that_does_not_parse_raises_a_syntax_error() -> None:
    """The check parses the template, and reports a syntax error as Jinja does."""
    with pytest.raises(jinja2.TemplateSyntaxError):
        check_template("{% if %}")


def _shape_of(scope: Mapping[str, Any]) -> dict[str, set[str] | None]:
    """Each namespace's field names; None for one whose keys are data (``steps``)."""
    return {root: None if isinstance(fields, Kind) or root == "steps" else set(fields) for root, fields in scope.items()}


def test_the_renderers_scope_has_exactly_the_names_the_check_allows() -> None:
    """The scope the builders make for rendering has the namespaces and fields of SCOPE, no more and no fewer."""
    event = event_pb2.Event(event_id="e1", event_type="user.signed_up")
    event.attributes.update({"plan": "pro"})
    scope = template_scope(
        profile=profile_scope(subject_id="s1", traits={"first_name": "Ada"}, segments=["vip"], timezone="UTC"),
        event=event_scope(event), run=run_scope(run_id="r1", journey="welcome", step_id="send"),
    )
    assert _shape_of(scope) == _shape_of(SCOPE)
    for root, fields in SCOPE.items():
        if isinstance(fields, Kind):
            assert (fields is Kind.MAPPING) == isinstance(scope[root], dict), root
            continue
        for name, kind in fields.items():
            assert (kind is Kind.MAPPING) == isinstance(scope[root][name], dict), f"{root}.{name}"


def test_rendering_is_strict_about_missing_values() -> None:
    """A missing value fails the render rather than rendering blank; default, is defined and if handle absence."""
    with pytest.raises(jinja2.UndefinedError, match="first_name"):
        text_environment.from_string("Hi {{ profile.traits.first_name }}").render(profile={"traits": {}})
    with pytest.raises(jinja2.UndefinedError):
        text_environment.from_string("{% for x in event.attributes.items_bought %}{{ x }}{% endfor %}").render(event={"attributes": {}})
    rendered = text_environment.from_string(
        "{{ profile.traits.a.b | default('-') }}{% if profile.traits.vip %}!{% endif %}{{ profile.traits.c is defined }}"
    ).render(profile={"traits": {}})
    assert rendered == "-False"


def test_html_bodies_escape_what_they_insert() -> None:
    """The HTML environment escapes inserted values; the text environment leaves them as they are."""
    scope = {"profile": {"traits": {"first_name": "<b>Ada</b>"}}}
    assert html_environment.from_string("<p>{{ profile.traits.first_name }}</p>").render(**scope) == "<p>&lt;b&gt;Ada&lt;/b&gt;</p>"
    assert text_environment.from_string("{{ profile.traits.first_name }}").render(**scope) == "<b>Ada</b>"


def test_a_whole_number_prints_as_one_and_a_fraction_keeps_its_digits() -> None:
    """Every number of an event or a profile arrives as a double (JSON and Struct have no integers), yet 1200 prints as 1200, not 1200.0, in text and HTML."""
    scope = {"event": {"attributes": {"spend": 1200.0, "rate": 2.5, "huge": 1e300}}}
    source = "{{ event.attributes.spend }} {{ event.attributes.rate }} {{ event.attributes.spend * 2 }} {{ event.attributes.huge }}"
    for environment in (text_environment, html_environment):
        assert environment.from_string(source).render(**scope) == "1200 2.5 2400 1e+300"
