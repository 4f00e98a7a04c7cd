"""Unit tests of :mod:`overture_orchestrator.contexts`: a run's flat context
as templates and conditions read it, ``steps.<step id>.<key>``."""

from __future__ import annotations

from overture_orchestrator.contexts import steps_of
from overture_orchestrator.rendering import render_text
from overture_runtime.templates import template_scope


def test_what_earlier_steps_left_is_grouped_by_step() -> None:
    """Context keys `<step>.<key>` become `{step: {key: value}}`, split at the first dot; loop visit counters are left out."""
    context = {"wait.event": {"event_id": "e-9", "attributes": {"coupon": "SAVE10"}}, "call.response": {"status": 200, "body": {"ok": True}},
               "call.response.raw": "x", "visits:loop": 2, "ask.approval": {"decision": "approved", "by": "lead"}}
    assert steps_of(context) == {"wait": {"event": context["wait.event"]}, "call": {"response": context["call.response"], "response.raw": "x"},
                                 "ask": {"approval": context["ask.approval"]}}


def test_templates_read_it_as_steps() -> None:
    """A template reads the event that ended a wait and a kept response as `steps.<step>.<key>`."""
    context = {"wait.event": {"attributes": {"coupon": "SAVE10"}}, "call.response": {"status": 200}}
    scope = template_scope(profile={}, event={}, run={}, steps=steps_of(context))
    assert render_text("{{ steps.wait.event.attributes.coupon }} {{ steps.call.response.status }}", scope, where="x") == "SAVE10 200"


def test_an_empty_context_leaves_no_steps() -> None:
    """A run that has kept nothing reads an empty `steps`."""
    assert steps_of({}) == {} and steps_of({"visits:loop": 3}) == {}
