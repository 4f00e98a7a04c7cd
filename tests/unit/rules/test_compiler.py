"""Unit tests of :mod:`overture_rules.compiler`: validating and compiling a rule set version."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.compiler import BUILTINS, MAX_ROLLING_WINDOW, compile_rule_set, dangerous_regex
from overture_runtime.errors import FieldViolation

ATTRIBUTES = (
    R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_STRING, source=R.ATTRIBUTE_SOURCE_TRAIT),
    R.AttributeDeclaration(name="name", type=R.ATTRIBUTE_TYPE_STRING),
    R.AttributeDeclaration(name="score", type=R.ATTRIBUTE_TYPE_NUMBER),
    R.AttributeDeclaration(name="vip", type=R.ATTRIBUTE_TYPE_BOOLEAN),
    R.AttributeDeclaration(name="signed_up", type=R.ATTRIBUTE_TYPE_DATETIME),
    R.AttributeDeclaration(name="interests", type=R.ATTRIBUTE_TYPE_STRING_LIST),
)


def rule(expression: str, *, id_: str = "r", effect: int = R.RULE_EFFECT_DENY) -> R.Rule:
    """One rule with the given expression."""
    return R.Rule(id=id_, expression=expression, effect=effect, reason=f"{id_} decided")


def spec_with(*rules: R.Rule, **fields: object) -> R.RuleSetSpec:
    """A spec declaring ATTRIBUTES with *rules* and any other *fields*."""
    return R.RuleSetSpec(attributes=list(ATTRIBUTES), rules=list(rules), **fields)  # type: ignore[arg-type]


def violations_of(spec: R.RuleSetSpec) -> list[FieldViolation]:
    """Compile *spec*, expecting rejection; return its violations."""
    compiled, violations = compile_rule_set(spec)
    assert compiled is None
    assert violations
    return violations


def reasons(violations: list[FieldViolation]) -> set[tuple[str, str]]:
    """The (field, reason) pairs of *violations*."""
    return {(v.field, v.reason) for v in violations}


def test_valid_rule_set_compiles() -> None:
    """A rule set with typed attributes, rules, consents, quiet hours and suppression lists compiles with no violations."""
    spec = spec_with(
        rule('plan == "churned"', id_="not-churned"),
        rule("vip or score >= 10", id_="engaged", effect=R.RULE_EFFECT_REQUIRE),
        rule('"sports" in interests and channel == "email"', id_="sporty"),
        rule('signed_up < d"2025-01-01" and priority > 1 and "promo" in tags and "beta" in segments', id_="old"),
        consents=[R.ConsentRequirement(channel=messaging_pb2.CHANNEL_EMAIL, purpose="marketing")],
        quiet_hours=R.QuietHours(start="22:00", end="07:00", default_timezone="Europe/Berlin"),
        suppression_lists=["hard-bounces", "unsubscribed"],
    )
    compiled, violations = compile_rule_set(spec)
    assert violations == []
    assert compiled is not None
    assert [r.id for r in compiled.rules] == ["not-churned", "engaged", "sporty", "old"]
    assert set(compiled.attributes) == {a.name for a in ATTRIBUTES}
    assert compiled.spec is spec


def test_compiled_rule_records_the_symbols_it_reads_and_its_effect() -> None:
    """A compiled rule keeps its effect, its reason and the attribute names its expression reads."""
    compiled, _ = compile_rule_set(spec_with(rule('plan == "pro" and score > 3', id_="pro", effect=R.RULE_EFFECT_REQUIRE)))
    assert compiled is not None
    (only,) = compiled.rules
    assert only.symbols == frozenset({"plan", "score"})
    assert only.effect == R.RULE_EFFECT_REQUIRE
    assert only.reason == "pro decided"


def test_rule_reason_falls_back_to_description_then_id() -> None:
    """A rule without a reason uses its description, and without either its id."""
    spec = spec_with(
        R.Rule(id="described", description="the description", expression="vip", effect=R.RULE_EFFECT_DENY),
        R.Rule(id="bare", expression="vip", effect=R.RULE_EFFECT_DENY),
    )
    compiled, _ = compile_rule_set(spec)
    assert compiled is not None
    assert [r.reason for r in compiled.rules] == ["the description", "bare"]


def test_empty_spec_compiles() -> None:
    """A spec with nothing in it is valid: it has no rules to break."""
    compiled, violations = compile_rule_set(R.RuleSetSpec())
    assert violations == []
    assert compiled is not None
    assert compiled.rules == ()


@pytest.mark.parametrize(
    ("expression", "position"),
    [("plan ==", 7), ('plan == == "x"', 8), ('plan == "x" and (', 17)],
)
def test_syntax_error_is_reported_at_the_rule_expression_with_its_position(expression: str, position: int) -> None:
    """A syntax error is a SYNTAX_ERROR on spec.rules[i].expression that names the rule and the error's position."""
    violations = violations_of(spec_with(rule("vip", id_="fine"), rule(expression, id_="broken")))
    assert len(violations) == 1
    (v,) = violations
    assert v.field == "spec.rules[1].expression"
    assert v.reason == "SYNTAX_ERROR"
    assert f"position {position}" in v.description
    assert "'broken'" in v.description


