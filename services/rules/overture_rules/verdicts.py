"""The decision record: what a request, its outcome and the cap ledger's
answer become, as the ``Decision`` that is returned and stored.

Frequency-cap verdicts go just before quiet hours; any DENY or ERROR verdict
denies; capped marketing fails closed when the ledger could not be asked.
"""

from __future__ import annotations

from collections.abc import Sequence

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2, rules_service_pb2
from overture_runtime.privacy import mask_mapping
from overture_runtime.protojson import struct_from_dict

from .caps import CapWindow, LedgerResult, _timestamp
from .engine import DecisionOutcome, EvaluationInput
from .plan import DecisionPlan

__all__ = ["build_decision", "masked_snapshot"]

D = decision_pb2
_TRANSACTIONAL = messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL
_DENYING = (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)
_NO_PROFILE = D.Verdict(kind=D.VERDICT_KIND_SYSTEM, id="profile-store", outcome=D.VERDICT_OUTCOME_ERROR,
                        reason="the profile and consent store could not be read; failing closed")
_NO_LEDGER = D.Verdict(kind=D.VERDICT_KIND_SYSTEM, id="cap-ledger", outcome=D.VERDICT_OUTCOME_ERROR,
                       reason="the frequency-cap store could not be reached; failing closed")


def masked_snapshot(outcome: DecisionOutcome) -> bytes:
    """The profile fields a decision read, masked: ``Decision.profile_snapshot`` on the wire."""
    return D.Decision(profile_snapshot=struct_from_dict(mask_mapping(outcome.snapshot))).SerializeToString()


def build_decision(
    *, decision_id: str, req: rules_service_pb2.EvaluateRequest, version: rule_set_pb2.RuleSetVersion, plan: DecisionPlan,
    message: EvaluationInput, outcome: DecisionOutcome | None, snapshot: bytes, windows: Sequence[CapWindow], ledger: LedgerResult | None,
    ledger_error: bool,
) -> decision_pb2.Decision:
    """The decision record of one request under *version* (compiled into
    *plan*). *outcome* None means the profile store could not be read;
    *snapshot* is :func:`masked_snapshot` of the outcome. The verdicts go in
    as the plan's pre-encoded bytes: one parse instead of a copy of each."""
    decision = D.Decision(
        decision_id=decision_id, rule_set=req.rule_set, version=version.version, digest=version.digest,
        subject_id=req.subject_id, channel=req.channel, category=req.category, tags=req.tags, priority=req.priority,
        mode=req.mode or D.EVALUATION_MODE_CHECK, evaluate_time=_timestamp(message.now),
    )
    if message.context:
        decision.context.CopyFrom(struct_from_dict(mask_mapping(message.context)))
    if outcome is None:
        decision.verdicts.append(_NO_PROFILE)
        decision.summary = "denied by system: the profile and consent store could not be read"
        return decision
    verdicts: Sequence[decision_pb2.Verdict] = outcome.verdicts
    caps, first = _cap_verdicts(plan, req, outcome, windows, ledger, ledger_error)
    if caps:
        verdicts = list(verdicts)
        at = next((i for i, v in enumerate(verdicts) if v.kind == D.VERDICT_KIND_QUIET_HOURS), len(verdicts))
        verdicts[at:at] = caps
    decision.MergeFromString(plan.encoded(verdicts) + snapshot)
    # The outcome's own verdicts deny exactly when it is not allowed; past that, only a cap can.
    decision.allowed = outcome.allowed and first is None
    if first is not None and outcome.allowed:
        kind = D.VerdictKind.Name(first.kind).removeprefix("VERDICT_KIND_").lower().replace("_", " ")
        decision.summary = f"denied by {kind}: {first.reason}"
    else:
        decision.summary = outcome.summary
    if decision.allowed and outcome.defer_until is not None:
        decision.defer_until.CopyFrom(_timestamp(outcome.defer_until))
    if ledger is not None:
        decision.cap_counters.extend(ledger.counters)
    if decision.allowed and outcome.defer_until is None:
        if decision.mode == D.EVALUATION_MODE_RESERVE:
            decision.reservation_state = D.RESERVATION_STATE_HELD
        elif decision.mode == D.EVALUATION_MODE_RESERVE_AND_COMMIT:
            decision.reservation_state = D.RESERVATION_STATE_COMMITTED
    return decision


def _cap_verdicts(
    plan: DecisionPlan, req: rules_service_pb2.EvaluateRequest, outcome: DecisionOutcome, windows: Sequence[CapWindow],
    ledger: LedgerResult | None, ledger_error: bool,
) -> tuple[Sequence[decision_pb2.Verdict], decision_pb2.Verdict | None]:
    """The cap verdicts, and the first of them that denies."""
    if not plan.caps_not_counting:
        return (), None
    if req.category == _TRANSACTIONAL:
        return plan.caps_skipped_transactional, None
    if not outcome.allowed:
        return plan.caps_skipped_denied, None
    if ledger_error:
        return (_NO_LEDGER,), _NO_LEDGER
    applied = {w.cap.id for w in windows}
    counters = {c.cap_id: c for c in (ledger.counters if ledger else ())}
    preempting = bool(ledger and ledger.preempted and ledger.allowed)
    verdicts: list[decision_pb2.Verdict] = []
    first = None
    for cap in plan.compiled.spec.frequency_caps:
        if cap.id not in applied:
            verdicts.append(plan.caps_not_counting[cap.id])
            continue
        counter = counters[cap.id]
        where = f"{counter.count} of {cap.limit} {_window_label(cap)}"
        if counter.count < cap.limit:
            verdicts.append(_v(cap.id, D.VERDICT_OUTCOME_PASS, where))
        elif preempting:
            verdicts.append(_v(cap.id, D.VERDICT_OUTCOME_PASS, f"{where}; took the slot of a lower-priority held reservation"))
        else:
            verdicts.append(denied := _v(cap.id, D.VERDICT_OUTCOME_DENY, f"frequency cap {cap.id} reached: {where}"))
            if first is None:
                first = denied
    return verdicts, first


def _v(cap_id: str, outcome: decision_pb2.VerdictOutcome.ValueType, reason: str) -> decision_pb2.Verdict:
    return D.Verdict(kind=D.VERDICT_KIND_FREQUENCY_CAP, id=cap_id, outcome=outcome, reason=reason)


def _window_label(cap: rule_set_pb2.FrequencyCap) -> str:
    kind = cap.window.kind
    if kind == rule_set_pb2.CAP_WINDOW_KIND_CALENDAR_DAY:
        return "this calendar day"
    if kind == rule_set_pb2.CAP_WINDOW_KIND_CALENDAR_WEEK:
        return "this calendar week"
    return f"in the last {cap.window.duration.ToTimedelta()}"
