"""A rule set version compiled, once, into what each decision needs.

:func:`overture_rules.engine.evaluate` is the reference: plain, readable,
and what test cases and backtests run. A :class:`DecisionPlan` gives the
same outcome (``tests/unit/rules/test_plan.py`` checks it with hypothesis
against the engine) for much less work per call:

- every verdict whose text is fixed (erasure, suppression, consent, each
  rule's pass and deny) is built once, as its proto, and shared;
- the rules run as one generated Python function (:func:`.fastpath.compile_rules`);
- what depends only on the profile (the coerced attributes, the recipient's
  zone, the traits read) is kept in a memo that the caller keeps beside
  the profile view, so a subject's next decision on the same version skips it.

Plans are immutable and shared across requests; the memo belongs to one
profile view (a new view starts a new memo).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import rule_engine

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2

from .caps import CapPlanner
from .compiler import CompiledRuleSet
from .engine import DecisionOutcome, EvaluationInput, ProfileView, _resolve, channel_name, quiet_hours_end, recipient_zone
from .fastpath import compile_rules

__all__ = ["DecisionPlan"]

V = decision_pb2
_TRANSACTIONAL = messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL
_CHANNELS = {value: channel_name(value) for value in messaging_pb2.Channel.values()}
_PRIORITIES = {p: Decimal(p) for p in range(101)}
_NO_CONTEXT: frozenset[str] = frozenset()


def _verdict(kind: decision_pb2.VerdictKind.ValueType, id_: str, outcome: decision_pb2.VerdictOutcome.ValueType, reason: str) -> decision_pb2.Verdict:
    return V.Verdict(kind=kind, id=id_, outcome=outcome, reason=reason)


def _kind_label(kind: decision_pb2.VerdictKind.ValueType) -> str:
    return V.VerdictKind.Name(kind).removeprefix("VERDICT_KIND_").lower().replace("_", " ")


class _Consent:
    """One consent a channel requires, with its verdicts built."""

    __slots__ = ("deny_missing", "deny_revoked", "key", "pair", "passed", "skip")

    def __init__(self, pair: tuple[str, str]) -> None:
        key = f"{pair[0]}/{pair[1]}"
        self.pair, self.key = pair, key
        self.skip = _verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_SKIP, "transactional messages need no marketing consent")
        self.passed = _verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_PASS, f"consent {key} granted")
        self.deny_revoked = _verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_DENY, f"consent {key} revoked")
        self.deny_missing = _verdict(V.VERDICT_KIND_CONSENT, key, V.VERDICT_OUTCOME_DENY, f"consent {key} not granted (no consent record)")


class _ProfileMemo:
    """What one plan derived from one profile view, for the decisions after the first."""

    __slots__ = ("attributes", "error", "traits_read", "zone")

    def __init__(self) -> None:
        self.attributes: dict[str, Any] | None = None
        self.traits_read: dict[str, Any] | None = None
        self.error: Exception | None = None
        self.zone: ZoneInfo | None = None


class DecisionPlan:
    """One rule set version, compiled for deciding. Immutable; thread-safe to call."""

    def __init__(self, compiled: CompiledRuleSet) -> None:
        spec = compiled.spec
        self.compiled = compiled
        self._spec = spec
        self._attribute_names = tuple(compiled.attributes)
        # Attributes a request's context may supply: then the trait is not read.
        self._context_names = frozenset(
            name for name, decl in compiled.attributes.items()
            if decl.source in (rule_set_pb2.ATTRIBUTE_SOURCE_CONTEXT, rule_set_pb2.ATTRIBUTE_SOURCE_UNSPECIFIED))
        self._always_context = any(d.source == rule_set_pb2.ATTRIBUTE_SOURCE_CONTEXT for d in compiled.attributes.values())
        self._erased = _verdict(V.VERDICT_KIND_ERASURE, "erasure", V.VERDICT_OUTCOME_DENY, "the subject's data was erased")
        self._not_erased = _verdict(V.VERDICT_KIND_ERASURE, "erasure", V.VERDICT_OUTCOME_PASS, "not erased")
        self._lists = tuple((name, _verdict(V.VERDICT_KIND_SUPPRESSION, name, V.VERDICT_OUTCOME_PASS, f"not on {name!r}"),
                             _verdict(V.VERDICT_KIND_SUPPRESSION, name, V.VERDICT_OUTCOME_DENY, f"on suppression list {name!r}"))
                            for name in spec.suppression_lists)
        self._consents: dict[int, tuple[_Consent, ...]] = {}
        for channel in messaging_pb2.Channel.values():
            name = _CHANNELS[channel]
            required = [(_CHANNELS[c.channel], c.purpose) for c in spec.consents if _CHANNELS[c.channel] == name] or [(name, "marketing")]
            self._consents[channel] = tuple(_Consent(pair) for pair in required)
        self._rules = tuple((r.id, r.effect == rule_set_pb2.RULE_EFFECT_REQUIRE, r.reason,
                             _verdict(V.VERDICT_KIND_RULE, r.id, V.VERDICT_OUTCOME_PASS, f"{r.id}: passed"),
                             _verdict(V.VERDICT_KIND_RULE, r.id, V.VERDICT_OUTCOME_DENY, r.reason))
                            for r in compiled.rules)
        self._run_rules = compile_rules([r.rule for r in compiled.rules])
        self._reads_segments = bool(compiled.rules) and any("segments" in r.symbols for r in compiled.rules)
        qh = spec.quiet_hours
        self._quiet = bool(qh.start)
        self._quiet_channels = frozenset(qh.channels)
        self._quiet_start, self._quiet_end = qh.start, qh.end
        self._quiet_skip = _verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_SKIP, "transactional messages ignore quiet hours")
        self._quiet_pass: dict[str, decision_pb2.Verdict] = {}
        self.caps = CapPlanner(spec)
        """Which caps a message counts against, and their windows."""
        cap_ids = [c.id for c in spec.frequency_caps]
        self.caps_skipped_transactional = tuple(_verdict(V.VERDICT_KIND_FREQUENCY_CAP, c, V.VERDICT_OUTCOME_SKIP, "transactional messages are not capped")
                                                for c in cap_ids)
        """The cap verdicts of a transactional message."""
        self.caps_skipped_denied = tuple(_verdict(V.VERDICT_KIND_FREQUENCY_CAP, c, V.VERDICT_OUTCOME_SKIP, "not counted: the message is already denied")
                                         for c in cap_ids)
        """The cap verdicts of a message denied before its caps."""
        self.caps_not_counting = {c: _verdict(V.VERDICT_KIND_FREQUENCY_CAP, c, V.VERDICT_OUTCOME_SKIP, "does not count this message") for c in cap_ids}
        """The verdict of a cap that does not count the message, by cap id."""
        self._encoded: dict[int, bytes] = {}
        for v in (self._erased, self._not_erased, *(x for _, a, b in self._lists for x in (a, b)),
                  *(x for consents in self._consents.values() for c in consents for x in (c.skip, c.passed, c.deny_revoked, c.deny_missing)),
                  *(x for *_, a, b in self._rules for x in (a, b)), self._quiet_skip, *self.caps_skipped_transactional,
                  *self.caps_skipped_denied, *self.caps_not_counting.values()):
            self._encoded[id(v)] = _field(v)

    def encoded(self, verdicts: Sequence[decision_pb2.Verdict]) -> bytes:
        """*verdicts* as elements of ``Decision.verdicts`` on the wire; built
        once for the verdicts this plan holds (they live as long as it does,
        so no other verdict can share their id)."""
        known = self._encoded
        return b"".join([known.get(id(v)) or _field(v) for v in verdicts])

    def zone(self, profile: ProfileView, memo: dict[Any, Any] | None = None) -> ZoneInfo:
        """The recipient's zone (:func:`~overture_rules.engine.recipient_zone`), from *memo* when it has it."""
        m = self._memo(memo)
        if m is None:
            return recipient_zone(self._spec, profile)
        if m.zone is None:
            m.zone = recipient_zone(self._spec, profile)
        return m.zone

    def _memo(self, memo: dict[Any, Any] | None) -> _ProfileMemo | None:
        if memo is None:
            return None
        found: _ProfileMemo | None = memo.get(self)
        if found is None:
            found = memo[self] = _ProfileMemo()
        return found

    def decide(self, profile: ProfileView, msg: EvaluationInput, memo: dict[Any, Any] | None = None) -> DecisionOutcome:
        """The same outcome as ``engine.evaluate(self.compiled, profile, msg)``.
        *memo* must belong to *profile*: pass the same dict only with the same view."""
        channel = msg.channel
        transactional = msg.category == _TRANSACTIONAL
        # The first DENY or ERROR verdict is tracked as verdicts are added:
        # reading it back from the protos costs more than the whole walk.
        first: decision_pb2.Verdict | None = self._erased if profile.erased else None
        verdicts: list[decision_pb2.Verdict] = [self._erased if profile.erased else self._not_erased]
        held = profile.suppression_lists
        read: dict[str, Any] = {"exists": profile.exists, "erased": profile.erased, "suppression_lists": sorted(held)}
        for name, passed, denied in self._lists:
            if name in held:
                verdicts.append(denied)
                if first is None:
                    first = denied
            else:
                verdicts.append(passed)
        consent_read: dict[str, str] = {}
        for consent in self._consents.get(channel) or self._consents_for(channel):
            if consent.pair in profile.granted:
                consent_read[consent.key] = "granted"
                verdicts.append(consent.skip if transactional else consent.passed)
                continue
            if consent.pair in profile.revoked:
                consent_read[consent.key] = "revoked"
                verdict = consent.skip if transactional else consent.deny_revoked
            else:
                consent_read[consent.key] = "missing"
                verdict = consent.skip if transactional else consent.deny_missing
            verdicts.append(verdict)
            if first is None and not transactional:
                first = verdict
        read["consents"] = consent_read

        thing = self._thing(profile, msg, read, memo)
        if isinstance(thing, Exception):
            verdicts.append(error := _verdict(V.VERDICT_KIND_SYSTEM, "attributes", V.VERDICT_OUTCOME_ERROR, f"cannot read attributes: {thing}"))
            if first is None:
                first = error
        if self._reads_segments:
            read["segments"] = list(profile.segments)
        if not isinstance(thing, Exception) and self._rules:
            for (rule_id, require, _, passed, denied), result in zip(self._rules, self._run_rules(thing), strict=True):
                if result is True or result is False:
                    verdict = passed if result is require else denied
                elif isinstance(result, rule_engine.EngineError):
                    verdict = _verdict(V.VERDICT_KIND_RULE, rule_id, V.VERDICT_OUTCOME_ERROR, f"rule failed to evaluate: {result.message}")
                else:
                    verdict = _verdict(V.VERDICT_KIND_RULE, rule_id, V.VERDICT_OUTCOME_ERROR, f"rule failed to evaluate: {type(result).__name__}")
                verdicts.append(verdict)
                if first is None and verdict is not passed:
                    first = verdict

        defer_until: dt.datetime | None = None
        if self._quiet and (not self._quiet_channels or channel in self._quiet_channels):
            if transactional:
                verdicts.append(self._quiet_skip)
            else:
                tz = self.zone(profile, memo)
                read["timezone"] = tz.key
                until = quiet_hours_end(msg.now, tz, self._quiet_start, self._quiet_end)
                if until is None:
                    verdicts.append(self._quiet_pass.get(tz.key) or self._outside(tz.key))
                else:
                    verdicts.append(_verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_DEFER,
                                             f"quiet hours {self._quiet_start}-{self._quiet_end} {tz.key}; deferred to {until.isoformat()}"))
                    defer_until = until if first is None else None
        if first is not None:
            return DecisionOutcome(False, None, tuple(verdicts), f"denied by {_kind_label(first.kind)}: {first.reason}", read)
        summary = f"allowed, deferred to {defer_until.isoformat()}" if defer_until else "allowed"
        return DecisionOutcome(True, defer_until, tuple(verdicts), summary, read)

    def _consents_for(self, channel: int) -> tuple[_Consent, ...]:
        # A channel number no enum declares: the edge refuses them, and
        # channel_name raises here as it does in the engine.
        name = channel_name(channel)  # type: ignore[arg-type]
        required = [(_CHANNELS[c.channel], c.purpose) for c in self._spec.consents if _CHANNELS[c.channel] == name] or [(name, "marketing")]
        return tuple(_Consent(pair) for pair in required)

    def _outside(self, zone: str) -> decision_pb2.Verdict:
        verdict = _verdict(V.VERDICT_KIND_QUIET_HOURS, "quiet-hours", V.VERDICT_OUTCOME_PASS,
                           f"outside quiet hours {self._quiet_start}-{self._quiet_end} {zone}")
        if len(self._quiet_pass) < 1024:  # zones are few; kept, so encoded() knows them
            self._encoded[id(verdict)] = _field(verdict)
            self._quiet_pass[zone] = verdict
        return verdict

    def _thing(self, profile: ProfileView, msg: EvaluationInput, read: dict[str, Any], memo: dict[Any, Any] | None) -> dict[str, Any] | Exception:
        """The context the rules read (engine._resolve), or the error that makes the attributes unreadable."""
        from_context = self._always_context or (bool(msg.context) and not self._context_names.isdisjoint(msg.context))
        m = None if from_context else self._memo(memo)
        if m is None or (m.attributes is None and m.error is None):
            part: dict[str, Any] = {}
            try:
                thing = _resolve(self.compiled, profile, msg, part)
            except (TypeError, ValueError) as error:
                if m is not None:
                    m.error, m.traits_read = error, part.get("traits")
                if "traits" in part:
                    read["traits"] = part["traits"]
                return error
            if m is None:
                if "traits" in part:
                    read["traits"] = part["traits"]
                return thing
            m.attributes, m.traits_read = {name: thing[name] for name in self._attribute_names}, part.get("traits")
        if m.traits_read is not None:
            read["traits"] = m.traits_read
        if m.error is not None:
            return m.error
        assert m.attributes is not None
        priority = _PRIORITIES.get(msg.priority)
        return {"channel": _CHANNELS.get(msg.channel) or channel_name(msg.channel),
                "category": "transactional" if msg.category == _TRANSACTIONAL else "marketing",
                "tags": tuple(msg.tags), "segments": tuple(profile.segments), "priority": Decimal(msg.priority) if priority is None else priority,
                **m.attributes}


def _field(verdict: decision_pb2.Verdict) -> bytes:
    return V.Decision(verdicts=[verdict]).SerializeToString()


def outcome_fields(outcome: DecisionOutcome) -> Mapping[str, Any]:
    """An outcome as plain values, for comparing plans with the engine in tests."""
    return {"allowed": outcome.allowed, "defer_until": outcome.defer_until, "summary": outcome.summary, "snapshot": outcome.snapshot,
            "verdicts": [(v.kind, v.id, v.outcome, v.reason) for v in outcome.verdicts]}
