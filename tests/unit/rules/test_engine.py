"""Unit tests of :mod:`overture_rules.engine`: the pure decision over a compiled rule set."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.compiler import CompiledRuleSet, compile_rule_set
from overture_rules.engine import (
    DecisionOutcome,
    EvaluationInput,
    ProfileView,
    category_name,
    channel_name,
    evaluate,
    quiet_hours_end,
    recipient_zone,
)

NOON = dt.datetime(2025, 1, 15, 12, tzinfo=dt.UTC)
EMAIL_MARKETING = ("email", "marketing")
UTC = dt.UTC


def compiled(
    *rules: R.Rule,
    attributes: Iterable[R.AttributeDeclaration] = (),
    consents: Iterable[R.ConsentRequirement] = (),
    quiet_hours: R.QuietHours | None = None,
    suppression_lists: Iterable[str] = (),
) -> CompiledRuleSet:
    """Compile a spec from the parts given, failing the test if it does not compile."""
    spec = R.RuleSetSpec(
        attributes=list(attributes), rules=list(rules), consents=list(consents), suppression_lists=list(suppression_lists)
    )
    if quiet_hours is not None:
        spec.quiet_hours.CopyFrom(quiet_hours)
    result, violations = compile_rule_set(spec)
    assert violations == []
    assert result is not None
    return result


def attr(name: str, type_: int, source: int = R.ATTRIBUTE_SOURCE_UNSPECIFIED) -> R.AttributeDeclaration:
    """One attribute declaration."""
    return R.AttributeDeclaration(name=name, type=type_, source=source)  # type: ignore[arg-type]


def deny(id_: str, expression: str) -> R.Rule:
    """A DENY rule."""
    return R.Rule(id=id_, expression=expression, effect=R.RULE_EFFECT_DENY, reason=f"{id_} denies")


def require(id_: str, expression: str) -> R.Rule:
    """A REQUIRE rule."""
    return R.Rule(id=id_, expression=expression, effect=R.RULE_EFFECT_REQUIRE, reason=f"{id_} not met")


def consenting(**fields: object) -> ProfileView:
    """A profile that granted email marketing consent, with *fields* overriding."""
    base: dict[str, object] = {"subject_id": "u1", "granted": frozenset({EMAIL_MARKETING})}
    base.update(fields)
    return ProfileView(**base)  # type: ignore[arg-type]


def email(category: int = M.MESSAGE_CATEGORY_MARKETING, now: dt.datetime = NOON, **fields: object) -> EvaluationInput:
    """An email message at *now*."""
    return EvaluationInput(channel=M.CHANNEL_EMAIL, category=category, now=now, **fields)  # type: ignore[arg-type]


def verdict(outcome: DecisionOutcome, kind: int, id_: str) -> D.Verdict:
    """The one verdict of *kind* and *id_* in *outcome*."""
    found = [v for v in outcome.verdicts if v.kind == kind and v.id == id_]
    assert len(found) == 1, outcome.verdicts
    return found[0]


def kinds(outcome: DecisionOutcome, kind: int) -> list[D.Verdict]:
    """The verdicts of one kind."""
    return [v for v in outcome.verdicts if v.kind == kind]


# --- names -------------------------------------------------------------------


def test_channel_and_category_names() -> None:
    """Channels and categories are named by their short lower-case name; unspecified category is marketing."""
    assert channel_name(M.CHANNEL_EMAIL) == "email"
    assert channel_name(M.CHANNEL_IN_APP) == "in_app"
    assert category_name(M.MESSAGE_CATEGORY_TRANSACTIONAL) == "transactional"
    assert category_name(M.MESSAGE_CATEGORY_MARKETING) == "marketing"
    assert category_name(M.MESSAGE_CATEGORY_UNSPECIFIED) == "marketing"


# --- consent -----------------------------------------------------------------


def test_marketing_without_consent_record_is_denied() -> None:
    """A marketing email to a subject with no consent record is denied by a CONSENT DENY for email/marketing."""
    outcome = evaluate(compiled(), ProfileView("u1"), email())
    assert outcome.allowed is False
    assert outcome.defer_until is None
    v = verdict(outcome, D.VERDICT_KIND_CONSENT, "email/marketing")
    assert v.outcome == D.VERDICT_OUTCOME_DENY
    assert "no consent record" in v.reason
    assert outcome.summary.startswith("denied by consent")


def test_unspecified_category_is_treated_as_marketing() -> None:
    """A message without a category needs marketing consent, like a marketing one."""
    outcome = evaluate(compiled(), ProfileView("u1"), email(category=M.MESSAGE_CATEGORY_UNSPECIFIED))
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_CONSENT, "email/marketing").outcome == D.VERDICT_OUTCOME_DENY


def test_revoked_consent_is_denied() -> None:
    """A subject who revoked email marketing consent is denied, and the verdict says it was revoked."""
    outcome = evaluate(compiled(), ProfileView("u1", revoked=frozenset({EMAIL_MARKETING})), email())
    assert outcome.allowed is False
    v = verdict(outcome, D.VERDICT_KIND_CONSENT, "email/marketing")
    assert v.outcome == D.VERDICT_OUTCOME_DENY
    assert "revoked" in v.reason


def test_granted_consent_is_allowed() -> None:
    """A subject who granted email marketing consent is allowed, with a CONSENT PASS."""
    outcome = evaluate(compiled(), consenting(), email())
    assert outcome.allowed is True
    assert outcome.defer_until is None
    assert outcome.summary == "allowed"
    assert verdict(outcome, D.VERDICT_KIND_CONSENT, "email/marketing").outcome == D.VERDICT_OUTCOME_PASS


def test_consent_on_another_channel_does_not_count() -> None:
    """Consent granted for SMS does not allow a marketing email."""
    outcome = evaluate(compiled(), ProfileView("u1", granted=frozenset({("sms", "marketing")})), email())
    assert outcome.allowed is False


def test_transactional_skips_consent() -> None:
    """A transactional email needs no marketing consent: the CONSENT verdict is SKIP and the message is allowed."""
    outcome = evaluate(compiled(), ProfileView("u1", revoked=frozenset({EMAIL_MARKETING})), email(M.MESSAGE_CATEGORY_TRANSACTIONAL))
    assert outcome.allowed is True
    assert verdict(outcome, D.VERDICT_KIND_CONSENT, "email/marketing").outcome == D.VERDICT_OUTCOME_SKIP


def test_transactional_is_still_denied_by_suppression_list() -> None:
    """A transactional email to a subject on one of the rule set's suppression lists is denied."""
    rules = compiled(suppression_lists=["hard-bounces", "unsubscribed"])
    profile = ProfileView("u1", suppression_lists=frozenset({"hard-bounces"}))
    outcome = evaluate(rules, profile, email(M.MESSAGE_CATEGORY_TRANSACTIONAL))
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_SUPPRESSION, "hard-bounces").outcome == D.VERDICT_OUTCOME_DENY
    assert verdict(outcome, D.VERDICT_KIND_SUPPRESSION, "unsubscribed").outcome == D.VERDICT_OUTCOME_PASS
    assert outcome.summary.startswith("denied by suppression")