def test_syntax_error_quotes_the_text_near_the_error() -> None:
    """A syntax error in the middle of an expression quotes the text from the error's position."""
    (v,) = violations_of(spec_with(rule('plan == == "x"')))
    assert "near '== \"x\"'" in v.description


def test_prefix_changes_the_field_paths() -> None:
    """The prefix argument roots every field path, so callers can nest a spec in a request."""
    _, violations = compile_rule_set(spec_with(rule("plan ==")), prefix="version.spec")
    assert [v.field for v in violations] == ["version.spec.rules[0].expression"]


def test_unknown_attribute_is_rejected_with_a_suggestion() -> None:
    """An expression reading an undeclared name is UNKNOWN_ATTRIBUTE, suggesting the closest declared name."""
    (v,) = violations_of(spec_with(rule('plna == "pro"')))
    assert (v.field, v.reason) == ("spec.rules[0].expression", "UNKNOWN_ATTRIBUTE")
    assert "'plna'" in v.description
    assert "'plan'" in v.description


def test_type_error_is_rejected() -> None:
    """Comparing a STRING attribute with a number is a TYPE_ERROR at compile time."""
    (v,) = violations_of(spec_with(rule("plan > 3")))
    assert (v.field, v.reason) == ("spec.rules[0].expression", "TYPE_ERROR")


def test_invalid_regular_expression_is_a_type_error() -> None:
    """A regular expression that does not compile is rejected, not left to fail at decision time."""
    (v,) = violations_of(spec_with(rule('name =~ "("')))
    assert v.reason == "TYPE_ERROR"


@pytest.mark.parametrize(
    ("expression", "builtin"),
    [
        ('signed_up < $now', "$now"),
        ('$today > d"2020-01-01"', "$today"),
        ("$random() > 0.5", "$random"),
        ("$random > 0.5", "$random"),
        ("score > $random(10)", "$random"),
        ('vip and (signed_up > $now or plan == "pro")', "$now"),
    ],
)
def test_time_and_randomness_builtins_are_banned(expression: str, builtin: str) -> None:
    """$now, $today and $random make decisions unreplayable, so each is a BANNED_BUILTIN wherever it appears."""
    violations = violations_of(spec_with(rule(expression)))
    assert reasons(violations) == {("spec.rules[0].expression", "BANNED_BUILTIN")}
    assert all(builtin in v.description for v in violations)


@pytest.mark.parametrize("expression", ['name == "$now"', "name == '$today at noon'", r'name == "say \"$random\""'])
def test_banned_names_inside_string_literals_are_allowed(expression: str) -> None:
    """Text such as "$now" inside a string literal is data, not a built-in, and compiles."""
    compiled, violations = compile_rule_set(spec_with(rule(expression)))
    assert violations == []
    assert compiled is not None


@pytest.mark.parametrize("expression", ['$NOW > d"2020-01-01"', "$nosuch > 1", "$Random() > 0.5"])
def test_unknown_builtins_are_rejected(expression: str) -> None:
    """An expression reading a built-in that does not exist is rejected when compiled, like an unknown attribute."""
    compiled, violations = compile_rule_set(spec_with(rule(expression)))
    assert compiled is None
    assert violations


