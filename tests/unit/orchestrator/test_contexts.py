"""Unit tests of :mod:`overture_orchestrator.contexts`: a run's flat context
as templates and conditions read it, ``steps.<step id>.<key>``."""

from __future__ import annotations

from overture_orchestrator.contexts import effect_key, effect_step, steps_of
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


def test_an_effect_key_is_run_and_step_the_first_time_and_counts_each_time_a_loop_brings_the_step_back() -> None:
    """A step's effects are keyed `run_id:step_id` until the run has left it, then `#2`, `#3`...; effect_step reads either back."""
    assert effect_key("r1", "nudge", {}) == "r1:nudge"
    assert effect_key("r1", "nudge", {"done:nudge": 1, "done:other": 5}) == "r1:nudge#2"
    assert effect_key("r1", "nudge", {"done:nudge": 2}) == "r1:nudge#3"
    assert effect_step("r1:nudge") == effect_step("r1:nudge#3") == ("r1", "nudge")
    assert steps_of({"done:nudge": 2}) == {}  # a counter, not something steps read