def test_suppression_lists_the_rule_set_does_not_name_are_ignored() -> None:
    """Being on a suppression list the rule set does not name does not deny."""
    outcome = evaluate(compiled(suppression_lists=["hard-bounces"]), consenting(suppression_lists=frozenset({"other"})), email())
    assert outcome.allowed is True


def test_transactional_is_still_denied_by_erasure() -> None:
    """A transactional email to an erased subject is denied by the ERASURE verdict."""
    outcome = evaluate(compiled(), ProfileView("u1", erased=True), email(M.MESSAGE_CATEGORY_TRANSACTIONAL))
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_ERASURE, "erasure").outcome == D.VERDICT_OUTCOME_DENY
    assert outcome.summary.startswith("denied by erasure")


def test_erasure_is_checked_first() -> None:
    """The first verdict is always the erasure check, and an erased subject is denied by it before anything else."""
    outcome = evaluate(compiled(), ProfileView("u1", erased=True), email())
    assert outcome.verdicts[0].kind == D.VERDICT_KIND_ERASURE
    assert outcome.summary.startswith("denied by erasure")


def test_declared_consents_for_the_channel_replace_the_default() -> None:
    """When the rule set declares consents for the channel, exactly those are required."""
    rules = compiled(
        consents=[
            R.ConsentRequirement(channel=M.CHANNEL_EMAIL, purpose="newsletter"),
            R.ConsentRequirement(channel=M.CHANNEL_EMAIL, purpose="promotions"),
        ]
    )
    partial = evaluate(rules, ProfileView("u1", granted=frozenset({("email", "newsletter"), EMAIL_MARKETING})), email())
    assert partial.allowed is False
    assert [v.id for v in kinds(partial, D.VERDICT_KIND_CONSENT)] == ["email/newsletter", "email/promotions"]
    assert verdict(partial, D.VERDICT_KIND_CONSENT, "email/promotions").outcome == D.VERDICT_OUTCOME_DENY
    full = evaluate(rules, ProfileView("u1", granted=frozenset({("email", "newsletter"), ("email", "promotions")})), email())
    assert full.allowed is True