def test_harmless_builtins_are_allowed() -> None:
    """Built-in constants that do not depend on time or chance, such as $pi, are allowed."""
    compiled, violations = compile_rule_set(spec_with(rule("score > $pi")))
    assert violations == []
    assert compiled is not None


def test_plain_string_catastrophic_regex_is_rejected() -> None:
    """The classic `name =~ "(a+)+$"` is UNSAFE_REGEX at the rule's expression, naming the pattern."""
    (v,) = violations_of(spec_with(rule('name =~ "(a+)+$"')))
    assert (v.field, v.reason) == ("spec.rules[0].expression", "UNSAFE_REGEX")
    assert "(a+)+$" in v.description


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*", "(a|a)*", r"(\w+\s?)+", "^(x+y*){2,}$"])
def test_catastrophic_regex_is_rejected(pattern: str) -> None:
    """A regular expression with a nested quantifier or a quantified alternation is UNSAFE_REGEX."""
    violations = violations_of(spec_with(rule(f'name =~ r"{pattern}"')))
    assert reasons(violations) == {("spec.rules[0].expression", "UNSAFE_REGEX")}
    assert dangerous_regex(pattern)


@pytest.mark.parametrize("pattern", ["^[a-z]+$", "^a+b*$", "(abc)+", r"^\d{3}-\d{4}$", "foo|bar"])
def test_safe_regex_passes(pattern: str) -> None:
    """A regular expression without nested quantifiers compiles."""
    compiled, violations = compile_rule_set(spec_with(rule(f'name =~ r"{pattern}"')))
    assert violations == []
    assert compiled is not None
    assert not dangerous_regex(pattern)


def test_every_problem_is_reported_at_once() -> None:
    """Problems in several rules are all reported in one answer, each at its own rule."""
    violations = violations_of(spec_with(rule("plan ==", id_="a"), rule("nope", id_="b"), rule("plan > 1", id_="c")))
    assert reasons(violations) == {
        ("spec.rules[0].expression", "SYNTAX_ERROR"),
        ("spec.rules[1].expression", "UNKNOWN_ATTRIBUTE"),
        ("spec.rules[2].expression", "TYPE_ERROR"),
    }


def test_duplicate_rule_ids_are_rejected() -> None:
    """Two rules with the same id are a DUPLICATE at the second one's id."""
    violations = violations_of(spec_with(rule("vip", id_="same"), rule("vip", id_="same")))
    assert reasons(violations) == {("spec.rules[1].id", "DUPLICATE")}


@pytest.mark.parametrize("bad_id", ["Upper", "under_score", "1starts-with-digit", "has space", "x" * 64, "-dash-first"])
def test_bad_rule_ids_are_rejected(bad_id: str) -> None:
    """A rule id that is not lower-case letters, digits and dashes is INVALID_NAME."""
    violations = violations_of(spec_with(rule("vip", id_=bad_id)))
    assert reasons(violations) == {("spec.rules[0].id", "INVALID_NAME")}


def test_missing_rule_id_is_required() -> None:
    """A rule without an id is REQUIRED at its id."""
    violations = violations_of(spec_with(rule("vip", id_="")))
    assert reasons(violations) == {("spec.rules[0].id", "REQUIRED")}


def test_missing_effect_is_rejected() -> None:
    """A rule whose effect is unspecified is REQUIRED at its effect."""
    violations = violations_of(spec_with(rule("vip", effect=R.RULE_EFFECT_UNSPECIFIED)))
    assert reasons(violations) == {("spec.rules[0].effect", "REQUIRED")}


def test_blank_expression_is_required() -> None:
    """A rule with an empty or blank expression is REQUIRED at its expression."""
    violations = violations_of(spec_with(rule("   ")))
    assert reasons(violations) == {("spec.rules[0].expression", "REQUIRED")}


