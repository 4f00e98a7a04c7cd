"""Unit tests of :mod:`overture_rules.diff`: the changes between two rule set specs."""

from __future__ import annotations

import json

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.diff import diff_specs

ADDED, REMOVED, CHANGED = R.RULE_SET_CHANGE_KIND_ADDED, R.RULE_SET_CHANGE_KIND_REMOVED, R.RULE_SET_CHANGE_KIND_CHANGED


def rule(id_: str, expression: str = "vip", effect: int = R.RULE_EFFECT_DENY, **fields: str) -> R.Rule:
    """One rule."""
    return R.Rule(id=id_, expression=expression, effect=effect, **fields)  # type: ignore[arg-type]


def changes(before: R.RuleSetSpec, after: R.RuleSetSpec) -> list[tuple[str, int]]:
    """The (path, kind) pairs of the diff."""
    return [(c.path, c.kind) for c in diff_specs(before, after)]


def test_identical_specs_have_no_changes() -> None:
    """A spec compared with itself has no changes."""
    spec = R.RuleSetSpec(description="d", rules=[rule("a"), rule("b")], suppression_lists=["x"])
    assert diff_specs(spec, spec) == []


def test_reordering_rules_is_not_a_change() -> None:
    """Rules are matched by id, so reordering them reports nothing."""
    before = R.RuleSetSpec(rules=[rule("a", "x > 1"), rule("b", "y > 1"), rule("c", "z > 1")])
    after = R.RuleSetSpec(rules=[rule("c", "z > 1"), rule("a", "x > 1"), rule("b", "y > 1")])
    assert diff_specs(before, after) == []


def test_changed_expression_is_reported_at_the_rule_by_id() -> None:
    """A changed expression is CHANGED at rules[id=x].expression, with JSON before and after."""
    before = R.RuleSetSpec(rules=[rule("a"), rule("x", 'plan == "free"')])
    after = R.RuleSetSpec(rules=[rule("x", 'plan == "trial"'), rule("a")])
    (change,) = diff_specs(before, after)
    assert (change.path, change.kind) == ("rules[id=x].expression", CHANGED)
    assert json.loads(change.before) == 'plan == "free"'
    assert json.loads(change.after) == 'plan == "trial"'


def test_changed_effect_is_reported() -> None:
    """Changing a rule's effect is CHANGED at rules[id=x].effect, with enum names."""
    (change,) = diff_specs(R.RuleSetSpec(rules=[rule("x")]), R.RuleSetSpec(rules=[rule("x", effect=R.RULE_EFFECT_REQUIRE)]))
    assert (change.path, change.kind) == ("rules[id=x].effect", CHANGED)
    assert json.loads(change.before) == "RULE_EFFECT_DENY"
    assert json.loads(change.after) == "RULE_EFFECT_REQUIRE"


def test_added_and_removed_rules() -> None:
    """A rule only in the newer spec is ADDED and one only in the older is REMOVED, with the whole rule as JSON."""
    before = R.RuleSetSpec(rules=[rule("keep"), rule("old", "a > 1")])
    after = R.RuleSetSpec(rules=[rule("keep"), rule("new", "b > 2")])
    result = diff_specs(before, after)
    assert [(c.path, c.kind) for c in result] == [("rules[id=old]", REMOVED), ("rules[id=new]", ADDED)]
    assert json.loads(result[0].before)["expression"] == "a > 1"
    assert result[0].after == ""
    assert json.loads(result[1].after)["expression"] == "b > 2"
    assert result[1].before == ""


def test_field_added_and_removed_inside_a_rule() -> None:
    """A field set only in one version of a rule is ADDED or REMOVED at its path under the rule."""
    assert changes(R.RuleSetSpec(rules=[rule("x")]), R.RuleSetSpec(rules=[rule("x", reason="why")])) == [("rules[id=x].reason", ADDED)]
    assert changes(R.RuleSetSpec(rules=[rule("x", reason="why")]), R.RuleSetSpec(rules=[rule("x")])) == [("rules[id=x].reason", REMOVED)]


