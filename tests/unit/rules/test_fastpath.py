"""The fast path agrees with rule-engine: same result, or both fail, on
random expressions over random pre-coerced contexts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import rule_engine
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overture.rules.v1 import rule_set_pb2 as RS
from overture_rules.compiler import _context
from overture_rules.fastpath import compile_fast, compile_rules

DECLARED = {
    "plan": RS.AttributeDeclaration(name="plan", type=RS.ATTRIBUTE_TYPE_STRING),
    "score": RS.AttributeDeclaration(name="score", type=RS.ATTRIBUTE_TYPE_NUMBER),
    "active": RS.AttributeDeclaration(name="active", type=RS.ATTRIBUTE_TYPE_BOOLEAN),
    "labels": RS.AttributeDeclaration(name="labels", type=RS.ATTRIBUTE_TYPE_STRING_LIST),
}
CONTEXT = _context(DECLARED)

atoms = st.sampled_from(['plan', 'score', 'active', 'labels', '"a"', '"ab"', "1", "2.5", "0", "true", "false", "null", '["a", "b"]', "channel"])


def _expressions(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return st.one_of(
            st.tuples(atoms, st.sampled_from(["==", "!=", ">", ">=", "<", "<="]), atoms).map(" ".join),
            st.tuples(atoms, st.just("in"), atoms).map(" ".join),
            st.tuples(st.sampled_from(["plan", '"ab"', "null"]), st.sampled_from(["=~", "=~~", "!~", "!~~"]),
                      st.sampled_from(['"^a"', '"b$"', '"x"'])).map(" ".join),
            atoms,
        )
    inner = _expressions(depth - 1)
    return st.one_of(
        inner,
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda p: f"({p[0]}) {p[1]} ({p[2]})"),
        inner.map(lambda e: f"not ({e})"),
    )


things = st.fixed_dictionaries({
    "plan": st.sampled_from([None, "a", "ab", "b", ""]),
    "score": st.sampled_from([None, Decimal(0), Decimal(1), Decimal("2.5"), Decimal(-3)]),
    "active": st.sampled_from([None, True, False]),
    "labels": st.sampled_from([None, (), ("a",), ("a", "b"), ("b",)]),
    "channel": st.just("email"), "category": st.just("marketing"), "tags": st.just(()), "segments": st.just(()),
    "priority": st.just(Decimal(0)),
})


def _outcome(fn: Any, thing: dict[str, Any]) -> Any:
    try:
        return bool(fn(thing))
    except (rule_engine.EngineError, TypeError, ValueError, ArithmeticError):
        return "error"


@settings(max_examples=600, deadline=None)
@given(expression=_expressions(2), thing=things)
def test_fast_path_and_rule_engine_agree(expression: str, thing: dict[str, Any]) -> None:
    """For any expression rule-engine accepts, the fast path (when it applies) gives the same result or fails the same way."""
    try:
        rule = rule_engine.Rule(expression, context=CONTEXT)
    except rule_engine.EngineError:
        assume(False)
        return
    fast = compile_fast(rule)
    assume(fast is not None)
    assert _outcome(fast, thing) == _outcome(rule.matches, thing), expression


def test_unsupported_nodes_fall_back() -> None:
    """Expressions with node kinds outside the fast path (arithmetic, attributes) get no fast closure."""
    assert compile_fast(rule_engine.Rule("score + 1 > 2", context=CONTEXT)) is None
    assert compile_fast(rule_engine.Rule("plan.length > 2", context=CONTEXT)) is None
    assert compile_fast(rule_engine.Rule('plan == "a" and score > 1', context=CONTEXT)) is not None


@settings(max_examples=300, deadline=None)
@given(expressions=st.lists(_expressions(2), min_size=1, max_size=4), thing=things)
def test_generated_rule_set_function_and_rule_engine_agree(expressions: list[str], thing: dict[str, Any]) -> None:
    """The generated function of a whole rule list gives, per rule, rule-engine's result, or an error where rule-engine fails."""
    rules = []
    for expression in expressions:
        try:
            rules.append(rule_engine.Rule(expression, context=CONTEXT))
        except rule_engine.EngineError:
            continue
    assume(rules)
    results = compile_rules(rules)(thing)
    assert len(results) == len(rules)
    for rule, result in zip(rules, results, strict=True):
        assert (result if isinstance(result, bool) else "error") == _outcome(rule.matches, thing), rule.text


def test_generated_function_runs_unsupported_rules_through_rule_engine() -> None:
    """A rule with nodes the generator does not write out is still evaluated, through rule-engine."""
    rules = [rule_engine.Rule("score + 1 > 2", context=CONTEXT), rule_engine.Rule('plan == "a"', context=CONTEXT)]
    assert compile_rules(rules)({"score": Decimal(5), "plan": "b"}) == (True, False)
