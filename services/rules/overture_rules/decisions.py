"""Making and recording decisions: Evaluate's domain logic.

Every decision, in every mode, is stored with its inputs (personal data
masked), the profile fields it read, every verdict, the cap counters, and
the version and digest that decided. A store that cannot be read fails
closed. Batches are decided together: one profile read, one pipeline of cap
scripts, one insert.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from redis.exceptions import RedisError

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2, rules_service_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, insert_ignore
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, OvertureError, Unavailable, Violations
from overture_runtime.group_commit import GroupWriter
from overture_runtime.privacy import mask_mapping
from overture_runtime.protojson import struct_from_dict, struct_to_dict
from overture_runtime.validation import check_identifier, check_name, check_struct

from .caps import CapLedger, CapWindow, LedgerResult, plan_caps
from .compiler import CompiledRuleSet
from .engine import DecisionOutcome, EvaluationInput, ProfileView, evaluate, recipient_zone
from .profiles import ProfileStore
from .replay import encode
from .rule_sets import RuleSetStore
from .tables import decisions as decisions_table

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
    """Evaluates requests, reserves and settles cap slots, keeps the records."""

    def __init__(
        self, db: Database, rule_sets: RuleSetStore, profiles: ProfileStore, ledger: CapLedger, clock: Clock, ids: IdGenerator,
        *, durable_writes: bool = True,
    ) -> None:
        self._writer = GroupWriter(self._insert, key=lambda row: (row["tenant"], row["decision_id"]), name="decisions",
                                   durable=durable_writes)
        self._db = db
        self._rule_sets = rule_sets
        self._profiles = profiles
        self._ledger = ledger
        self._clock = clock
        self._ids = ids

    async def evaluate(self, tenant: str, req: rules_service_pb2.EvaluateRequest) -> decision_pb2.Decision:
        """Decide (or settle) one valid request; errors are raised."""
        (result,) = await self.evaluate_many(tenant, [req])
        if isinstance(result, OvertureError):
            raise result
        return result

    async def evaluate_many(
        self, tenant: str, requests: Sequence[rules_service_pb2.EvaluateRequest],
    ) -> list[decision_pb2.Decision | OvertureError]:
        """Decide many valid requests together; one result (or error) per request."""
        results: list[decision_pb2.Decision | OvertureError | None] = [None] * len(requests)
        pending: list[int] = []
        for i, req in enumerate(requests):
            if (req.mode or D.EVALUATION_MODE_CHECK) in (D.EVALUATION_MODE_COMMIT, D.EVALUATION_MODE_RELEASE):
                try:
                    at = req.now.ToDatetime(tzinfo=dt.UTC) if req.HasField("now") else self._clock.now()
                    results[i] = await self._settle(tenant, req.decision_id, req.mode, at)
                except OvertureError as error:
                    results[i] = error
            else:
                pending.append(i)
        given = [requests[i].decision_id for i in pending if requests[i].decision_id]
        existing = await self._load_many(tenant, given) if given else {}
        work: list[_Work] = []
        for i in pending:
            req = requests[i]
            if req.decision_id in existing:
                results[i] = existing[req.decision_id]  # idempotent on decision_id
                continue
            try:
                compiled, version = await self._rule_sets.compiled(tenant=tenant, name=req.rule_set, version=req.version)
            except OvertureError as error:
                results[i] = error
                continue
            work.append(_Work(i, req, compiled, version, req.decision_id or self._ids.new()))
        if work:
            for item, decision in zip(work, await self._decide(tenant, work), strict=True):
                results[item.index] = decision
        return [r for r in results if r is not None]

    async def _decide(self, tenant: str, work: list[_Work]) -> list[decision_pb2.Decision]:
        now = self._clock.now()
        try:
            views: dict[str, ProfileView] | None = await self._profiles.view_many(tenant=tenant, subject_ids=[w.req.subject_id for w in work])
        except Exception as error:  # noqa: BLE001 - any store failure fails closed
            log.warning("rules.profile_store_unavailable", error=type(error).__name__)
            views = None
        for w in work:
            req = w.req
            w.message = EvaluationInput(
                channel=req.channel, category=req.category, now=req.now.ToDatetime(tzinfo=dt.UTC) if req.HasField("now") else now,
                tags=tuple(req.tags), priority=req.priority, context=struct_to_dict(req.context),
            )
            w.profile = views[req.subject_id] if views is not None else None
            if w.profile is not None:
                w.outcome = evaluate(w.compiled, w.profile, w.message)
        await self._check_caps(tenant, work)
        decisions = [self._record(w) for w in work]
        return await self._store(tenant, work, decisions)

    async def _check_caps(self, tenant: str, work: list[_Work]) -> None:
        """Check or reserve cap slots for every message that gets that far, in one pipeline."""
        calls = []
        for w in work:
            if w.outcome is None or not w.outcome.allowed or w.req.category == messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL:
                continue
            assert w.profile is not None and w.message is not None
            w.windows = plan_caps(w.compiled.spec, channel=w.req.channel, tags=w.req.tags, now=w.message.now,
                                  zone=recipient_zone(w.compiled.spec, w.profile))
            if not w.windows:
                continue
            reserve = w.req.mode == D.EVALUATION_MODE_RESERVE and w.outcome.defer_until is None
            op = "reserve" if reserve else "check"
            calls.append((w, self._ledger.args(op, decision_id=w.decision_id, priority=w.req.priority, channel=w.req.channel,
                                               tags=w.req.tags, windows=w.windows, now=w.message.now)))
        if not calls:
            return
        try:
            pipe = self._ledger.pipeline()
            for w, args in calls:
                await self._ledger.queue(pipe, tenant, w.req.subject_id, args)
            replies = await pipe.execute()
        except RedisError as error:
            log.warning("rules.cap_ledger_unavailable", error=type(error).__name__)
            for w, _ in calls:
                w.ledger_error = True
            return
        for (w, _), reply in zip(calls, replies, strict=True):
            w.ledger = self._ledger.parse(reply, w.windows)

    def _record(self, w: _Work) -> decision_pb2.Decision:
        req = w.req
        assert w.message is not None
        decision = D.Decision(
            decision_id=w.decision_id, rule_set=req.rule_set, version=w.version.version, digest=w.version.digest,
            subject_id=req.subject_id, channel=req.channel, category=req.category, tags=req.tags, priority=req.priority,
            mode=req.mode or D.EVALUATION_MODE_CHECK, context=struct_from_dict(mask_mapping(w.message.context)),
        )
        decision.evaluate_time.FromDatetime(w.message.now)
        if w.outcome is None:
            decision.verdicts.add(kind=D.VERDICT_KIND_SYSTEM, id="profile-store", outcome=D.VERDICT_OUTCOME_ERROR,
                                  reason="the profile and consent store could not be read; failing closed")
            decision.summary = "denied by system: the profile and consent store could not be read"
            return decision
        verdicts = list(w.outcome.verdicts)
        at = next((i for i, v in enumerate(verdicts) if v.kind == D.VERDICT_KIND_QUIET_HOURS), len(verdicts))
        verdicts[at:at] = self._cap_verdicts(w)
        decision.verdicts.extend(verdicts)
        decision.profile_snapshot.CopyFrom(struct_from_dict(mask_mapping(w.outcome.snapshot)))
        denying = [v for v in verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]
        decision.allowed = not denying
        if denying and w.outcome.allowed:
            first = denying[0]
            kind = D.VerdictKind.Name(first.kind).removeprefix("VERDICT_KIND_").lower().replace("_", " ")
            decision.summary = f"denied by {kind}: {first.reason}"
        else:
            decision.summary = w.outcome.summary
        if decision.allowed and w.outcome.defer_until is not None:
            decision.defer_until.FromDatetime(w.outcome.defer_until)
        if w.ledger is not None:
            decision.cap_counters.extend(w.ledger.counters)
        if decision.allowed and decision.mode == D.EVALUATION_MODE_RESERVE and w.outcome.defer_until is None:
            decision.reservation_state = D.RESERVATION_STATE_HELD
        return decision

    def _cap_verdicts(self, w: _Work) -> list[decision_pb2.Verdict]:
        spec = w.compiled.spec
        if not spec.frequency_caps:
            return []
        if w.req.category == messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL:
            return [_v(D.VERDICT_KIND_FREQUENCY_CAP, c.id, D.VERDICT_OUTCOME_SKIP, "transactional messages are not capped") for c in spec.frequency_caps]
        assert w.outcome is not None
        if not w.outcome.allowed:
            return [_v(D.VERDICT_KIND_FREQUENCY_CAP, c.id, D.VERDICT_OUTCOME_SKIP, "not counted: the message is already denied") for c in spec.frequency_caps]
        if w.ledger_error:
            return [_v(D.VERDICT_KIND_SYSTEM, "cap-ledger", D.VERDICT_OUTCOME_ERROR, "the frequency-cap store could not be reached; failing closed")]
        applied = {wnd.cap.id: wnd for wnd in w.windows}
        counters = {c.cap_id: c for c in (w.ledger.counters if w.ledger else ())}
        preempting = bool(w.ledger and w.ledger.preempted)
        verdicts = []
        for cap in spec.frequency_caps:
            window = applied.get(cap.id)
            if window is None:
                verdicts.append(_v(D.VERDICT_KIND_FREQUENCY_CAP, cap.id, D.VERDICT_OUTCOME_SKIP, "does not count this message"))
                continue
            counter = counters[cap.id]
            where = f"{counter.count} of {cap.limit} {_window_label(cap)}"
            if counter.count < cap.limit:
                verdicts.append(_v(D.VERDICT_KIND_FREQUENCY_CAP, cap.id, D.VERDICT_OUTCOME_PASS, where))
            elif preempting and w.ledger is not None and w.ledger.allowed:
                verdicts.append(_v(D.VERDICT_KIND_FREQUENCY_CAP, cap.id, D.VERDICT_OUTCOME_PASS,
                                   f"{where}; took the slot of a lower-priority held reservation"))
            else:
                verdicts.append(_v(D.VERDICT_KIND_FREQUENCY_CAP, cap.id, D.VERDICT_OUTCOME_DENY, f"frequency cap {cap.id} reached: {where}"))
        return verdicts

    async def _store(self, tenant: str, work: list[_Work], decisions: list[decision_pb2.Decision]) -> list[decision_pb2.Decision]:
        now = self._clock.now()
        rows = []
        for w, decision in zip(work, decisions, strict=True):
            decision.create_time.FromDatetime(now)
            replay = encode(w.profile, w.message, tuple(decision.cap_counters)) if w.profile is not None and w.message is not None else None
            rows.append(dict(
                tenant=tenant, decision_id=decision.decision_id, rule_set=decision.rule_set, version=decision.version,
                subject_id=decision.subject_id, allowed=decision.allowed, mode=_mode_name(decision.mode),
                reservation_state=_state_name(decision.reservation_state), evaluate_time=decision.evaluate_time.ToDatetime(tzinfo=dt.UTC),
                create_time=now, record=decision.SerializeToString(), replay=replay,
            ))
        new = {d.decision_id for d, fresh in zip(decisions, await self._writer.write(rows, decisions), strict=True) if fresh}
        preempted = [(victim, w.decision_id) for w in work if w.ledger for victim in w.ledger.preempted]
        if preempted:
            async with self._db.begin() as conn:
                for victim, by in preempted:
                    await self._mark(conn, tenant, victim, D.RESERVATION_STATE_PREEMPTED, preempted_by=by)
        lost = [d.decision_id for d in decisions if d.decision_id not in new]
        if lost:  # a concurrent call with the same decision id stored first: its answer stands
            winners = await self._load_many(tenant, lost)
            decisions = [winners.get(d.decision_id, d) for d in decisions]
        return decisions

    def start(self) -> None:
        """Start writing records in the background."""
        self._writer.start()

    async def close(self) -> None:
        """Flush queued records."""
        await self._writer.close()

    async def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        async with self._db.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Decision records are written without waiting for the WAL
                # flush: a PostgreSQL crash may lose the last moments of
                # records (never corrupt them), a rules-service crash loses
                # nothing in the default (durable) mode, and a decision costs
                # no disk sync. See ADR 0007.
                await conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            return await _insert_decisions(conn, rows)

    async def get(self, tenant: str, decision_id: str) -> decision_pb2.Decision:
        """One stored decision."""
        found = await self._load_many(tenant, [decision_id])
        if decision_id not in found:
            raise NotFound(f"decision {decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
        return found[decision_id]

    async def list_for_subject(self, tenant: str, subject_id: str, *, limit: int, before: str | None) -> list[decision_pb2.Decision]:
        """A subject's decisions, newest first, older than the decision *before*."""
        t = decisions_table
        query = sa.select(t.c.record).where((t.c.tenant == tenant) & (t.c.subject_id == subject_id))
        if before:
            query = query.where(t.c.decision_id < before)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.decision_id.desc()).limit(limit))).all()
        return [D.Decision.FromString(r.record) for r in rows]

    async def _load_many(self, tenant: str, decision_ids: Sequence[str]) -> dict[str, decision_pb2.Decision]:
        found: dict[str, decision_pb2.Decision] = {}
        for decision_id in decision_ids:
            queued = self._writer.pending((tenant, decision_id))
            if queued is not None:
                found[decision_id] = queued
        rest = [d for d in decision_ids if d not in found]
        if rest:
            t = decisions_table
            async with self._db.connect() as conn:
                rows = (await conn.execute(sa.select(t.c.record).where((t.c.tenant == tenant) & t.c.decision_id.in_(rest)))).all()
            for row in rows:
                decision = D.Decision.FromString(row.record)
                found[decision.decision_id] = decision
        return found

    async def _mark(
        self, conn: Any, tenant: str, decision_id: str, state: decision_pb2.ReservationState.ValueType, *, preempted_by: str = "",
    ) -> decision_pb2.Decision | None:
        t = decisions_table
        key = (t.c.tenant == tenant) & (t.c.decision_id == decision_id)
        query = sa.select(t.c.record).where(key)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        queued = self._writer.pending((tenant, decision_id)) if row is None else None
        if row is None and queued is None:
            return None
        decision = D.Decision.FromString(row.record) if row is not None else D.Decision.FromString(queued.SerializeToString())  # type: ignore[union-attr]
        decision.reservation_state = state
        if preempted_by:
            decision.preempted_by = preempted_by
        if row is None and self._writer.amend((tenant, decision_id), decision, record=decision.SerializeToString(),
                                              reservation_state=_state_name(state)):
            return decision
        await conn.execute(t.update().where(key).values(reservation_state=_state_name(state), record=decision.SerializeToString()))
        return decision

    async def _settle(
        self, tenant: str, decision_id: str, mode: decision_pb2.EvaluationMode.ValueType, now: dt.datetime,
    ) -> decision_pb2.Decision:
        decision = await self.get(tenant, decision_id)
        if decision.mode != D.EVALUATION_MODE_RESERVE:
            raise InvalidArgument(
                f"decision {decision_id!r} was made in {D.EvaluationMode.Name(decision.mode)} mode; only RESERVE decisions can be settled",
                violations=[FieldViolation("decision_id", "not a RESERVE decision", "NOT_RESERVED")],
            )
        if decision.reservation_state != D.RESERVATION_STATE_HELD and not (
            mode == D.EVALUATION_MODE_RELEASE and decision.reservation_state == D.RESERVATION_STATE_COMMITTED
        ):
            return decision  # denied, deferred, or already settled: nothing (more) to do
        commit = mode == D.EVALUATION_MODE_COMMIT
        by = ""
        if decision.cap_counters:
            try:
                state, by = await self._ledger.settle(tenant, decision.subject_id, decision_id, commit=commit, now=now)
            except RedisError as error:
                raise Unavailable("the frequency-cap store could not be reached; retry", reason="CAP_LEDGER_UNAVAILABLE",
                                  retry_after=dt.timedelta(seconds=1)) from error
            if state == D.RESERVATION_STATE_UNSPECIFIED:
                state = D.RESERVATION_STATE_EXPIRED  # pruned: it expired long ago
        else:  # no cap counted this message: nothing is held in the ledger
            state = D.RESERVATION_STATE_COMMITTED if commit else D.RESERVATION_STATE_RELEASED
        async with self._db.begin() as conn:
            marked = await self._mark(conn, tenant, decision_id, state, preempted_by=by)
        return marked or decision


