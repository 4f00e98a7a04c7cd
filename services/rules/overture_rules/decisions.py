"""Making and recording decisions: Evaluate's domain logic.

Every decision, in every mode, is stored with its inputs (personal data
masked), the profile fields it read, every verdict, and the version and
digest that decided. A store that cannot be read fails closed.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, Violations
from overture_runtime.privacy import mask_mapping
from overture_runtime.protojson import struct_from_dict, struct_to_dict
from overture_runtime.validation import check_identifier, check_name, check_struct

from .engine import EvaluationInput, ProfileView, evaluate
from .profiles import ProfileStore
from .rule_sets import RuleSetStore
from .tables import decisions

__all__ = ["CONTEXT_MAX_BYTES", "Decider", "validate_evaluate"]

log = structlog.get_logger("overture.rules")
D = decision_pb2
CONTEXT_MAX_BYTES = 16 * 1024
_MAX_TAGS = 32


def validate_evaluate(req: rules_service_pb2.EvaluateRequest) -> list[FieldViolation]:
    """The problems of one Evaluate request."""
    v = Violations()
    if req.version < 0:
        v.add("version", "version must not be negative", "OUT_OF_RANGE")
    mode = req.mode or D.EVALUATION_MODE_CHECK
    settling = mode in (D.EVALUATION_MODE_COMMIT, D.EVALUATION_MODE_RELEASE)
    if settling:
        check_identifier(v, "decision_id", req.decision_id)
    else:
        check_name(v, "rule_set", req.rule_set)
        check_identifier(v, "subject_id", req.subject_id)
        if req.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add("channel", "channel is required", "REQUIRED")
        elif req.channel not in messaging_pb2.Channel.values():
            v.add("channel", f"unknown channel {req.channel}", "INVALID_ENUM")
        if req.category not in messaging_pb2.MessageCategory.values():
            v.add("category", f"unknown category {req.category}", "INVALID_ENUM")
        check_identifier(v, "decision_id", req.decision_id, required=False)
    if mode not in D.EvaluationMode.values():
        v.add("mode", f"unknown mode {req.mode}", "INVALID_ENUM")
    if not 0 <= req.priority <= 100:
        v.add("priority", "priority must be between 0 and 100", "OUT_OF_RANGE")
    if len(req.tags) > _MAX_TAGS:
        v.add("tags", f"at most {_MAX_TAGS} tags", "TOO_MANY")
    for i, tag in enumerate(req.tags):
        check_name(v, f"tags[{i}]", tag)
    check_struct(v, "context", req.context, max_bytes=CONTEXT_MAX_BYTES)
    return v.items


class Decider:
    """Evaluates requests and keeps the decision records."""

    def __init__(self, db: Database, rule_sets: RuleSetStore, profiles: ProfileStore, clock: Clock, ids: IdGenerator) -> None:
        self._db = db
        self._rule_sets = rule_sets
        self._profiles = profiles
        self._clock = clock
        self._ids = ids

    async def evaluate(self, tenant: str, req: rules_service_pb2.EvaluateRequest) -> decision_pb2.Decision:
        """Decide (or settle) one request; the request must be valid."""
        mode = req.mode or D.EVALUATION_MODE_CHECK
        if mode in (D.EVALUATION_MODE_COMMIT, D.EVALUATION_MODE_RELEASE):
            return await self._settle(tenant, req.decision_id, mode)
        if req.decision_id:
            existing = await self._load(tenant, req.decision_id)
            if existing is not None:
                return existing  # idempotent on decision_id
        compiled, version = await self._rule_sets.compiled(tenant=tenant, name=req.rule_set, version=req.version)
        now = req.now.ToDatetime(tzinfo=dt.UTC) if req.HasField("now") else self._clock.now()
        context = struct_to_dict(req.context)
        message = EvaluationInput(channel=req.channel, category=req.category, now=now, tags=tuple(req.tags),
                                  priority=req.priority, context=context)
        decision = D.Decision(
            decision_id=req.decision_id or self._ids.new(), rule_set=req.rule_set, version=version.version,
            digest=version.digest, subject_id=req.subject_id, channel=req.channel, category=req.category,
            tags=req.tags, priority=req.priority, mode=mode, context=struct_from_dict(mask_mapping(context)),
        )
        decision.evaluate_time.FromDatetime(now)
        try:
            profile: ProfileView | None = await self._profiles.view(tenant=tenant, subject_id=req.subject_id)
        except Exception as error:  # noqa: BLE001 - any store failure fails closed
            log.warning("rules.profile_store_unavailable", error=type(error).__name__)
            profile = None
        if profile is None:
            decision.allowed = False
            decision.verdicts.add(kind=D.VERDICT_KIND_SYSTEM, id="profile-store", outcome=D.VERDICT_OUTCOME_ERROR,
                                  reason="the profile and consent store could not be read; failing closed")
            decision.summary = "denied by system: the profile and consent store could not be read"
        else:
            outcome = evaluate(compiled, profile, message)
            decision.allowed = outcome.allowed
            decision.verdicts.extend(outcome.verdicts)
            decision.summary = outcome.summary
            decision.profile_snapshot.CopyFrom(struct_from_dict(mask_mapping(outcome.snapshot)))
            if outcome.defer_until is not None:
                decision.defer_until.FromDatetime(outcome.defer_until)
        return await self._store(tenant, decision)

    async def get(self, tenant: str, decision_id: str) -> decision_pb2.Decision:
        """One stored decision."""
        decision = await self._load(tenant, decision_id)
        if decision is None:
            raise NotFound(f"decision {decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
        return decision

    async def list_for_subject(self, tenant: str, subject_id: str, *, limit: int, before: str | None) -> list[decision_pb2.Decision]:
        """A subject's decisions, newest first, older than the decision *before*."""
        t = decisions
        query = sa.select(t.c.record).where((t.c.tenant == tenant) & (t.c.subject_id == subject_id))
        if before:
            query = query.where(t.c.decision_id < before)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.decision_id.desc()).limit(limit))).all()
        return [D.Decision.FromString(r.record) for r in rows]

    async def _store(self, tenant: str, decision: decision_pb2.Decision) -> decision_pb2.Decision:
        now = self._clock.now()
        decision.create_time.FromDatetime(now)
        try:
            async with self._db.begin() as conn:
                await conn.execute(decisions.insert().values(
                    tenant=tenant, decision_id=decision.decision_id, rule_set=decision.rule_set, version=decision.version,
                    subject_id=decision.subject_id, allowed=decision.allowed, mode=D.EvaluationMode.Name(decision.mode).removeprefix("EVALUATION_MODE_").lower(),
                    reservation_state=_state_name(decision.reservation_state),
                    evaluate_time=decision.evaluate_time.ToDatetime(tzinfo=dt.UTC), create_time=now,
                    record=decision.SerializeToString(),
                ))
        except IntegrityError:
            existing = await self._load(tenant, decision.decision_id)
            if existing is None:
                raise
            return existing  # a concurrent call with the same decision id won
        return decision

    async def _load(self, tenant: str, decision_id: str) -> decision_pb2.Decision | None:
        t = decisions
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t.c.record).where((t.c.tenant == tenant) & (t.c.decision_id == decision_id)))).first()
        return D.Decision.FromString(row.record) if row else None

    async def _settle(self, tenant: str, decision_id: str, mode: decision_pb2.EvaluationMode.ValueType) -> decision_pb2.Decision:
        decision = await self._load(tenant, decision_id)
        if decision is None:
            raise NotFound(f"decision {decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
        if decision.mode != D.EVALUATION_MODE_RESERVE:
            raise InvalidArgument(
                f"decision {decision_id!r} was made in {D.EvaluationMode.Name(decision.mode)} mode; only RESERVE decisions can be settled",
                violations=[FieldViolation("decision_id", "not a RESERVE decision", "NOT_RESERVED")],
            )
        # Without frequency caps nothing is held; settling records the outcome.
        target = D.RESERVATION_STATE_COMMITTED if mode == D.EVALUATION_MODE_COMMIT else D.RESERVATION_STATE_RELEASED
        if decision.reservation_state in (D.RESERVATION_STATE_UNSPECIFIED, D.RESERVATION_STATE_HELD):
            decision.reservation_state = target if decision.allowed else decision.reservation_state
            async with self._db.begin() as conn:
                await conn.execute(decisions.update().where(
                    (decisions.c.tenant == tenant) & (decisions.c.decision_id == decision_id)
                ).values(reservation_state=_state_name(decision.reservation_state), record=decision.SerializeToString()))
        return decision




def _state_name(state: decision_pb2.ReservationState.ValueType) -> str:
    return D.ReservationState.Name(state).removeprefix("RESERVATION_STATE_").lower()
