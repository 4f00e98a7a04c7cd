"""A fast path for evaluating rule-engine expressions.

rule-engine parses and type-checks expressions; evaluating its AST costs
tens of microseconds per rule, mostly in per-call symbol resolution and
coercion. Decisions hand it a context whose values are already coerced to
the declared types (see ``engine._resolve``), so the common node kinds can
be turned once into plain Python closures with the same semantics. Any node
kind outside the supported set makes :func:`compile_fast` return None, and
that rule keeps evaluating through rule-engine itself.

:func:`compile_rules` goes one step further for a whole rule set: it
generates the source of one Python function that evaluates every rule of a
version (each in its own ``try``), with the same node semantics written out
as expressions instead of a tree of closures, compiles it once, and returns
it. Rules with unsupported nodes are called through rule-engine from it.

The semantics mirror rule-engine 5.1 (``rule_engine/ast``) node for node;
``tests/unit/rules/test_fastpath.py`` checks that both forms agree with
rule-engine (same result or both fail) on random expressions and contexts.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import rule_engine
import rule_engine.ast as rast

__all__ = ["RULE_ERRORS", "compile_fast", "compile_rules"]

Fn = Callable[[Mapping[str, Any]], Any]
_ORDER = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
_FUZZY = {"eq_fzm": ("match", True), "eq_fzs": ("search", True), "ne_fzm": ("match", False), "ne_fzs": ("search", False)}


RULE_ERRORS = (rule_engine.EngineError, TypeError, ValueError, ArithmeticError)
"""What a rule may raise on some input: a verdict of ERROR, not a failed call
(rule-engine lets some of the built-in errors through, e.g. ``x in null``)."""


class _Unsupported(Exception):
    pass


def compile_fast(rule: rule_engine.Rule) -> Callable[[Mapping[str, Any]], bool] | None:
    """A closure equivalent to ``rule.matches`` on pre-coerced contexts, or None."""
    try:
        fn = _compile(rule.statement.expression)
    except _Unsupported:
        return None
    return lambda thing: bool(fn(thing))


def _mismatch() -> rule_engine.EvaluationError:
    return rule_engine.EvaluationError("data type mismatch")


def _ordered(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    if left is None and right is None:
        return op in (operator.ge, operator.le)
    if isinstance(left, tuple) and isinstance(right, tuple):
        for a, b in zip(left, right, strict=False):
            if _ordered(operator.ne, a, b):
                return _ordered(op, a, b)
        if len(left) != len(right):
            return _ordered(op, len(left), len(right))
        return op in (operator.ge, operator.le)
    if type(left) is not type(right):
        raise _mismatch()
    return op(left, right)


def _compile(node: Any) -> Fn:
    kind = type(node)
    if kind is rast.SymbolExpression:
        if node.scope is not None:
            raise _Unsupported
        name = node.name
        return lambda t: t[name]
    if kind in (rast.StringExpression, rast.FloatExpression, rast.BooleanExpression, rast.NullExpression, rast.DatetimeExpression):
        value = node.value
        return lambda t: value
    if kind is rast.ArrayExpression:
        members = [_compile(m) for m in node.value]
        return lambda t: tuple(m(t) for m in members)
    if kind is rast.LogicExpression:
        left, right = _compile(node.left), _compile(node.right)
        if node.type == "and":
            return lambda t: bool(left(t) and right(t))
        if node.type == "or":
            return lambda t: bool(left(t) or right(t))
        raise _Unsupported
    if kind is rast.ComparisonExpression:
        left, right = _compile(node.left), _compile(node.right)
        if node.type == "eq":
            return lambda t: (a := left(t), b := right(t)) and type(a) is type(b) and a == b
        if node.type == "ne":
            return lambda t: (a := left(t), b := right(t)) and (type(a) is not type(b) or a != b)
        raise _Unsupported
    if kind is rast.ArithmeticComparisonExpression:
        left, right = _compile(node.left), _compile(node.right)
        op = _ORDER.get(node.type)
        if op is None:
            raise _Unsupported
        return lambda t: _ordered(op, left(t), right(t))
    if kind is rast.FuzzyComparisonExpression:
        pattern = getattr(node, "_right", None)
        if not isinstance(node.right, rast.StringExpression) or pattern is None or node.type not in _FUZZY:
            raise _Unsupported
        left = _compile(node.left)
        method, positive = _FUZZY[node.type]
        find = getattr(pattern, method)

        def fuzzy(t: Mapping[str, Any]) -> bool:
            value = left(t)
            if value is None:
                return not positive  # rule-engine: a null operand never matches
            if not isinstance(value, str):
                raise _mismatch()
            return (find(value) is not None) is positive

        return fuzzy
    if kind is rast.ContainsExpression:
        container, member = _compile(node.container), _compile(node.member)

        def contains(t: Mapping[str, Any]) -> bool:
            haystack = container(t)
            needle = member(t)
            if isinstance(haystack, (str, bytes)) and type(needle) is not type(haystack):
                raise _mismatch()
            return bool(needle in haystack)

        return contains
    if kind is rast.UnaryExpression and node.type == "not":
        operand = _compile(node.right)
        return lambda t: not operand(t)
    raise _Unsupported


def _eq(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # type: ignore[no-any-return]


def _ne(a: Any, b: Any) -> bool:
    return type(a) is not type(b) or a != b  # type: ignore[no-any-return]


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, (str, bytes)) and type(needle) is not type(haystack):
        raise _mismatch()
    return bool(needle in haystack)


def _fuzzy(find: Callable[[str], Any], positive: bool, value: Any) -> bool:
    if value is None:
        return not positive  # rule-engine: a null operand never matches
    if not isinstance(value, str):
        raise _mismatch()
    return (find(value) is not None) is positive


class _Source:
    """Builds the expression text of a node, naming its constants."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"_k{len(self.names)}"
        self.names[name] = value
        return name

    def expr(self, node: Any) -> str:  # one branch per node kind, as in _compile
        kind = type(node)
        if kind is rast.SymbolExpression:
            if node.scope is not None:
                raise _Unsupported
            return f"t[{node.name!r}]"
        if kind in (rast.StringExpression, rast.FloatExpression, rast.BooleanExpression, rast.NullExpression, rast.DatetimeExpression):
            return self.constant(node.value)
        if kind is rast.ArrayExpression:
            members = [self.expr(m) for m in node.value]
            return "(" + "".join(f"{m}, " for m in members) + ")"
        if kind is rast.LogicExpression:
            if node.type not in ("and", "or"):
                raise _Unsupported
            return f"bool(({self.expr(node.left)}) {node.type} ({self.expr(node.right)}))"
        if kind is rast.ComparisonExpression:
            if node.type not in ("eq", "ne"):
                raise _Unsupported
            return f"_{node.type}({self.expr(node.left)}, {self.expr(node.right)})"
        if kind is rast.ArithmeticComparisonExpression:
            op = _ORDER.get(node.type)
            if op is None:
                raise _Unsupported
            return f"_ordered({self.constant(op)}, {self.expr(node.left)}, {self.expr(node.right)})"
        if kind is rast.FuzzyComparisonExpression:
            pattern = getattr(node, "_right", None)
            if not isinstance(node.right, rast.StringExpression) or pattern is None or node.type not in _FUZZY:
                raise _Unsupported
            method, positive = _FUZZY[node.type]
            return f"_fuzzy({self.constant(getattr(pattern, method))}, {positive}, {self.expr(node.left)})"
        if kind is rast.ContainsExpression:
            return f"_contains({self.expr(node.container)}, {self.expr(node.member)})"
        if kind is rast.UnaryExpression and node.type == "not":
            return f"(not ({self.expr(node.right)}))"
        raise _Unsupported


def compile_rules(rules: Sequence[rule_engine.Rule]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """One function over pre-coerced contexts that evaluates every rule in
    order and returns, per rule, its boolean result or the exception of
    :data:`RULE_ERRORS` it raised (anything else propagates)."""
    source = _Source()
    lines = ["def _rules(t):"]
    for i, rule in enumerate(rules):
        try:
            expression = f"bool({source.expr(rule.statement.expression)})"
        except _Unsupported:
            expression = f"bool({source.constant(rule.matches)}(t))"
        lines += ["    try:", f"        r{i} = {expression}", "    except _ERRORS as error:", f"        r{i} = error"]
    lines.append("    return (" + "".join(f"r{i}, " for i in range(len(rules))) + ")")
    namespace: dict[str, Any] = {"_ERRORS": RULE_ERRORS, "_eq": _eq, "_ne": _ne, "_ordered": _ordered, "_contains": _contains,
                                 "_fuzzy": _fuzzy, **source.names}
    # Our own source, generated from a parsed and type-checked AST; constants are passed by name, never as text.
    exec(compile("\n".join(lines), "<overture rule set>", "exec"), namespace)
    fn: Callable[[Mapping[str, Any]], tuple[Any, ...]] = namespace["_rules"]
    return fn