@pytest.mark.parametrize("builtin", sorted(BUILTINS))
def test_builtin_names_cannot_be_redeclared(builtin: str) -> None:
    """Declaring an attribute named like a built-in (channel, category, tags, segments, priority) is RESERVED_NAME."""
    spec = R.RuleSetSpec(attributes=[R.AttributeDeclaration(name=builtin, type=R.ATTRIBUTE_TYPE_STRING)])
    assert reasons(violations_of(spec)) == {("spec.attributes[0].name", "RESERVED_NAME")}


def test_attribute_declared_twice_is_a_duplicate() -> None:
    """The same attribute name declared twice is a DUPLICATE at the second declaration."""
    spec = R.RuleSetSpec(
        attributes=[
            R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_STRING),
            R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_NUMBER),
        ]
    )
    assert reasons(violations_of(spec)) == {("spec.attributes[1].name", "DUPLICATE")}


@pytest.mark.parametrize("bad_name", ["Plan", "has-dash", "1plan", ""])
def test_attribute_names_must_be_identifiers(bad_name: str) -> None:
    """An attribute name that is not a lower-case identifier is INVALID_NAME."""
    spec = R.RuleSetSpec(attributes=[R.AttributeDeclaration(name=bad_name, type=R.ATTRIBUTE_TYPE_STRING)])
    assert reasons(violations_of(spec)) == {("spec.attributes[0].name", "INVALID_NAME")}


def test_attribute_type_is_required() -> None:
    """An attribute without a type is REQUIRED at its type."""
    spec = R.RuleSetSpec(attributes=[R.AttributeDeclaration(name="plan")])
    assert reasons(violations_of(spec)) == {("spec.attributes[0].type", "REQUIRED")}


def test_consent_requirement_needs_channel_and_identifier_purpose() -> None:
    """A consent requirement without a channel is REQUIRED, and a purpose that is not an identifier is INVALID_NAME."""
    spec = R.RuleSetSpec(
        consents=[
            R.ConsentRequirement(purpose="marketing"),
            R.ConsentRequirement(channel=messaging_pb2.CHANNEL_SMS, purpose="Not-An-Identifier"),
        ]
    )
    assert reasons(violations_of(spec)) == {("spec.consents[0].channel", "REQUIRED"), ("spec.consents[1].purpose", "INVALID_NAME")}


@pytest.mark.parametrize("bad", ["7:00", "24:00", "07:60", "0700", "07:00:00", "noon"])
def test_quiet_hours_must_be_hh_mm(bad: str) -> None:
    """A quiet-hours start or end that is not 24-hour HH:MM is INVALID_TIME at that field."""
    start = violations_of(R.RuleSetSpec(quiet_hours=R.QuietHours(start=bad, end="07:00")))
    assert reasons(start) == {("spec.quiet_hours.start", "INVALID_TIME")}
    end = violations_of(R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end=bad)))
    assert reasons(end) == {("spec.quiet_hours.end", "INVALID_TIME")}


def test_quiet_hours_need_both_ends() -> None:
    """Quiet hours with only a start (or only an end) are INVALID_TIME at the missing end."""
    assert reasons(violations_of(R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00")))) == {("spec.quiet_hours.end", "INVALID_TIME")}
    assert reasons(violations_of(R.RuleSetSpec(quiet_hours=R.QuietHours(end="07:00")))) == {("spec.quiet_hours.start", "INVALID_TIME")}


def test_quiet_hours_start_and_end_must_differ() -> None:
    """Quiet hours starting and ending at the same time are INVALID_TIME at the end."""
    spec = R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end="22:00"))
    assert reasons(violations_of(spec)) == {("spec.quiet_hours.end", "INVALID_TIME")}


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "not a zone", "../etc/passwd"])
def test_unknown_default_time_zone_is_rejected(zone: str) -> None:
    """A quiet-hours default time zone that does not exist is UNKNOWN_TIMEZONE."""
    spec = R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end="07:00", default_timezone=zone))
    assert reasons(violations_of(spec)) == {("spec.quiet_hours.default_timezone", "UNKNOWN_TIMEZONE")}