def test_first_rule_added_to_an_empty_spec_is_the_whole_list() -> None:
    """Adding rules where there were none is one ADDED change at `rules`."""
    assert changes(R.RuleSetSpec(), R.RuleSetSpec(rules=[rule("x")])) == [("rules", ADDED)]


def test_attributes_and_test_cases_are_matched_by_name() -> None:
    """Attributes and test cases are matched by name, so reordering them is not a change and edits are at [name=...]."""
    a1 = R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_STRING)
    a2 = R.AttributeDeclaration(name="score", type=R.ATTRIBUTE_TYPE_NUMBER)
    a2_changed = R.AttributeDeclaration(name="score", type=R.ATTRIBUTE_TYPE_STRING)
    t1 = R.RuleTestCase(name="one", expect=R.TestExpectation(allowed=True))
    t2 = R.RuleTestCase(name="two", channel=M.CHANNEL_EMAIL)
    t2_changed = R.RuleTestCase(name="two", channel=M.CHANNEL_SMS)
    before = R.RuleSetSpec(attributes=[a1, a2], test_cases=[t1, t2])
    assert diff_specs(before, R.RuleSetSpec(attributes=[a2, a1], test_cases=[t2, t1])) == []
    after = R.RuleSetSpec(attributes=[a2_changed, a1], test_cases=[t2_changed, t1])
    assert changes(before, after) == [("attributes[name=score].type", CHANGED), ("test_cases[name=two].channel", CHANGED)]


def test_frequency_caps_are_matched_by_id() -> None:
    """Frequency caps are matched by id."""
    c1 = R.FrequencyCap(id="daily", scope=R.CAP_SCOPE_ALL_CHANNELS, limit=1)
    c2 = R.FrequencyCap(id="weekly", scope=R.CAP_SCOPE_ALL_CHANNELS, limit=5)
    c2_changed = R.FrequencyCap(id="weekly", scope=R.CAP_SCOPE_ALL_CHANNELS, limit=6)
    assert changes(R.RuleSetSpec(frequency_caps=[c1, c2]), R.RuleSetSpec(frequency_caps=[c2_changed, c1])) == [
        ("frequency_caps[id=weekly].limit", CHANGED)
    ]


def test_nested_scalar_changes_have_dotted_paths() -> None:
    """A change inside a nested message is reported at its dotted path."""
    before = R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end="07:00"))
    after = R.RuleSetSpec(quiet_hours=R.QuietHours(start="21:00", end="07:00", default_timezone="UTC"))
    assert changes(before, after) == [("quiet_hours.start", CHANGED), ("quiet_hours.default_timezone", ADDED)]


def test_top_level_fields_added_removed_and_changed() -> None:
    """Top-level scalar fields are reported as ADDED, REMOVED or CHANGED by name."""
    assert changes(R.RuleSetSpec(), R.RuleSetSpec(description="new")) == [("description", ADDED)]
    assert changes(R.RuleSetSpec(description="old"), R.RuleSetSpec()) == [("description", REMOVED)]
    assert changes(R.RuleSetSpec(description="old"), R.RuleSetSpec(description="new")) == [("description", CHANGED)]


def test_unkeyed_lists_are_compared_whole() -> None:
    """Lists without ids, such as suppression_lists, are compared as one value."""
    (change,) = diff_specs(R.RuleSetSpec(suppression_lists=["a"]), R.RuleSetSpec(suppression_lists=["a", "b"]))
    assert (change.path, change.kind) == ("suppression_lists", CHANGED)
    assert json.loads(change.before) == ["a"]
    assert json.loads(change.after) == ["a", "b"]


def test_changes_come_in_document_order() -> None:
    """Changes follow the order of the older spec's fields, then fields only in the newer one."""
    before = R.RuleSetSpec(description="a", rules=[rule("r1"), rule("r2")], suppression_lists=["x"])
    after = R.RuleSetSpec(description="b", rules=[rule("r2", "w"), rule("r1", "v")], suppression_lists=["y"],
                          quiet_hours=R.QuietHours(start="22:00", end="07:00"))
    assert [c.path for c in diff_specs(before, after)] == [
        "description",
        "rules[id=r1].expression",
        "rules[id=r2].expression",
        "suppression_lists",
        "quiet_hours",
    ]