def test_channel_without_declared_consent_still_needs_marketing_consent() -> None:
    """With consents declared only for email, a marketing SMS still needs sms/marketing."""
    rules = compiled(consents=[R.ConsentRequirement(channel=M.CHANNEL_EMAIL, purpose="newsletter")])
    sms = EvaluationInput(channel=M.CHANNEL_SMS, category=M.MESSAGE_CATEGORY_MARKETING, now=NOON)
    denied = evaluate(rules, ProfileView("u1", granted=frozenset({("email", "newsletter")})), sms)
    assert denied.allowed is False
    assert [v.id for v in kinds(denied, D.VERDICT_KIND_CONSENT)] == ["sms/marketing"]
    allowed = evaluate(rules, ProfileView("u1", granted=frozenset({("sms", "marketing")})), sms)
    assert allowed.allowed is True


# --- rules -------------------------------------------------------------------

PLAN = attr("plan", R.ATTRIBUTE_TYPE_STRING, R.ATTRIBUTE_SOURCE_TRAIT)
SCORE = attr("score", R.ATTRIBUTE_TYPE_NUMBER, R.ATTRIBUTE_SOURCE_TRAIT)


def test_deny_rule_that_matches_denies() -> None:
    """A DENY rule whose expression is true denies, with the rule's reason in the summary."""
    rules = compiled(deny("not-churned", 'plan == "churned"'), attributes=[PLAN])
    outcome = evaluate(rules, consenting(traits={"plan": "churned"}), email())
    assert outcome.allowed is False
    v = verdict(outcome, D.VERDICT_KIND_RULE, "not-churned")
    assert v.outcome == D.VERDICT_OUTCOME_DENY
    assert v.reason == "not-churned denies"
    assert outcome.summary == "denied by rule: not-churned denies"


def test_deny_rule_that_does_not_match_passes() -> None:
    """A DENY rule whose expression is false passes."""
    rules = compiled(deny("not-churned", 'plan == "churned"'), attributes=[PLAN])
    outcome = evaluate(rules, consenting(traits={"plan": "pro"}), email())
    assert outcome.allowed is True
    assert verdict(outcome, D.VERDICT_KIND_RULE, "not-churned").outcome == D.VERDICT_OUTCOME_PASS


