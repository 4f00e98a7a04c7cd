"""A rule set's compiled decision plan gives exactly the engine's outcome:
the same verdicts, summary, deferral and profile snapshot, on random rule
sets, profiles and messages, with and without its per-profile memo."""

from __future__ import annotations

import datetime as dt
from typing import Any

import rule_engine
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.compiler import compile_rule_set
from overture_rules.engine import EvaluationInput, ProfileView, evaluate
from overture_rules.plan import outcome_fields

from .test_fastpath import _expressions

ATTRIBUTES = [("plan", R.ATTRIBUTE_TYPE_STRING), ("score", R.ATTRIBUTE_TYPE_NUMBER), ("active", R.ATTRIBUTE_TYPE_BOOLEAN),
              ("labels", R.ATTRIBUTE_TYPE_STRING_LIST), ("joined", R.ATTRIBUTE_TYPE_DATETIME)]
SOURCES = [R.ATTRIBUTE_SOURCE_UNSPECIFIED, R.ATTRIBUTE_SOURCE_TRAIT, R.ATTRIBUTE_SOURCE_CONTEXT]
EXTRA_EXPRESSIONS = ['"vip" in segments', 'channel == "sms"', "priority > 50", '"promo" in tags', 'category == "transactional"',
                     "joined > d'2025-01-01'", "score + 1 > 2", "plan.length > 1"]
CHANNELS = [M.CHANNEL_EMAIL, M.CHANNEL_SMS, M.CHANNEL_PUSH]
START = dt.datetime(2025, 3, 29, 20, tzinfo=dt.UTC)  # across a DST change in Europe


@st.composite
def specs(draw: st.DrawFn) -> R.RuleSetSpec:
    spec = R.RuleSetSpec()
    for name, type_ in ATTRIBUTES:
        spec.attributes.add(name=name, type=type_, source=draw(st.sampled_from(SOURCES)))
    if draw(st.booleans()):
        spec.attributes.add(name="tz", type=R.ATTRIBUTE_TYPE_STRING, source=R.ATTRIBUTE_SOURCE_TRAIT)
    expressions = draw(st.lists(st.one_of(_expressions(1), st.sampled_from(EXTRA_EXPRESSIONS)), max_size=5))
    for i, expression in enumerate(expressions):
        spec.rules.add(id=f"r{i}", expression=expression, effect=draw(st.sampled_from([R.RULE_EFFECT_REQUIRE, R.RULE_EFFECT_DENY])),
                       reason=draw(st.sampled_from(["", f"r{i} says no"])))
    for channel, purpose in draw(st.lists(st.sampled_from([(M.CHANNEL_EMAIL, "marketing"), (M.CHANNEL_EMAIL, "news"), (M.CHANNEL_SMS, "marketing")]),
                                          max_size=3)):
        spec.consents.add(channel=channel, purpose=purpose)
    spec.suppression_lists.extend(draw(st.lists(st.sampled_from(["hard-bounces", "complaints"]), max_size=2, unique=True)))
    if draw(st.booleans()):
        start, end = draw(st.sampled_from([("22:00", "06:00"), ("09:00", "17:00"), ("23:30", "00:30")]))
        spec.quiet_hours.start, spec.quiet_hours.end = start, end
        spec.quiet_hours.default_timezone = draw(st.sampled_from(["", "UTC", "Europe/Berlin", "Asia/Kolkata"]))
        spec.quiet_hours.channels.extend(draw(st.lists(st.sampled_from(CHANNELS), max_size=2, unique=True)))
        if any(a.name == "tz" for a in spec.attributes) and draw(st.booleans()):
            spec.quiet_hours.timezone_attribute = "tz"
    return spec


valid = {
    "plan": st.sampled_from(["a", "ab", "", None]),
    "score": st.sampled_from([0, 1, 2.5, -3, None]),
    "active": st.sampled_from([True, False, None]),
    "labels": st.sampled_from([[], ["a"], ["a", "b"], None]),
    "joined": st.sampled_from(["2024-06-01T00:00:00Z", "2025-02-01", None]),
    "tz": st.sampled_from(["America/New_York", "Mars/Olympus", "", None]),
}
wrong = {"plan": st.just(3), "score": st.sampled_from(["x", True]), "active": st.just("yes"), "labels": st.just([1]),
         "joined": st.sampled_from(["not a date", 7])}
