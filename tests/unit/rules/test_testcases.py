"""Unit tests of :mod:`overture_rules.testcases`: a rule set version's own test cases."""

from __future__ import annotations

import datetime as dt

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.compiler import CompiledRuleSet, compile_rule_set
from overture_rules.testcases import DEFAULT_TEST_TIME, profile_of, run_test_cases
from overture_runtime.errors import FieldViolation
from overture_runtime.protojson import struct_from_dict


def case(name: str, *, allowed: bool, deferred: bool = False, deciding: tuple[str, ...] = (), traits: dict[str, object] | None = None,
         granted: tuple[str, ...] = ("email/marketing",), category: int = M.MESSAGE_CATEGORY_MARKETING,
         now: dt.datetime | None = None, **fields: object) -> R.RuleTestCase:
    """A test case of an email to a profile with *traits* and *granted* consents."""
    result = R.RuleTestCase(
        name=name,
        profile=R.TestProfile(traits=struct_from_dict(traits or {"plan": "pro"}), granted_consents=list(granted)),
        channel=M.CHANNEL_EMAIL,
        category=category,  # type: ignore[arg-type]
        expect=R.TestExpectation(allowed=allowed, deferred=deferred, deciding_rules=list(deciding)),
        **fields,  # type: ignore[arg-type]
    )
    if now is not None:
        result.now.FromDatetime(now)
    return result


def compiled(*cases: R.RuleTestCase, quiet_hours: R.QuietHours | None = None) -> CompiledRuleSet:
    """The marketing-email example rule set with *cases* as its test cases."""
    spec = R.RuleSetSpec(
        attributes=[R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_STRING, source=R.ATTRIBUTE_SOURCE_TRAIT)],
        rules=[R.Rule(id="not-churned", expression='plan == "churned"', effect=R.RULE_EFFECT_DENY, reason="churned")],
        consents=[R.ConsentRequirement(channel=M.CHANNEL_EMAIL, purpose="marketing")],
        suppression_lists=["unsubscribed"],
        test_cases=list(cases),
    )
    if quiet_hours is not None:
        spec.quiet_hours.CopyFrom(quiet_hours)
    result, violations = compile_rule_set(spec)
    assert violations == []
    assert result is not None
    return result


def only_failure(failures: list[FieldViolation]) -> FieldViolation:
    """The one violation of *failures*."""
    assert len(failures) == 1, failures
    return failures[0]


def test_passing_cases_produce_no_violations() -> None:
    """Test cases whose expectations hold, including deciding rules, produce no violations."""
    rules = compiled(
        case("consented-is-allowed", allowed=True),
        case("no-consent-is-denied", allowed=False, granted=(), deciding=("email/marketing",)),
        case("churned-is-denied", allowed=False, traits={"plan": "churned"}, deciding=("not-churned",)),
        case("transactional-needs-no-consent", allowed=True, granted=(), category=M.MESSAGE_CATEGORY_TRANSACTIONAL),
        case("both-deny", allowed=False, granted=(), traits={"plan": "churned"}, deciding=("not-churned", "email/marketing")),
    )
    assert run_test_cases(rules) == []


def test_wrong_allowed_expectation_fails() -> None:
    """A case expecting allowed when the decision denies is TEST_CASE_FAILED at spec.test_cases[i], naming the case."""
    rules = compiled(case("fine", allowed=True), case("wrong", allowed=True, traits={"plan": "churned"}))
    failure = only_failure(run_test_cases(rules))
    assert failure.field == "spec.test_cases[1]"
    assert failure.reason == "TEST_CASE_FAILED"
    assert "'wrong'" in failure.description
    assert "expected allowed" in failure.description


def test_wrong_denied_expectation_fails() -> None:
    """A case expecting a denial when the decision allows fails."""
    failure = only_failure(run_test_cases(compiled(case("wrong", allowed=False))))
    assert (failure.field, failure.reason) == ("spec.test_cases[0]", "TEST_CASE_FAILED")
    assert "expected denied" in failure.description


def test_wrong_deciding_rules_fail() -> None:
    """A denial by other rules than the expected deciding rules fails, listing both."""
    failure = only_failure(run_test_cases(compiled(case("wrong", allowed=False, granted=(), deciding=("not-churned",)))))
    assert failure.reason == "TEST_CASE_FAILED"
    assert "['not-churned']" in failure.description
    assert "['email/marketing']" in failure.description


def test_deciding_rules_are_compared_as_a_set() -> None:
    """The order of expected deciding rules does not matter, but every denying verdict must be listed."""
    both = {"traits": {"plan": "churned"}, "granted": ()}
    assert run_test_cases(compiled(case("ordered", allowed=False, deciding=("email/marketing", "not-churned"), **both))) == []  # type: ignore[arg-type]
    assert run_test_cases(compiled(case("reversed", allowed=False, deciding=("not-churned", "email/marketing"), **both))) == []  # type: ignore[arg-type]
    failure = only_failure(run_test_cases(compiled(case("partial", allowed=False, deciding=("not-churned",), **both))))  # type: ignore[arg-type]
    assert failure.reason == "TEST_CASE_FAILED"