def test_suppression_list_names_are_checked() -> None:
    """A suppression list name that is not a valid name is INVALID_NAME at its index."""
    spec = R.RuleSetSpec(suppression_lists=["ok-list", "Bad List"])
    assert reasons(violations_of(spec)) == {("spec.suppression_lists[1]", "INVALID_NAME")}


def cap(**fields: object) -> R.FrequencyCap:
    """A valid weekly email cap, with *fields* overriding."""
    base: dict[str, object] = {
        "id": "weekly-email",
        "scope": R.CAP_SCOPE_CHANNEL,
        "channel": messaging_pb2.CHANNEL_EMAIL,
        "limit": 3,
        "window": R.CapWindow(kind=R.CAP_WINDOW_KIND_ROLLING, duration=duration_pb2.Duration(seconds=7 * 86400)),
    }
    base.update(fields)
    return R.FrequencyCap(**base)  # type: ignore[arg-type]


def test_valid_frequency_caps_compile() -> None:
    """Frequency caps are supported: valid channel, all-channel and tag caps compile."""
    spec = R.RuleSetSpec(
        frequency_caps=[
            cap(),
            cap(id="daily-all", scope=R.CAP_SCOPE_ALL_CHANNELS, channel=0, window=R.CapWindow(kind=R.CAP_WINDOW_KIND_CALENDAR_DAY)),
            cap(id="promo-week", scope=R.CAP_SCOPE_TAG, channel=0, tag="promo", window=R.CapWindow(kind=R.CAP_WINDOW_KIND_CALENDAR_WEEK)),
        ]
    )
    compiled, violations = compile_rule_set(spec)
    assert violations == []
    assert compiled is not None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"id": ""}, ("spec.frequency_caps[0].id", "REQUIRED")),
        ({"id": "Bad_Id"}, ("spec.frequency_caps[0].id", "INVALID_NAME")),
        ({"scope": R.CAP_SCOPE_UNSPECIFIED}, ("spec.frequency_caps[0].scope", "REQUIRED")),
        ({"channel": messaging_pb2.CHANNEL_UNSPECIFIED}, ("spec.frequency_caps[0].channel", "REQUIRED")),
        ({"scope": R.CAP_SCOPE_TAG, "tag": ""}, ("spec.frequency_caps[0].tag", "REQUIRED")),
        ({"limit": 0}, ("spec.frequency_caps[0].limit", "OUT_OF_RANGE")),
        ({"window": R.CapWindow()}, ("spec.frequency_caps[0].window.kind", "REQUIRED")),
        ({"window": R.CapWindow(kind=R.CAP_WINDOW_KIND_ROLLING)}, ("spec.frequency_caps[0].window.duration", "OUT_OF_RANGE")),
        (
            {"window": R.CapWindow(kind=R.CAP_WINDOW_KIND_ROLLING, duration=duration_pb2.Duration(seconds=int(MAX_ROLLING_WINDOW.total_seconds()) + 1))},
            ("spec.frequency_caps[0].window.duration", "OUT_OF_RANGE"),
        ),
    ],
)
def test_invalid_frequency_caps_are_rejected(override: dict[str, object], expected: tuple[str, str]) -> None:
    """Each invalid part of a frequency cap is reported at its field with its reason."""
    assert reasons(violations_of(R.RuleSetSpec(frequency_caps=[cap(**override)]))) == {expected}


def test_rolling_window_of_exactly_the_maximum_is_allowed() -> None:
    """A rolling window of exactly MAX_ROLLING_WINDOW is accepted."""
    window = R.CapWindow(kind=R.CAP_WINDOW_KIND_ROLLING, duration=duration_pb2.Duration(seconds=int(MAX_ROLLING_WINDOW.total_seconds())))
    compiled, violations = compile_rule_set(R.RuleSetSpec(frequency_caps=[cap(window=window)]))
    assert violations == []
    assert compiled is not None


def test_duplicate_cap_ids_are_rejected() -> None:
    """Two caps with the same id are a DUPLICATE at the second one's id."""
    spec = R.RuleSetSpec(frequency_caps=[cap(), cap()])
    assert reasons(violations_of(spec)) == {("spec.frequency_caps[1].id", "DUPLICATE")}