def test_require_rule_that_matches_passes() -> None:
    """A REQUIRE rule whose expression is true passes."""
    rules = compiled(require("pro-only", 'plan == "pro"'), attributes=[PLAN])
    outcome = evaluate(rules, consenting(traits={"plan": "pro"}), email())
    assert outcome.allowed is True
    assert verdict(outcome, D.VERDICT_KIND_RULE, "pro-only").outcome == D.VERDICT_OUTCOME_PASS


def test_require_rule_that_does_not_match_denies() -> None:
    """A REQUIRE rule whose expression is false denies with its reason."""
    rules = compiled(require("pro-only", 'plan == "pro"'), attributes=[PLAN])
    outcome = evaluate(rules, consenting(traits={"plan": "free"}), email())
    assert outcome.allowed is False
    v = verdict(outcome, D.VERDICT_KIND_RULE, "pro-only")
    assert (v.outcome, v.reason) == (D.VERDICT_OUTCOME_DENY, "pro-only not met")


def test_every_rule_is_evaluated_and_any_deny_wins() -> None:
    """All rules get a verdict in document order, and one denying rule denies even when others pass."""
    rules = compiled(require("a", "score > 1"), deny("b", "score > 5"), require("c", "score < 100"), attributes=[SCORE])
    outcome = evaluate(rules, consenting(traits={"score": 10}), email())
    assert outcome.allowed is False
    assert [(v.id, v.outcome) for v in kinds(outcome, D.VERDICT_KIND_RULE)] == [
        ("a", D.VERDICT_OUTCOME_PASS),
        ("b", D.VERDICT_OUTCOME_DENY),
        ("c", D.VERDICT_OUTCOME_PASS),
    ]


def test_rules_read_builtins_of_the_message() -> None:
    """Rules can read the built-ins channel, category, tags, priority and segments of the message and profile."""
    rules = compiled(
        require("builtins", 'channel == "email" and category == "marketing" and "promo" in tags and priority >= 5 and "beta" in segments')
    )
    yes = evaluate(rules, consenting(segments=("beta",)), email(tags=("promo",), priority=5))
    assert yes.allowed is True
    no = evaluate(rules, consenting(segments=("beta",)), email(tags=("promo",), priority=4))
    assert no.allowed is False


def test_context_attributes_come_from_the_request() -> None:
    """An attribute with source CONTEXT is read from the request context, not from traits."""
    rules = compiled(require("ctx", 'campaign == "spring"'), attributes=[attr("campaign", R.ATTRIBUTE_TYPE_STRING, R.ATTRIBUTE_SOURCE_CONTEXT)])
    assert evaluate(rules, consenting(traits={"campaign": "spring"}), email()).allowed is False
    assert evaluate(rules, consenting(), email(context={"campaign": "spring"})).allowed is True


def test_unspecified_source_prefers_the_context_then_traits() -> None:
    """An attribute without a source is read from the context when present, else from the profile's traits."""
    rules = compiled(require("ctx", 'campaign == "spring"'), attributes=[attr("campaign", R.ATTRIBUTE_TYPE_STRING)])
    assert evaluate(rules, consenting(traits={"campaign": "spring"}), email()).allowed is True
    assert evaluate(rules, consenting(traits={"campaign": "spring"}), email(context={"campaign": "autumn"})).allowed is False


def test_typed_attributes_are_coerced() -> None:
    """NUMBER, BOOLEAN, DATETIME and STRING_LIST traits are read as their types."""
    rules = compiled(
        require("typed", 'score > 2.5 and vip and joined < d"2025-01-01" and "golf" in interests'),
        attributes=[
            SCORE,
            attr("vip", R.ATTRIBUTE_TYPE_BOOLEAN),
            attr("joined", R.ATTRIBUTE_TYPE_DATETIME),
            attr("interests", R.ATTRIBUTE_TYPE_STRING_LIST),
        ],
    )
    traits = {"score": 3, "vip": True, "joined": "2024-06-01T00:00:00Z", "interests": ["golf", "tennis"]}
    assert evaluate(rules, consenting(traits=traits), email()).allowed is True


