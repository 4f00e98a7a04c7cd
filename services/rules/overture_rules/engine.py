"""The decision: one pure function over a compiled rule set, a profile and a
request. No I/O, no clock: everything comes in, so decisions replay.

Order of checks: erasure, suppression, consent, rules, quiet hours. Any DENY
or ERROR verdict denies; compliance fails closed. Transactional messages
skip consent and quiet hours, never erasure, suppression or rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import rule_engine

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2

from .compiler import CompiledRuleSet

__all__ = ["DecisionOutcome", "EvaluationInput", "ProfileView", "channel_name", "evaluate", "quiet_hours_end", "recipient_zone"]

V = decision_pb2


def channel_name(channel: messaging_pb2.Channel.ValueType) -> str:
    """``CHANNEL_EMAIL`` -> ``email``."""
    return messaging_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def category_name(category: messaging_pb2.MessageCategory.ValueType) -> str:
    """``MESSAGE_CATEGORY_TRANSACTIONAL`` -> ``transactional``; unspecified is marketing."""
    if category == messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL:
        return "transactional"
    return "marketing"


@dataclass(frozen=True)
class ProfileView:
    """What a decision may read of a profile."""

    subject_id: str
    """The subject's id."""
    traits: Mapping[str, Any] = field(default_factory=dict)
    """The profile's traits."""
    granted: frozenset[tuple[str, str]] = frozenset()
    """(channel, purpose) pairs with consent GRANTED, for example ``("email", "marketing")``."""
    revoked: frozenset[tuple[str, str]] = frozenset()
    """(channel, purpose) pairs with consent REVOKED."""
    segments: tuple[str, ...] = ()
    """The segments the subject is in."""
    timezone: str = ""
    """The subject's IANA time zone, if known."""
    suppression_lists: frozenset[str] = frozenset()
    """The suppression lists the subject is on."""
    erased: bool = False
    """Whether the profile was erased."""
    exists: bool = True
    """False when the subject has no profile at all."""