traits = st.one_of(st.fixed_dictionaries({}, optional=valid), st.fixed_dictionaries({}, optional={**valid, **wrong}))
pairs = st.sampled_from([("email", "marketing"), ("email", "news"), ("sms", "marketing"), ("push", "marketing")])
everything = frozenset({("email", "marketing"), ("email", "news"), ("sms", "marketing"), ("push", "marketing")})
profiles = st.builds(
    ProfileView, subject_id=st.just("u"), traits=traits, granted=st.one_of(st.just(everything), st.frozensets(pairs)),
    revoked=st.one_of(st.just(frozenset()), st.frozensets(pairs)),
    segments=st.lists(st.sampled_from(["vip", "beta"]), max_size=2, unique=True).map(tuple),
    timezone=st.sampled_from(["", "Europe/Berlin", "Pacific/Auckland", "Nowhere/City"]),
    suppression_lists=st.frozensets(st.sampled_from(["hard-bounces", "complaints", "other"])), erased=st.booleans() | st.just(False),
    exists=st.booleans(),
)
messages = st.builds(
    EvaluationInput, channel=st.sampled_from(CHANNELS), category=st.sampled_from([0, 1, 2]),
    now=st.integers(0, 72 * 60).map(lambda m: START + dt.timedelta(minutes=m)),
    tags=st.lists(st.sampled_from(["promo", "news"]), max_size=2, unique=True).map(tuple), priority=st.integers(0, 100),
    context=st.fixed_dictionaries({}, optional={"plan": st.sampled_from(["a", "b"]), "score": st.sampled_from([1, 5]), "other": st.just(1)}),
)


def _fields(call: Any) -> Any:
    """The outcome of *call* as plain values, or the type of what it raised."""
    try:
        return outcome_fields(call())
    except Exception as error:  # noqa: BLE001 - both sides must fail alike
        return type(error)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=specs(), profile=profiles, first=messages, second=messages)
def test_the_plan_decides_exactly_as_the_engine(spec: R.RuleSetSpec, profile: ProfileView, first: EvaluationInput, second: EvaluationInput) -> None:
    """For any rule set, profile and two messages, the plan's outcome equals the engine's, whether its memo is fresh or reused."""
    compiled, problems = compile_rule_set(spec)
    assume(compiled is not None and not problems)
    assert compiled is not None
    memo: dict[Any, Any] = {}
    for message in (first, second, first):
        expected = _fields(lambda m=message: evaluate(compiled, profile, m))
        assert _fields(lambda m=message: compiled.plan.decide(profile, m, memo)) == expected
        assert _fields(lambda m=message: compiled.plan.decide(profile, m)) == expected


def test_the_plan_is_built_once_per_version() -> None:
    """A compiled version builds its plan on first use and keeps it."""
    compiled, _ = compile_rule_set(R.RuleSetSpec(rules=[R.Rule(id="r", expression='channel == "email"', effect=R.RULE_EFFECT_REQUIRE)]))
    assert compiled is not None
    assert compiled.plan is compiled.plan


def test_a_rule_that_fails_is_an_error_verdict_in_both() -> None:
    """A rule that rule-engine cannot evaluate on the profile gives the same ERROR verdict from the plan as from the engine."""
    spec = R.RuleSetSpec(attributes=[R.AttributeDeclaration(name="plan", type=R.ATTRIBUTE_TYPE_STRING)],
                         rules=[R.Rule(id="r", expression="plan =~ 'a'", effect=R.RULE_EFFECT_REQUIRE)])
    compiled, _ = compile_rule_set(spec)
    assert compiled is not None
    profile = ProfileView("u", traits={"plan": None}, granted=frozenset({("email", "marketing")}))
    message = EvaluationInput(channel=M.CHANNEL_EMAIL, category=1, now=START)
    assert outcome_fields(compiled.plan.decide(profile, message, {})) == outcome_fields(evaluate(compiled, profile, message))
    assert isinstance(rule_engine.EngineError("x"), Exception)


def test_a_deferral_by_quiet_hours_is_the_same_in_both() -> None:
    """A message inside the recipient's quiet hours is deferred to the same instant (and says so the same way) by the plan and the engine."""
    spec = R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end="06:00", default_timezone="Europe/Berlin"))
    compiled, _ = compile_rule_set(spec)
    assert compiled is not None
    profile = ProfileView("u", granted=frozenset({("email", "marketing")}))
    memo: dict[Any, Any] = {}
    for hours in range(0, 48, 3):
        message = EvaluationInput(channel=M.CHANNEL_EMAIL, category=1, now=START + dt.timedelta(hours=hours))
        expected = outcome_fields(evaluate(compiled, profile, message))
        assert outcome_fields(compiled.plan.decide(profile, message, memo)) == expected
    assert any(outcome_fields(compiled.plan.decide(profile, EvaluationInput(channel=M.CHANNEL_EMAIL, category=1, now=START + dt.timedelta(hours=h)),
                                                   memo))["defer_until"] for h in range(0, 24, 3))