def test_rule_that_errors_at_evaluation_fails_closed() -> None:
    """A rule that raises while evaluating (comparing a missing NUMBER) gets an ERROR verdict and denies."""
    rules = compiled(deny("big-score", "score > 3"), attributes=[SCORE])
    outcome = evaluate(rules, consenting(traits={}), email())
    assert outcome.allowed is False
    v = verdict(outcome, D.VERDICT_KIND_RULE, "big-score")
    assert v.outcome == D.VERDICT_OUTCOME_ERROR
    assert "failed to evaluate" in v.reason


def test_arithmetic_error_fails_closed() -> None:
    """A rule that divides by zero gets an ERROR verdict, even though it is a DENY rule that would not match."""
    rules = compiled(deny("odd", "score / 0 > 1"), attributes=[SCORE])
    outcome = evaluate(rules, consenting(traits={"score": 1}), email())
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_RULE, "odd").outcome == D.VERDICT_OUTCOME_ERROR


@pytest.mark.parametrize("expression", ['"golf" in interests', 'plan in interests', '"x" in plan'])
def test_membership_in_a_missing_trait_fails_closed(expression: str) -> None:
    """A membership test on a trait the profile lacks (rule-engine raises a plain TypeError) gets an ERROR verdict instead of raising."""
    rules = compiled(deny("r", expression), attributes=[PLAN, attr("interests", R.ATTRIBUTE_TYPE_STRING_LIST)])
    outcome = evaluate(rules, consenting(traits={}), email())
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_RULE, "r").outcome == D.VERDICT_OUTCOME_ERROR


def test_trait_of_the_wrong_type_fails_closed() -> None:
    """A NUMBER attribute whose trait holds a string is an ERROR verdict that denies, and no rule is evaluated."""
    rules = compiled(deny("big-score", "score > 3"), attributes=[SCORE])
    outcome = evaluate(rules, consenting(traits={"score": "high"}), email())
    assert outcome.allowed is False
    v = verdict(outcome, D.VERDICT_KIND_SYSTEM, "attributes")
    assert v.outcome == D.VERDICT_OUTCOME_ERROR
    assert "'score'" in v.reason
    assert kinds(outcome, D.VERDICT_KIND_RULE) == []
    assert outcome.summary.startswith("denied by system")


@pytest.mark.parametrize(
    ("declaration", "value"),
    [
        (attr("flag", R.ATTRIBUTE_TYPE_BOOLEAN), "yes"),
        (attr("flag", R.ATTRIBUTE_TYPE_NUMBER), True),
        (attr("flag", R.ATTRIBUTE_TYPE_STRING_LIST), ["a", 1]),
        (attr("flag", R.ATTRIBUTE_TYPE_DATETIME), "not a date"),
        (attr("flag", R.ATTRIBUTE_TYPE_STRING), 42),
    ],
)
def test_any_malformed_trait_fails_closed(declaration: R.AttributeDeclaration, value: object) -> None:
    """A trait that cannot be read as its declared type denies with a SYSTEM ERROR verdict."""
    outcome = evaluate(compiled(attributes=[declaration]), consenting(traits={"flag": value}), email())
    assert outcome.allowed is False
    assert verdict(outcome, D.VERDICT_KIND_SYSTEM, "attributes").outcome == D.VERDICT_OUTCOME_ERROR


def test_transactional_is_still_subject_to_rules() -> None:
    """Transactional messages skip consent but a matching DENY rule still denies them."""
    rules = compiled(deny("not-churned", 'plan == "churned"'), attributes=[PLAN])
    outcome = evaluate(rules, ProfileView("u1", traits={"plan": "churned"}), email(M.MESSAGE_CATEGORY_TRANSACTIONAL))
    assert outcome.allowed is False


# --- quiet hours -------------------------------------------------------------

