"""Publishing rejects what cannot be evaluated or replayed, with precise messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.rules.v1 import rule_set_pb2 as RS
from overture.rules.v1 import rules_service_pb2 as R
from overture_runtime.config import Settings

from .rules_support import EMAIL, MD, NUMBER, STRING, Rules, running_rules, spec


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


async def _rejection(svc: Rules, rule_set: RS.RuleSetSpec) -> tuple[str, dict[str, tuple[str, str]]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set="bad", spec=rule_set, reason="r"), metadata=MD)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    violations: dict[str, tuple[str, str]] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: (v.reason, v.description) for v in bad.field_violations}
    return caught.value.details() or "", violations


async def test_a_bad_expression_is_rejected_with_rule_and_position(svc: Rules) -> None:
    """A syntax error names the rule and the position; a type error and an unknown attribute name theirs."""
    _, violations = await _rejection(svc, spec(attributes=[("age", NUMBER)], rules=[
        ("syntax", "age > ", "require"), ("typed", 'age == "x" and age > "y"', "require"), ("unknown", "agee > 3", "deny")]))
    assert violations["spec.rules[0].expression"] == ("SYNTAX_ERROR", "rule 'syntax': syntax error at position 6 at the end")
    assert violations["spec.rules[1].expression"][0] == "TYPE_ERROR"
    assert violations["spec.rules[2].expression"][0] == "UNKNOWN_ATTRIBUTE" and "'agee'" in violations["spec.rules[2].expression"][1]
    assert "did you mean 'age'" in violations["spec.rules[2].expression"][1]


@pytest.mark.parametrize("builtin", ["$now", "$today", "$random"])
async def test_time_and_randomness_built_ins_are_banned(svc: Rules, builtin: str) -> None:
    """$now, $today and $random are rejected: decisions must replay."""
    expression = {"$now": "$now > d'2025-01-01'", "$today": "$today > d'2025-01-01'", "$random": "$random > 0.5"}[builtin]
    _, violations = await _rejection(svc, spec(rules=[("clock", expression, "require")]))
    reason, description = violations["spec.rules[0].expression"]
    assert reason == "BANNED_BUILTIN" and builtin in description and "replay" in description


async def test_a_catastrophic_regex_is_rejected(svc: Rules) -> None:
    """A regex with nested quantifiers is rejected as unsafe."""
    _, violations = await _rejection(svc, spec(attributes=[("name", STRING)], rules=[("re", 'name =~ "(a+)+$"', "require")]))
    assert violations["spec.rules[0].expression"][0] == "UNSAFE_REGEX"


async def test_a_failing_test_case_rejects_the_version(svc: Rules) -> None:
    """A version whose own test case fails is rejected, naming the test and what it got."""
    rule_set = spec(attributes=[("plan", STRING)], rules=[("pro-only", 'plan == "pro"', "require")])
    rule_set.test_cases.append(RS.RuleTestCase(
        name="free-users-get-mail", channel=EMAIL, profile=RS.TestProfile(granted_consents=["email/marketing"]),
        expect=RS.TestExpectation(allowed=True)))
    rule_set.test_cases[0].profile.traits.update({"plan": "free"})
    message, violations = await _rejection(svc, rule_set)
    reason, description = violations["spec.test_cases[0]"]
    assert reason == "TEST_CASE_FAILED"
    assert "free-users-get-mail" in description and "expected allowed" in description and "pro-only" in description
    assert "a test case failed" in message


async def test_invalid_caps_and_quiet_hours_are_rejected(svc: Rules) -> None:
    """Caps without limit or window, and quiet hours that are not HH:MM, are rejected field by field."""
    rule_set = spec(caps=[RS.FrequencyCap(id="c", scope=RS.CAP_SCOPE_TAG, limit=0)], quiet=("25:00", "7"))
    _, violations = await _rejection(svc, rule_set)
    assert {"spec.frequency_caps[0].tag", "spec.frequency_caps[0].limit", "spec.frequency_caps[0].window.kind",
            "spec.quiet_hours.start", "spec.quiet_hours.end"} <= set(violations)