@dataclass
class _Work:
    """One request being decided in a batch."""

    index: int
    req: rules_service_pb2.EvaluateRequest
    compiled: CompiledRuleSet
    version: rule_set_pb2.RuleSetVersion
    decision_id: str
    message: EvaluationInput | None = None
    profile: ProfileView | None = None
    outcome: DecisionOutcome | None = None
    windows: list[CapWindow] = field(default_factory=list)
    ledger: LedgerResult | None = None
    ledger_error: bool = False


_UNNEST = sa.text("""
    INSERT INTO rules_decisions (tenant, decision_id, rule_set, version, subject_id, allowed, mode, reservation_state,
                                 evaluate_time, create_time, record, replay)
    SELECT * FROM unnest(CAST(:tenant AS text[]), CAST(:decision_id AS text[]), CAST(:rule_set AS text[]), CAST(:version AS bigint[]),
                         CAST(:subject_id AS text[]), CAST(:allowed AS boolean[]), CAST(:mode AS text[]), CAST(:reservation_state AS text[]),
                         CAST(:evaluate_time AS timestamptz[]), CAST(:create_time AS timestamptz[]), CAST(:record AS bytea[]),
                         CAST(:replay AS jsonb[]))
    ON CONFLICT (tenant, decision_id) DO NOTHING
    RETURNING tenant, decision_id
""")