@dataclass(frozen=True)
class EvaluationInput:
    """The message a decision is about."""

    channel: messaging_pb2.Channel.ValueType
    """``Channel``."""
    category: messaging_pb2.MessageCategory.ValueType
    """``MessageCategory``."""
    now: dt.datetime
    """The decision time, aware UTC."""
    tags: tuple[str, ...] = ()
    """The message's tags."""
    priority: int = 0
    """The message's priority."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """The request context."""


@dataclass(frozen=True)
class DecisionOutcome:
    """The result of :func:`evaluate`."""

    allowed: bool
    """Whether the message may be sent (possibly at ``defer_until``)."""
    defer_until: dt.datetime | None
    """The earliest send time, when quiet hours defer."""
    verdicts: tuple[decision_pb2.Verdict, ...]
    """One verdict per check, in order."""
    summary: str
    """A one-line reason."""
    snapshot: Mapping[str, Any]
    """The profile fields the decision read, unmasked (mask before storing)."""


def _verdict(kind: decision_pb2.VerdictKind.ValueType, id_: str, outcome: decision_pb2.VerdictOutcome.ValueType, reason: str) -> decision_pb2.Verdict:
    return decision_pb2.Verdict(kind=kind, id=id_, outcome=outcome, reason=reason)


def _coerce(decl: rule_set_pb2.AttributeDeclaration, value: Any) -> Any:
    if value is None:
        return None
    t = decl.type
    if t == rule_set_pb2.ATTRIBUTE_TYPE_STRING and isinstance(value, str):
        return value
    if t == rule_set_pb2.ATTRIBUTE_TYPE_NUMBER and isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return Decimal(str(value))
    if t == rule_set_pb2.ATTRIBUTE_TYPE_BOOLEAN and isinstance(value, bool):
        return value
    if t == rule_set_pb2.ATTRIBUTE_TYPE_DATETIME and isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if t == rule_set_pb2.ATTRIBUTE_TYPE_STRING_LIST and isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return tuple(value)
    raise TypeError(f"attribute {decl.name!r} should be {rule_set_pb2.AttributeType.Name(t).removeprefix('ATTRIBUTE_TYPE_')}")


def _resolve(compiled: CompiledRuleSet, profile: ProfileView, msg: EvaluationInput, read: dict[str, Any]) -> dict[str, Any]:
    thing: dict[str, Any] = {
        "channel": channel_name(msg.channel),
        "category": category_name(msg.category),
        "tags": tuple(msg.tags),
        "segments": tuple(profile.segments),
        "priority": Decimal(msg.priority),
    }
    for name, decl in compiled.attributes.items():
        from_context = decl.source == rule_set_pb2.ATTRIBUTE_SOURCE_CONTEXT or (
            decl.source == rule_set_pb2.ATTRIBUTE_SOURCE_UNSPECIFIED and name in msg.context)
        raw = msg.context.get(name) if from_context else profile.traits.get(name)
        if not from_context and name in profile.traits:
            read.setdefault("traits", {})[name] = profile.traits[name]
        thing[name] = _coerce(decl, raw)
    return thing


def recipient_zone(spec: rule_set_pb2.RuleSetSpec, profile: ProfileView) -> ZoneInfo:
    """The recipient's time zone, for quiet hours and calendar caps: the trait
    named by ``quiet_hours.timezone_attribute``, else the profile's own zone,
    else the rule set's ``quiet_hours.default_timezone``, else UTC. A zone
    that does not exist falls back the same way."""
    qh = spec.quiet_hours
    candidates = [
        str(profile.traits.get(qh.timezone_attribute) or "") if qh.timezone_attribute else "",
        profile.timezone, qh.default_timezone, "UTC",
    ]
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def quiet_hours_end(now: dt.datetime, tz: dt.tzinfo, start: str, end: str) -> dt.datetime | None:
    """When the quiet period containing *now* ends (UTC), or None outside one."""
    local = now.astimezone(tz)
    s = dt.time.fromisoformat(start)
    e = dt.time.fromisoformat(end)
    t = local.time().replace(tzinfo=None)
    if s < e:
        if not (s <= t < e):
            return None
        end_date = local.date()
    else:  # wraps midnight
        if not (t >= s or t < e):
            return None
        end_date = local.date() if t < e else local.date() + dt.timedelta(days=1)
    # Built from the wall clock in the zone, so the end is right across DST.
    # In the hour repeated when clocks go back, the first reading of the end
    # time may already be past: then the quiet period ends at its second one.
    end_utc = dt.datetime.combine(end_date, e, tzinfo=tz).astimezone(dt.UTC)
    if end_utc <= now:
        end_utc = dt.datetime.combine(end_date, e, tzinfo=tz).replace(fold=1).astimezone(dt.UTC)
    return end_utc if end_utc > now else None


def evaluate(compiled: CompiledRuleSet, profile: ProfileView, msg: EvaluationInput) -> DecisionOutcome:
    """Decide whether *msg* may be sent to *profile* under *compiled*."""
    spec = compiled.spec
    channel = channel_name(msg.channel)
    transactional = msg.category == messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL
    verdicts: list[decision_pb2.Verdict] = []
    read: dict[str, Any] = {"exists": profile.exists}

    read["erased"] = profile.erased
    if profile.erased:
        verdicts.append(_verdict(V.VERDICT_KIND_ERASURE, "erasure", V.VERDICT_OUTCOME_DENY, "the subject's data was erased"))
    else:
        verdicts.append(_verdict(V.VERDICT_KIND_ERASURE, "erasure", V.VERDICT_OUTCOME_PASS, "not erased"))

    lists = sorted(profile.suppression_lists & set(spec.suppression_lists))
    read["suppression_lists"] = sorted(profile.suppression_lists)
    for name in spec.suppression_lists:
        if name in lists:
            verdicts.append(_verdict(V.VERDICT_KIND_SUPPRESSION, name, V.VERDICT_OUTCOME_DENY, f"on suppression list {name!r}"))
        else:
            verdicts.append(_verdict(V.VERDICT_KIND_SUPPRESSION, name, V.VERDICT_OUTCOME_PASS, f"not on {name!r}"))

    # Consent: the rule set's requirements for this channel; with none
    # declared, marketing on a channel still needs `<channel>/marketing`.
    required = [(channel_name(c.channel), c.purpose) for c in spec.consents if channel_name(c.channel) == channel]
    if not required:
        required = [(channel, "marketing")]
    consent_read: dict[str, str] = {}
    for pair in required:
        key = f"{pair[0]}/{pair[1]}"
        state = "granted" if pair in profile.granted else "revoked" if pair in profile.revoked else "missing"
        consent_read[key] = state
        if transactional:
            verdicts.append(_verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_SKIP, "transactional messages need no marketing consent"))
        elif state == "granted":
            verdicts.append(_verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_PASS, f"consent {key} granted"))
        else:
            why = "revoked" if state == "revoked" else "not granted (no consent record)"
            verdicts.append(_verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_DENY, f"consent {key} {why}"))
    read["consents"] = consent_read

    try:
        thing = _resolve(compiled, profile, msg, read)
    except (TypeError, ValueError) as error:
        thing = None
        verdicts.append(_verdict(V.VERDICT_KIND_SYSTEM, "attributes", V.VERDICT_OUTCOME_ERROR, f"cannot read attributes: {error}"))
    if compiled.rules and any(r.symbols & {"segments"} for r in compiled.rules):
        read["segments"] = list(profile.segments)
    for rule in compiled.rules:
        if thing is None:
            break
        try:
            matched = rule.matches(thing)
        except rule_engine.EngineError as error:
            verdicts.append(_verdict(V.VERDICT_KIND_RULE, rule.id, V.VERDICT_OUTCOME_ERROR, f"rule failed to evaluate: {error.message}"))
            continue
        except (TypeError, ValueError, ArithmeticError) as error:  # rule-engine lets some of these through (e.g. `x in null`)
            verdicts.append(_verdict(V.VERDICT_KIND_RULE, rule.id, V.VERDICT_OUTCOME_ERROR, f"rule failed to evaluate: {type(error).__name__}"))
            continue
        if rule.effect == rule_set_pb2.RULE_EFFECT_REQUIRE:
            outcome = V.VERDICT_OUTCOME_PASS if matched else V.VERDICT_OUTCOME_DENY
        else:
            outcome = V.VERDICT_OUTCOME_DENY if matched else V.VERDICT_OUTCOME_PASS
        reason = rule.reason if outcome == V.VERDICT_OUTCOME_DENY else f"{rule.id}: passed"
        verdicts.append(_verdict(V.VERDICT_KIND_RULE, rule.id, outcome, reason))

    denied = [x for x in verdicts if x.outcome in (V.VERDICT_OUTCOME_DENY, V.VERDICT_OUTCOME_ERROR)]
    defer_until: dt.datetime | None = None
    qh = spec.quiet_hours
    applies = qh.start and (not qh.channels or msg.channel in qh.channels)
    if applies:
        if transactional:
            verdicts.append(_verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_SKIP, "transactional messages ignore quiet hours"))
        else:
            tz = recipient_zone(spec, profile)
            read["timezone"] = tz.key
            until = quiet_hours_end(msg.now, tz, qh.start, qh.end)
            if until is None:
                verdicts.append(_verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_PASS, f"outside quiet hours {qh.start}-{qh.end} {tz.key}"))
            else:
                verdicts.append(_verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_DEFER, f"quiet hours {qh.start}-{qh.end} {tz.key}; deferred to {until.isoformat()}"))
                defer_until = until if not denied else None

    if denied:
        first = denied[0]
        kind = V.VerdictKind.Name(first.kind).removeprefix("VERDICT_KIND_").lower().replace("_", " ")
        summary = f"denied by {kind}: {first.reason}"
        return DecisionOutcome(False, None, tuple(verdicts), summary, read)
    summary = f"allowed, deferred to {defer_until.isoformat()}" if defer_until else "allowed"
    return DecisionOutcome(True, defer_until, tuple(verdicts), summary, read)