NIGHT = R.QuietHours(start="22:00", end="07:00", default_timezone="UTC")


def test_quiet_hours_defer_marketing() -> None:
    """A marketing email inside quiet hours is allowed, deferred to the end of the quiet period."""
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    outcome = evaluate(compiled(quiet_hours=NIGHT), consenting(), email(now=at))
    assert outcome.allowed is True
    assert outcome.defer_until == dt.datetime(2025, 1, 16, 7, tzinfo=UTC)
    assert verdict(outcome, D.VERDICT_KIND_QUIET_HOURS, "quiet-hours").outcome == D.VERDICT_OUTCOME_DEFER
    assert outcome.summary.startswith("allowed, deferred to 2025-01-16T07:00:00")


def test_outside_quiet_hours_passes() -> None:
    """A marketing email outside quiet hours is allowed now, with a QUIET_HOURS PASS."""
    outcome = evaluate(compiled(quiet_hours=NIGHT), consenting(), email(now=NOON))
    assert outcome.allowed is True
    assert outcome.defer_until is None
    assert verdict(outcome, D.VERDICT_KIND_QUIET_HOURS, "quiet-hours").outcome == D.VERDICT_OUTCOME_PASS


def test_quiet_hours_are_skipped_for_transactional() -> None:
    """A transactional email inside quiet hours is sent now, with a QUIET_HOURS SKIP."""
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    outcome = evaluate(compiled(quiet_hours=NIGHT), ProfileView("u1"), email(M.MESSAGE_CATEGORY_TRANSACTIONAL, now=at))
    assert outcome.allowed is True
    assert outcome.defer_until is None
    assert verdict(outcome, D.VERDICT_KIND_QUIET_HOURS, "quiet-hours").outcome == D.VERDICT_OUTCOME_SKIP


def test_denied_message_is_not_deferred() -> None:
    """A denied message inside quiet hours has no defer_until."""
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    outcome = evaluate(compiled(quiet_hours=NIGHT), ProfileView("u1"), email(now=at))
    assert outcome.allowed is False
    assert outcome.defer_until is None


def test_quiet_hours_apply_only_to_their_channels() -> None:
    """Quiet hours limited to SMS do not defer an email."""
    qh = R.QuietHours(start="22:00", end="07:00", channels=[M.CHANNEL_SMS])
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    outcome = evaluate(compiled(quiet_hours=qh), consenting(), email(now=at))
    assert outcome.allowed is True
    assert outcome.defer_until is None
    assert kinds(outcome, D.VERDICT_KIND_QUIET_HOURS) == []


def test_quiet_hours_use_the_recipients_time_zone() -> None:
    """Quiet hours are read in the profile's time zone: 23:30 UTC is 08:30 in Tokyo, outside 22:00-07:00."""
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    outcome = evaluate(compiled(quiet_hours=NIGHT), consenting(timezone="Asia/Tokyo"), email(now=at))
    assert outcome.defer_until is None
    assert outcome.snapshot["timezone"] == "Asia/Tokyo"


def test_recipient_zone_order() -> None:
    """The zone comes from the timezone trait, else the profile, else the default, else UTC, skipping unknown zones."""
    spec = R.RuleSetSpec(quiet_hours=R.QuietHours(start="22:00", end="07:00", timezone_attribute="tz", default_timezone="Europe/Berlin"))
    assert recipient_zone(spec, ProfileView("u", traits={"tz": "Asia/Tokyo"}, timezone="America/New_York")).key == "Asia/Tokyo"
    assert recipient_zone(spec, ProfileView("u", traits={"tz": "Nowhere/Else"}, timezone="America/New_York")).key == "America/New_York"
    assert recipient_zone(spec, ProfileView("u", timezone="bogus")).key == "Europe/Berlin"
    assert recipient_zone(R.RuleSetSpec(), ProfileView("u")).key == "UTC"


def test_snapshot_records_what_was_read() -> None:
    """The snapshot holds exactly the profile facts the decision read: existence, erasure, lists, consents, traits, segments and zone."""
    rules = compiled(
        require("beta", '"beta" in segments and plan == "pro"'),
        attributes=[PLAN, attr("campaign", R.ATTRIBUTE_TYPE_STRING, R.ATTRIBUTE_SOURCE_CONTEXT)],
        quiet_hours=R.QuietHours(start="22:00", end="07:00", default_timezone="Europe/Berlin"),
        suppression_lists=["hard-bounces"],
    )
    profile = ProfileView(
        "u1",
        traits={"plan": "pro", "unrelated": "secret", "campaign": "from-trait"},
        granted=frozenset({EMAIL_MARKETING}),
        segments=("beta", "vip"),
        suppression_lists=frozenset({"other"}),
    )
    outcome = evaluate(rules, profile, email(context={"campaign": "spring"}))
    assert outcome.allowed is True
    assert dict(outcome.snapshot) == {
        "exists": True,
        "erased": False,
        "suppression_lists": ["other"],
        "consents": {"email/marketing": "granted"},
        "traits": {"plan": "pro"},
        "segments": ["beta", "vip"],
        "timezone": "Europe/Berlin",
    }


def test_snapshot_records_missing_and_revoked_consents() -> None:
    """The snapshot says for each required consent whether it was granted, revoked or missing."""
    rules = compiled(consents=[R.ConsentRequirement(channel=M.CHANNEL_EMAIL, purpose=p) for p in ("marketing", "newsletter")])
    outcome = evaluate(rules, ProfileView("u1", revoked=frozenset({("email", "newsletter")}), exists=False), email())
    assert outcome.snapshot["consents"] == {"email/marketing": "missing", "email/newsletter": "revoked"}
    assert outcome.snapshot["exists"] is False
    assert "traits" not in outcome.snapshot
    assert "timezone" not in outcome.snapshot


def test_evaluation_is_deterministic() -> None:
    """The same inputs give the same outcome: nothing depends on a clock or on chance."""
    rules = compiled(deny("not-churned", 'plan == "churned"'), attributes=[PLAN], quiet_hours=NIGHT)
    at = dt.datetime(2025, 1, 15, 23, 30, tzinfo=UTC)
    first = evaluate(rules, consenting(traits={"plan": "pro"}), email(now=at))
    second = evaluate(rules, consenting(traits={"plan": "pro"}), email(now=at))
    assert first == second


@pytest.mark.parametrize(
    ("zone", "evening", "expected_utc"),
    [
        # 2025-03-09 02:00 EST -> 03:00 EDT: 07:00 EDT is 11:00 UTC, not 12:00.
        ("America/New_York", dt.datetime(2025, 3, 8, 23, 0), dt.datetime(2025, 3, 9, 11, 0, tzinfo=UTC)),
        # 2025-03-30 02:00 CET -> 03:00 CEST: 07:00 CEST is 05:00 UTC, not 06:00.
        ("Europe/Berlin", dt.datetime(2025, 3, 29, 23, 0), dt.datetime(2025, 3, 30, 5, 0, tzinfo=UTC)),
    ],
)
def test_quiet_hours_across_spring_forward(zone: str, evening: dt.datetime, expected_utc: dt.datetime) -> None:
    """A 22:00-07:00 window evaluated the night before a DST change ends at 07:00 local on the change day, in correct UTC."""
    tz = ZoneInfo(zone)
    now = evening.replace(tzinfo=tz).astimezone(UTC)
    rules = compiled(quiet_hours=R.QuietHours(start="22:00", end="07:00", default_timezone=zone))
    outcome = evaluate(rules, consenting(), email(now=now))
    assert outcome.allowed is True
    assert outcome.defer_until == expected_utc
    assert outcome.defer_until is not None
    local = outcome.defer_until.astimezone(tz)
    assert (local.date(), local.time()) == (expected_utc.date(), dt.time(7, 0))
    assert quiet_hours_end(now, tz, "22:00", "07:00") == expected_utc