async def _insert_decisions(conn: Any, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert decision rows, skipping ids that exist; return the (tenant, id) inserted.

    On PostgreSQL the whole batch is one statement over arrays (``unnest``):
    one round trip, whatever the batch size."""
    if conn.dialect.name == "postgresql":
        columns = {name: [row[name] for row in rows] for name in rows[0]}
        columns["replay"] = [json.dumps(v) if v is not None else None for v in columns["replay"]]
        return {(r.tenant, r.decision_id) for r in await conn.execute(_UNNEST, columns)}
    result = await conn.execute(insert_ignore(conn, decisions_table, index_elements=["tenant", "decision_id"]).returning(
        decisions_table.c.tenant, decisions_table.c.decision_id), rows)
    return {(r.tenant, r.decision_id) for r in result}


def _v(kind: decision_pb2.VerdictKind.ValueType, id_: str, outcome: decision_pb2.VerdictOutcome.ValueType, reason: str) -> decision_pb2.Verdict:
    return D.Verdict(kind=kind, id=id_, outcome=outcome, reason=reason)


def _window_label(cap: rule_set_pb2.FrequencyCap) -> str:
    kind = cap.window.kind
    if kind == rule_set_pb2.CAP_WINDOW_KIND_CALENDAR_DAY:
        return "this calendar day"
    if kind == rule_set_pb2.CAP_WINDOW_KIND_CALENDAR_WEEK:
        return "this calendar week"
    return f"in the last {cap.window.duration.ToTimedelta()}"


def _mode_name(mode: decision_pb2.EvaluationMode.ValueType) -> str:
    return D.EvaluationMode.Name(mode).removeprefix("EVALUATION_MODE_").lower()


def _state_name(state: decision_pb2.ReservationState.ValueType) -> str:
    return D.ReservationState.Name(state).removeprefix("RESERVATION_STATE_").lower()
