"""Unit tests of :mod:`overture_console.diffs`: the differences between two
versions of a journey's definition (or of any JSON, such as a rule set's
spec): each a path, added, removed or changed, with the values before
and after; steps (and rules) matched by id."""

from __future__ import annotations

import copy
import json
from typing import Any

from google.protobuf import json_format

from overture.rules.v1 import rule_set_pb2 as R
from overture_cli.specfile import load_spec
from overture_console.builder import spec_values
from overture_console.diffs import Change, diff

from .forms import ROOT, journey_file


def welcome() -> dict[str, Any]:
    """The welcome series as the JSON mapping the journey page diffs."""
    return spec_values(journey_file("welcome-series")[1])


def test_identical_versions_have_no_difference() -> None:
    """Two equal definitions (the same file read twice) have no change at all."""
    assert diff(welcome(), welcome()) == []
    assert diff({}, {}) == []


def test_a_changed_field_of_a_step_is_one_change_at_the_steps_id() -> None:
    """A send step's template changed: one change at ``steps[id=welcome].send.template`` with both values as JSON."""
    after = welcome()
    after["steps"][0]["send"]["template"] = "hello"
    assert diff(welcome(), after) == [Change("steps[id=welcome].send.template", "changed", '"welcome"', '"hello"')]


def test_an_inserted_step_is_one_added_step_not_every_later_step_changed() -> None:
    """A step inserted second, with the first step's next moved to it, is that change and one added step, with the added step
    whole (keys sorted) as its after."""
    after = welcome()
    extra = {"id": "nudge", "send": {"channel": "CHANNEL_EMAIL", "template": "welcome"}, "next": "wait-two-days"}
    after["steps"].insert(1, extra)
    after["steps"][0]["next"] = "nudge"
    assert diff(welcome(), after) == [
        Change("steps[id=welcome].next", "changed", '"wait-two-days"', '"nudge"'),
        Change("steps[id=nudge]", "added", "", json.dumps(extra, sort_keys=True)),
    ]


def test_a_removed_step_is_one_removed_step() -> None:
    """The last step removed: one removed change holding the step, and the change of the step that led to it."""
    before = welcome()
    after = copy.deepcopy(before)
    gone = after["steps"].pop()
    del after["steps"][-1]["next"]
    assert diff(before, after) == [
        Change("steps[id=wait-four-days].next", "removed", '"invite-team"', ""),
        Change("steps[id=invite-team]", "removed", json.dumps(gone, sort_keys=True), ""),
    ]


def test_steps_in_another_order_are_a_change() -> None:
    """The first step is where every run starts: the same steps in another order are not the same journey, and the diff says
    so, with the order of step ids before and after."""
    before = welcome()
    after = copy.deepcopy(before)
    after["steps"][0], after["steps"][1] = after["steps"][1], after["steps"][0]
    changes = diff(before, after)
    assert changes == [Change("steps", "changed", json.dumps([s["id"] for s in before["steps"]]),
                              json.dumps([s["id"] for s in after["steps"]]))]


def test_added_and_removed_keys_are_named_by_their_path() -> None:
    """A key only after is added, a key only before is removed, each at its dotted path, in document order."""
    before = {"trigger": {"event": {"event_type": "a", "filter": "x"}}, "rule_set": "marketing-email"}
    after = {"trigger": {"event": {"event_type": "a"}}, "rule_set": "marketing-email", "goal": {"event_type": "purchase.made"}}
    assert diff(before, after) == [Change("trigger.event.filter", "removed", '"x"', ""),
                                   Change("goal", "added", "", '{"event_type": "purchase.made"}')]


def test_lists_without_ids_compare_by_position_or_as_a_whole() -> None:
    """A list of words of the same length differs item by item; of another length it is one change of the whole list."""
    assert diff({"tags": ["a", "b"]}, {"tags": ["a", "c"]}) == [Change("tags[1]", "changed", '"b"', '"c"')]
    assert diff({"tags": ["a"]}, {"tags": ["a", "b"]}) == [Change("tags", "changed", '["a"]', '["a", "b"]')]


def test_objects_with_repeated_ids_compare_by_position() -> None:
    """A list whose ids repeat (a draft's) cannot be matched by id; it is compared by position."""
    before = [{"id": "a", "v": 1}, {"id": "a", "v": 2}]
    after = [{"id": "a", "v": 1}, {"id": "a", "v": 3}]
    assert diff(before, after) == [Change("[1].v", "changed", "2", "3")]


def test_a_value_of_another_type_is_changed_whole() -> None:
    """A value that is an object before and text after is one change; at the top the path is ``(all)``."""
    assert diff({"a": {"b": 1}}, {"a": "b"}) == [Change("a", "changed", '{"b": 1}', '"b"')]
    assert diff([1], {"a": 1}) == [Change("(all)", "changed", "[1]", '{"a": 1}')]


def test_text_is_shown_as_written() -> None:
    """Values are JSON with their characters as written (not \\u escapes), so a subject in another script reads as itself."""
    assert diff({"subject": "Hallo"}, {"subject": "Grüß dich — 👋"}) == [Change("subject", "changed", '"Hallo"', '"Grüß dich — 👋"')]


def test_a_rule_set_changed_by_one_rule_is_that_rules_change() -> None:
    """Rule sets keep rules by id too: in the marketing-email rule set, a rule's expression changed and a rule added are two
    changes, each at its rule's id."""
    _, spec = load_spec(ROOT / "examples" / "marketing-email.yaml", R.RuleSetSpec)
    before = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    after = copy.deepcopy(before)
    first = after["rules"][0]
    first["expression"] = "true"
    added = {"id": "no-trials", "effect": "RULE_EFFECT_DENY", "expression": 'plan == "trial"', "reason": "trials get no offers"}
    after["rules"].append(added)
    assert diff(before, after) == [
        Change(f"rules[id={first['id']}].expression", "changed", json.dumps(before["rules"][0]["expression"]), '"true"'),
        Change("rules[id=no-trials]", "added", "", json.dumps(added, sort_keys=True)),
    ]