NIGHT = R.QuietHours(start="22:00", end="07:00", default_timezone="UTC")
LATE = dt.datetime(2025, 1, 1, 23, 0, tzinfo=dt.UTC)


def test_deferred_expectation_passes_and_fails() -> None:
    """A case at night under quiet hours passes when it expects deferral, and fails when it does not."""
    assert run_test_cases(compiled(case("deferred", allowed=True, deferred=True, now=LATE), quiet_hours=NIGHT)) == []
    failure = only_failure(run_test_cases(compiled(case("not-deferred", allowed=True, now=LATE), quiet_hours=NIGHT)))
    assert (failure.field, failure.reason) == ("spec.test_cases[0]", "TEST_CASE_FAILED")
    assert "expected not deferred" in failure.description


def test_expecting_deferral_when_none_happens_fails() -> None:
    """A case expecting deferral at the default test time (noon UTC, outside quiet hours) fails."""
    failure = only_failure(run_test_cases(compiled(case("deferred", allowed=True, deferred=True), quiet_hours=NIGHT)))
    assert "expected deferred" in failure.description


def test_deferral_is_not_checked_for_denials() -> None:
    """A denied case passes on its allowed and deciding expectations alone, whatever it says about deferral."""
    rules = compiled(case("denied", allowed=False, deferred=True, granted=(), now=LATE), quiet_hours=NIGHT)
    assert run_test_cases(rules) == []


def test_default_test_time_is_noon_utc_new_year_2025() -> None:
    """A case without `now` is decided at 2025-01-01T12:00Z, outside a 22:00-07:00 window."""
    assert DEFAULT_TEST_TIME == dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
    assert run_test_cases(compiled(case("noon", allowed=True, deferred=False), quiet_hours=NIGHT)) == []


def test_duplicate_names_are_reported() -> None:
    """Two cases with the same name are a DUPLICATE at the second one's name."""
    failures = run_test_cases(compiled(case("same", allowed=True), case("same", allowed=True)))
    assert [(f.field, f.reason) for f in failures] == [("spec.test_cases[1].name", "DUPLICATE")]


def test_missing_name_is_required() -> None:
    """A case without a name is REQUIRED at its name and is not run."""
    failures = run_test_cases(compiled(case("", allowed=False)))
    assert [(f.field, f.reason) for f in failures] == [("spec.test_cases[0].name", "REQUIRED")]


def test_prefix_roots_the_field_paths() -> None:
    """The prefix argument roots the field paths of failures."""
    failures = run_test_cases(compiled(case("wrong", allowed=False)), prefix="version.spec")
    assert [f.field for f in failures] == ["version.spec.test_cases[0]"]


def test_every_failing_case_is_reported() -> None:
    """Each failing case gets its own violation, in order."""
    failures = run_test_cases(compiled(case("a", allowed=False), case("b", allowed=True), case("c", allowed=False)))
    assert [f.field for f in failures] == ["spec.test_cases[0]", "spec.test_cases[2]"]


def test_context_and_tags_reach_the_decision() -> None:
    """A case's context and tags are part of the message it decides."""
    spec = R.RuleSetSpec(
        attributes=[R.AttributeDeclaration(name="campaign", type=R.ATTRIBUTE_TYPE_STRING, source=R.ATTRIBUTE_SOURCE_CONTEXT)],
        rules=[R.Rule(id="spring-promo", expression='campaign == "spring" and "promo" in tags', effect=R.RULE_EFFECT_REQUIRE)],
        test_cases=[
            case("matches", allowed=True, context=struct_from_dict({"campaign": "spring"}), tags=["promo"]),
            case("no-tag", allowed=False, context=struct_from_dict({"campaign": "spring"}), deciding=("spring-promo",)),
        ],
    )
    rules, violations = compile_rule_set(spec)
    assert violations == []
    assert rules is not None
    assert run_test_cases(rules) == []


def test_profile_of_reads_the_test_profile() -> None:
    """profile_of turns a test profile into a ProfileView, splitting consents on the first slash and ignoring malformed ones."""
    c = R.RuleTestCase(
        name="p",
        profile=R.TestProfile(
            traits=struct_from_dict({"plan": "pro"}),
            granted_consents=["email/marketing", "sms/news/letter", "malformed"],
            segments=["beta"],
            timezone="Europe/Paris",
            suppression_lists=["unsubscribed"],
        ),
    )
    profile = profile_of(c)
    assert profile.subject_id == "test:p"
    assert profile.traits == {"plan": "pro"}
    assert profile.granted == frozenset({("email", "marketing"), ("sms", "news/letter")})
    assert profile.segments == ("beta",)
    assert profile.timezone == "Europe/Paris"
    assert profile.suppression_lists == frozenset({"unsubscribed"})
    assert profile.revoked == frozenset()
    assert profile.erased is False
