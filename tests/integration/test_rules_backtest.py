"""Backtest: a candidate version replayed on stored decisions finds exactly
the decisions a stricter rule changes, and reserves nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import profile_service_pb2
from overture.rules.v1 import rules_service_pb2 as R
from overture_runtime.config import Settings

from .rules_support import MD, STRING, Rules, cap, running_rules, spec, utc


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


async def test_backtest_finds_exactly_the_decisions_a_stricter_rule_changes(svc: Rules) -> None:
    """Replaying a week of decisions (RESERVE and RESERVE_AND_COMMIT) on a version that also denies the free plan reports exactly the
    free-plan allows."""
    lenient = spec(attributes=[("plan", STRING)], rules=[("not-churned", 'plan == "churned"', "deny")], caps=[cap("daily", 100)])
    stricter = spec(attributes=[("plan", STRING)], rules=[("not-churned", 'plan == "churned"', "deny"),
                                                          ("paying-only", 'plan == "free"', "deny")], caps=[cap("daily", 100)])
    await svc.publish("promo", lenient)
    candidate = await svc.publish("promo", stricter, activate=False)
    plans = {"ann": "pro", "ben": "free", "cat": "free", "dan": "churned", "eve": "team", "fay": "free"}
    consented = {"ann", "ben", "cat", "dan", "eve"}  # fay has no consent: denied before and after
    for subject, plan in plans.items():
        await svc.profile(subject, traits={"plan": plan, "email": f"{subject}@example.com"})
        if subject in consented:
            await svc.consent(subject)
    stored: dict[str, D.Decision] = {}
    for day in range(3):
        mode = D.EVALUATION_MODE_RESERVE_AND_COMMIT if day == 2 else D.EVALUATION_MODE_RESERVE  # the engine's sends decide in one step
        for subject in plans:
            decision = await svc.evaluate(rule_set="promo", subject_id=subject, mode=mode, now=utc(2026, 11, 2 + day, 12))
            stored[decision.decision_id] = decision
    outside = await svc.evaluate(rule_set="promo", subject_id="ben", now=utc(2026, 10, 1, 12))  # before the window
    ledger_before = await svc.app.redis.keys(f"{svc.app.settings.redis_namespace}:*caps*")

    result = await svc.rules.BacktestRuleSet(R.BacktestRuleSetRequest(
        rule_set="promo", candidate_version=candidate, start_time=_ts(utc(2026, 11, 1)), end_time=_ts(utc(2026, 11, 8))), metadata=MD)

    expected = {d.decision_id for d in stored.values() if d.subject_id in {"ben", "cat"}}
    assert result.evaluated_count == 18
    assert {c.decision_id for c in result.changes} == expected and outside.decision_id not in expected
    assert (result.changed_count, result.newly_denied_count, result.newly_allowed_count) == (6, 6, 0)
    assert all([v.id for v in c.verdicts_after] == ["paying-only"] and c.allowed_before and not c.allowed_after for c in result.changes)
    assert await svc.app.redis.keys(f"{svc.app.settings.redis_namespace}:*caps*") == ledger_before


async def test_backtest_the_other_way_finds_newly_allowed(svc: Rules) -> None:
    """Replaying the stricter version's decisions on a lenient candidate reports them as newly allowed."""
    await svc.publish("promo", spec(attributes=[("plan", STRING)], rules=[("paying-only", 'plan == "free"', "deny")]))
    lenient = await svc.publish("promo", spec(attributes=[("plan", STRING)]), activate=False)
    await svc.profile("ben", traits={"plan": "free"})
    await svc.consent("ben")
    denied = await svc.evaluate(rule_set="promo", subject_id="ben", now=utc(2026, 11, 3))
    assert not denied.allowed
    result = await svc.rules.BacktestRuleSet(R.BacktestRuleSetRequest(
        rule_set="promo", candidate_version=lenient, start_time=_ts(utc(2026, 11, 1)), end_time=_ts(utc(2026, 11, 8)), page_size=1),
        metadata=MD)
    assert (result.changed_count, result.newly_allowed_count) == (1, 1)


async def test_backtest_over_an_erased_subjects_decisions_skips_them(svc: Rules) -> None:
    """A window holding decisions of an erased subject backtests the others (it was INTERNAL): erased inputs are not replayed."""
    await svc.publish("promo", spec(attributes=[("plan", STRING)], rules=[("paying-only", 'plan == "free"', "deny")]))
    lenient = await svc.publish("promo", spec(attributes=[("plan", STRING)]), activate=False)
    for subject in ("ben", "gus"):
        await svc.profile(subject, traits={"plan": "free"})
        await svc.consent(subject)
        await svc.evaluate(rule_set="promo", subject_id=subject, now=utc(2026, 11, 3))
    await svc.profiles.EraseProfile(profile_service_pb2.EraseProfileRequest(subject_id="gus", reason="GDPR request"), metadata=MD)
    result = await svc.rules.BacktestRuleSet(R.BacktestRuleSetRequest(
        rule_set="promo", candidate_version=lenient, start_time=_ts(utc(2026, 11, 1)), end_time=_ts(utc(2026, 11, 8))), metadata=MD)
    assert (result.evaluated_count, result.changed_count) == (1, 1)
    assert [c.subject_id for c in result.changes] == ["ben"]


def _ts(when: dt.datetime) -> object:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp
