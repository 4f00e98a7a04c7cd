"""Compiling a rule set version: every expression is parsed and type-checked
once against the declared attribute schema, and checked for what makes a
decision unreplayable or unsafe.

Rejected, with the rule id and the error's position:
- syntax errors, unknown attributes and type errors;
- the built-ins ``$now``, ``$today`` and ``$random`` (time comes with the
  request, so that decisions can be replayed);
- regular expressions whose nested quantifiers can backtrack catastrophically.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import rule_engine
import rule_engine.ast as rast
from rule_engine.builtins import Builtins

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import rule_set_pb2
from overture_runtime.errors import FieldViolation, Violations
from overture_runtime.validation import check_name

from .fastpath import compile_fast

if TYPE_CHECKING:
    from .plan import DecisionPlan

__all__ = ["BUILTINS", "MAX_ROLLING_WINDOW", "CompiledRule", "CompiledRuleSet", "compile_rule_set"]

MAX_ROLLING_WINDOW = dt.timedelta(days=31)
"""The longest rolling cap window; the ledger keeps a little more history."""

_T = rule_engine.DataType
_TYPES: Mapping[int, Any] = {
    rule_set_pb2.ATTRIBUTE_TYPE_STRING: _T.STRING,
    rule_set_pb2.ATTRIBUTE_TYPE_NUMBER: _T.FLOAT,
    rule_set_pb2.ATTRIBUTE_TYPE_BOOLEAN: _T.BOOLEAN,
    rule_set_pb2.ATTRIBUTE_TYPE_DATETIME: _T.DATETIME,
    rule_set_pb2.ATTRIBUTE_TYPE_STRING_LIST: _T.ARRAY(_T.STRING),
}
BUILTINS: Mapping[str, Any] = {
    "channel": _T.STRING,
    "category": _T.STRING,
    "tags": _T.ARRAY(_T.STRING),
    "segments": _T.ARRAY(_T.STRING),
    "priority": _T.FLOAT,
}
"""Names every expression may read besides the declared attributes."""
_KNOWN_BUILTINS = frozenset(Builtins.from_defaults().keys())
_BANNED_REFERENCE = re.compile(r"\$(now|today|random)\b")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
# A group that is quantified and contains a quantifier (or an alternation of
# overlapping branches), such as (a+)+, (a*)*, (a|a)*, (\w+\s?)+.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")
_ALTERNATION_STAR = re.compile(r"\((?:[^()\\]|\\.)*\|(?:[^()\\]|\\.)*\)[+*{]")


@dataclass(frozen=True)
class CompiledRule:
    """One rule, compiled."""

    id: str
    """The rule's id."""
    effect: int
    """``RuleEffect``: REQUIRE or DENY."""
    reason: str
    """The reason shown when the rule decides."""
    rule: rule_engine.Rule
    """The compiled expression. Thread-safe for evaluation."""
    symbols: frozenset[str]
    """The attributes the expression reads."""
    fast: Callable[[Mapping[str, Any]], bool] | None = None
    """The same expression as a closure over pre-coerced contexts, when every
    node kind it uses is supported (see :mod:`.fastpath`)."""

    def matches(self, thing: Mapping[str, Any]) -> bool:
        """Whether the expression holds for *thing* (pre-coerced values)."""
        return self.fast(thing) if self.fast is not None else bool(self.rule.matches(thing))


@dataclass(frozen=True)
class CompiledRuleSet:
    """A rule set version ready to evaluate. Immutable; shared across requests."""

    spec: rule_set_pb2.RuleSetSpec
    """The version's content."""
    attributes: Mapping[str, rule_set_pb2.AttributeDeclaration]
    """Declared attributes by name."""
    rules: tuple[CompiledRule, ...]
    """The rules, in document order."""

    @functools.cached_property
    def plan(self) -> DecisionPlan:
        """This version compiled for deciding (:mod:`.plan`), built on first use."""
        from .plan import DecisionPlan

        return DecisionPlan(self)


def _context(attributes: Mapping[str, rule_set_pb2.AttributeDeclaration]) -> rule_engine.Context:
    types = dict(BUILTINS)
    types.update({name: _TYPES[decl.type] for name, decl in attributes.items()})
    return rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(types), default_timezone="UTC")


def _walk(node: Any) -> Any:
    yield node
    for name in dir(node):
        if name.startswith("_") or name in ("context", "result_type"):
            continue
        try:
            value = getattr(node, name)
        except Exception:  # noqa: BLE001 - some AST properties evaluate lazily
            continue
        if isinstance(value, rast.ExpressionBase):
            yield from _walk(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, rast.ExpressionBase):
                    yield from _walk(item)


def dangerous_regex(pattern: str) -> bool:
    """Whether *pattern* has a nested quantifier that can backtrack catastrophically."""
    return bool(_NESTED_QUANTIFIER.search(pattern) or _ALTERNATION_STAR.search(pattern))


def compile_expression(
    text: str, context: rule_engine.Context, field: str
) -> tuple[rule_engine.Rule | None, frozenset[str], list[FieldViolation]]:
    """Compile one expression; return it, the symbols it reads, and its problems."""
    problems: list[FieldViolation] = []
    banned = sorted({m.group(1) for m in _BANNED_REFERENCE.finditer(_STRING_LITERAL.sub("", text))})
    if banned:
        # Checked before compiling, so that the reason is the ban even where
        # the built-in's use would also be a type error.
        return None, frozenset(), [
            FieldViolation(field, f"${name} is not allowed: decisions must replay, so the time comes with the request and nothing may be random",
                           "BANNED_BUILTIN")
            for name in banned
        ]
    try:
        rule = rule_engine.Rule(text, context=context)
    except rule_engine.RuleSyntaxError as error:
        position = error.token.lexpos if error.token is not None else len(text)
        near = f" near {text[position:position + 12]!r}" if position < len(text) else " at the end"
        return None, frozenset(), [FieldViolation(field, f"syntax error at position {position}{near}", "SYNTAX_ERROR")]
    except rule_engine.SymbolResolutionError as error:
        hint = f"; did you mean {error.suggestion!r}?" if error.suggestion else ""
        return None, frozenset(), [
            FieldViolation(field, f"unknown attribute {error.symbol_name!r}{hint} Declare it under attributes", "UNKNOWN_ATTRIBUTE")
        ]
    except rule_engine.EngineError as error:
        return None, frozenset(), [FieldViolation(field, f"type error: {error.message}", "TYPE_ERROR")]
    symbols: set[str] = set()
    for node in _walk(rule.statement.expression):
        if isinstance(node, rast.SymbolExpression):
            if node.scope != "built-in":
                symbols.add(node.name)
            elif node.name not in _KNOWN_BUILTINS:
                problems.append(FieldViolation(field, f"${node.name} is not a built-in", "UNKNOWN_BUILTIN"))
        elif isinstance(node, rast.FuzzyComparisonExpression):
            right = getattr(node, "_right", None)
            pattern = getattr(right, "pattern", None)
            if pattern and dangerous_regex(pattern):
                problems.append(
                    FieldViolation(field, f"regular expression {pattern!r} can backtrack catastrophically", "UNSAFE_REGEX")
                )
    return rule, frozenset(symbols), problems


def compile_rule_set(spec: rule_set_pb2.RuleSetSpec, *, prefix: str = "spec") -> tuple[CompiledRuleSet | None, list[FieldViolation]]:
    """Validate and compile *spec*. Returns the compiled set, or the
    violations (field paths under *prefix*) that reject it."""
    v = Violations()
    attributes: dict[str, rule_set_pb2.AttributeDeclaration] = {}
    for i, decl in enumerate(spec.attributes):
        field = f"{prefix}.attributes[{i}]"
        if not _IDENTIFIER.fullmatch(decl.name):
            v.add(f"{field}.name", "attribute names are lower-case identifiers (letters, digits, _)", "INVALID_NAME")
        elif decl.name in BUILTINS:
            v.add(f"{field}.name", f"{decl.name!r} is a built-in and cannot be redeclared", "RESERVED_NAME")
        elif decl.name in attributes:
            v.add(f"{field}.name", f"attribute {decl.name!r} is declared twice", "DUPLICATE")
        if decl.type not in _TYPES:
            v.add(f"{field}.type", "type is required", "REQUIRED")
        if decl.name and decl.type in _TYPES:
            attributes[decl.name] = decl
    context = _context(attributes)
    rules: list[CompiledRule] = []
    seen: set[str] = set()
    for i, r in enumerate(spec.rules):
        field = f"{prefix}.rules[{i}]"
        check_name(v, f"{field}.id", r.id)
        if r.id in seen:
            v.add(f"{field}.id", f"rule id {r.id!r} is used twice", "DUPLICATE")
        seen.add(r.id)
        if r.effect not in (rule_set_pb2.RULE_EFFECT_REQUIRE, rule_set_pb2.RULE_EFFECT_DENY):
            v.add(f"{field}.effect", "effect must be REQUIRE or DENY", "REQUIRED")
        if not r.expression.strip():
            v.add(f"{field}.expression", "expression is required", "REQUIRED")
            continue
        label = f"{field}.expression"
        compiled, symbols, problems = compile_expression(r.expression, context, label)
        for p in problems:
            v.add(p.field, f"rule {r.id!r}: {p.description}", p.reason)
        if compiled is not None and not problems:
            rules.append(CompiledRule(r.id, r.effect, r.reason or r.description or r.id, compiled, symbols, compile_fast(compiled)))
    for i, c in enumerate(spec.consents):
        field = f"{prefix}.consents[{i}]"
        if c.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add(f"{field}.channel", "channel is required", "REQUIRED")
        if not _IDENTIFIER.fullmatch(c.purpose):
            v.add(f"{field}.purpose", "purpose is a lower-case identifier, for example 'marketing'", "INVALID_NAME")
    cap_ids: set[str] = set()
    for i, cap in enumerate(spec.frequency_caps):
        field = f"{prefix}.frequency_caps[{i}]"
        check_name(v, f"{field}.id", cap.id)
        if cap.id in cap_ids:
            v.add(f"{field}.id", f"cap id {cap.id!r} is used twice", "DUPLICATE")
        cap_ids.add(cap.id)
        if cap.scope == rule_set_pb2.CAP_SCOPE_UNSPECIFIED:
            v.add(f"{field}.scope", "scope must be CHANNEL, ALL_CHANNELS or TAG", "REQUIRED")
        elif cap.scope == rule_set_pb2.CAP_SCOPE_CHANNEL and cap.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add(f"{field}.channel", "a CHANNEL cap needs its channel", "REQUIRED")
        elif cap.scope == rule_set_pb2.CAP_SCOPE_TAG:
            check_name(v, f"{field}.tag", cap.tag)
        if cap.limit < 1:
            v.add(f"{field}.limit", "limit must be at least 1", "OUT_OF_RANGE")
        kind = cap.window.kind
        if kind == rule_set_pb2.CAP_WINDOW_KIND_UNSPECIFIED:
            v.add(f"{field}.window.kind", "window kind must be ROLLING, CALENDAR_DAY or CALENDAR_WEEK", "REQUIRED")
        elif kind == rule_set_pb2.CAP_WINDOW_KIND_ROLLING:
            length = cap.window.duration.ToTimedelta()
            if not dt.timedelta(0) < length <= MAX_ROLLING_WINDOW:
                v.add(f"{field}.window.duration", f"a rolling window must be longer than 0 and at most {MAX_ROLLING_WINDOW.days} days", "OUT_OF_RANGE")
    qh = spec.quiet_hours
    if qh.start or qh.end:
        for name in ("start", "end"):
            if not _HHMM.fullmatch(getattr(qh, name)):
                v.add(f"{prefix}.quiet_hours.{name}", f"{name} must be HH:MM, 24-hour", "INVALID_TIME")
        if qh.start == qh.end and qh.start:
            v.add(f"{prefix}.quiet_hours.end", "end must differ from start", "INVALID_TIME")
        if qh.default_timezone:
            try:
                ZoneInfo(qh.default_timezone)
            except (ZoneInfoNotFoundError, ValueError):
                v.add(f"{prefix}.quiet_hours.default_timezone", f"unknown time zone {qh.default_timezone!r}", "UNKNOWN_TIMEZONE")
    for i, name in enumerate(spec.suppression_lists):
        check_name(v, f"{prefix}.suppression_lists[{i}]", name)
    if v:
        return None, v.items
    return CompiledRuleSet(spec=spec, attributes=attributes, rules=tuple(rules)), []