def test_quiet_hours_across_fall_back() -> None:
    """A 22:00-07:00 window the night before clocks go back ends at 07:00 standard time on the change day."""
    tz = ZoneInfo("America/New_York")
    now = dt.datetime(2025, 11, 1, 23, 0, tzinfo=tz).astimezone(UTC)
    assert quiet_hours_end(now, tz, "22:00", "07:00") == dt.datetime(2025, 11, 2, 12, 0, tzinfo=UTC)


def test_quiet_hours_window_within_one_day() -> None:
    """A window that does not wrap midnight defers to its end on the same day, and is None outside it."""
    assert quiet_hours_end(dt.datetime(2025, 1, 15, 13, 0, tzinfo=UTC), UTC, "12:00", "14:00") == dt.datetime(2025, 1, 15, 14, tzinfo=UTC)
    assert quiet_hours_end(dt.datetime(2025, 1, 15, 14, 0, tzinfo=UTC), UTC, "12:00", "14:00") is None
    assert quiet_hours_end(dt.datetime(2025, 1, 15, 11, 59, tzinfo=UTC), UTC, "12:00", "14:00") is None


def test_quiet_hours_start_is_inclusive_and_end_exclusive() -> None:
    """At exactly the start the message is deferred; at exactly the end it is not."""
    assert quiet_hours_end(dt.datetime(2025, 1, 15, 22, 0, tzinfo=UTC), UTC, "22:00", "07:00") == dt.datetime(2025, 1, 16, 7, tzinfo=UTC)
    assert quiet_hours_end(dt.datetime(2025, 1, 16, 7, 0, tzinfo=UTC), UTC, "22:00", "07:00") is None


def test_quiet_hours_end_in_repeated_hour_is_not_before_now() -> None:
    """At 01:10 EST (the second 01:10 on 2025-11-02 in New York) a 00:30-01:30 window ends at 01:30 EST, after now."""
    tz = ZoneInfo("America/New_York")
    now = dt.datetime(2025, 11, 2, 1, 10, tzinfo=tz, fold=1).astimezone(UTC)
    assert now == dt.datetime(2025, 11, 2, 6, 10, tzinfo=UTC)
    until = quiet_hours_end(now, tz, "00:30", "01:30")
    assert until is not None
    assert until > now


ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham", "America/Santiago"]
hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
instants = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(UTC))


def _minutes(t: dt.time) -> int:
    return t.hour * 60 + t.minute


def _wall_time_exists(day: dt.date, at: dt.time, tz: ZoneInfo) -> bool:
    wall = dt.datetime.combine(day, at)
    return wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


@settings(deadline=None, database=None, max_examples=300)
@given(now=instants, zone=st.sampled_from(ZONES), start=hhmm, end=hhmm)
def test_quiet_hours_end_properties(now: dt.datetime, zone: str, start: str, end: str) -> None:
    """quiet_hours_end is None exactly outside the window, and otherwise a later instant at which the local clock shows the end time."""
    assume(start != end)
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    s, e = dt.time.fromisoformat(start), dt.time.fromisoformat(end)
    # Start and end are whole minutes, so the local minute decides; the window may wrap midnight.
    minute = local.hour * 60 + local.minute
    inside = (minute - _minutes(s)) % 1440 < (_minutes(e) - _minutes(s)) % 1440
    until = quiet_hours_end(now, tz, start, end)
    if not inside:
        assert until is None
        return
    assert until is not None
    assert until.tzinfo is not None
    assert until > now
    assert until - now <= dt.timedelta(hours=25)
    end_local = until.astimezone(tz)
    if _wall_time_exists(end_local.date(), e, tz):
        assert end_local.time() == e
    else:
        # The end fell into a spring-forward gap: the clock jumped past it.
        assert end_local.time() > e
