"""Running a rule set version's own test cases, as publish and
``overture rules test`` do."""

from __future__ import annotations

import datetime as dt

from overture.rules.v1 import decision_pb2, rule_set_pb2
from overture_runtime.errors import FieldViolation
from overture_runtime.protojson import struct_to_dict

from .compiler import CompiledRuleSet
from .engine import EvaluationInput, ProfileView, evaluate

__all__ = ["DEFAULT_TEST_TIME", "profile_of", "run_test_cases"]

_DENYING = (decision_pb2.VERDICT_OUTCOME_DENY, decision_pb2.VERDICT_OUTCOME_ERROR)
DEFAULT_TEST_TIME = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)


def profile_of(case: rule_set_pb2.RuleTestCase) -> ProfileView:
    """The profile a test case describes."""
    p = case.profile
    granted = frozenset(tuple(c.split("/", 1)) for c in p.granted_consents if "/" in c)
    return ProfileView(
        subject_id=f"test:{case.name}",
        traits=struct_to_dict(p.traits),
        granted=granted,  # type: ignore[arg-type]
        segments=tuple(p.segments),
        timezone=p.timezone,
        suppression_lists=frozenset(p.suppression_lists),
    )


def run_test_cases(compiled: CompiledRuleSet, *, prefix: str = "spec") -> list[FieldViolation]:
    """Run every test case; return one violation per failing case."""
    failures: list[FieldViolation] = []
    names: set[str] = set()
    for i, case in enumerate(compiled.spec.test_cases):
        field = f"{prefix}.test_cases[{i}]"
        if not case.name:
            failures.append(FieldViolation(f"{field}.name", "test case name is required", "REQUIRED"))
            continue
        if case.name in names:
            failures.append(FieldViolation(f"{field}.name", f"test case {case.name!r} is defined twice", "DUPLICATE"))
        names.add(case.name)
        now = case.now.ToDatetime(tzinfo=dt.UTC) if case.HasField("now") else DEFAULT_TEST_TIME
        outcome = evaluate(
            compiled,
            profile_of(case),
            EvaluationInput(channel=case.channel, category=case.category, now=now, tags=tuple(case.tags),
                            context=struct_to_dict(case.context)),
        )
        expect = case.expect
        problems: list[str] = []
        if outcome.allowed != expect.allowed:
            problems.append(f"expected {'allowed' if expect.allowed else 'denied'}, got {outcome.summary}")
        deferred = outcome.defer_until is not None
        if outcome.allowed and deferred != expect.deferred:
            problems.append(f"expected {'deferred' if expect.deferred else 'not deferred'}, got {outcome.summary}")
        if expect.deciding_rules:
            deciding = sorted(v.id for v in outcome.verdicts if v.outcome in _DENYING)
            if deciding != sorted(expect.deciding_rules):
                problems.append(f"expected deciding rules {sorted(expect.deciding_rules)}, got {deciding}")
        if problems:
            failures.append(FieldViolation(field, f"test {case.name!r}: {'; '.join(problems)}", "TEST_CASE_FAILED"))
    return failures
