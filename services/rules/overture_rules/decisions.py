"""Making decisions: Evaluate's domain logic, from request to stored record.

Every decision, in every mode, is stored with its inputs (personal data
masked), the profile fields it read, every verdict, the cap counters, and
the version and digest that decided. A store that cannot be read fails
closed.

A decision normally costs one Redis round trip and no PostgreSQL read: it is
made on the profile view this process keeps (:class:`~.profile_cache.LocalViews`),
and ``decide.lua`` confirms that view's generation and checks or reserves the
cap slots in the same atomic call. A view that is missing or stale comes back
from that call (or from the database), and the decision is made again on it.
Batches are decided together: one pipeline per round, one insert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf import timestamp_pb2
from redis.exceptions import RedisError

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2, rules_service_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FieldViolation, NotFound, OvertureError, Violations
from overture_runtime.protojson import struct_to_dict
from overture_runtime.validation import check_identifier, check_name, check_profile, check_struct

from .caps import CapLedger, CapWindow, LedgerResult
from .compiler import CompiledRuleSet
from .decision_store import DecisionStore, state_name
from .dry_runs import DryRun, decide_dry
from .engine import DecisionOutcome, EvaluationInput, ProfileView
from .profile_cache import LocalEntry, LocalViews, load_view
from .profiles import ProfileStore
from .replay import encode_json, profile_json
from .rule_sets import RuleSetStore
from .scripts import Script, ScriptChannel
from .settlement import Settlement, settle_many
from .verdicts import build_decision, masked_snapshot

__all__ = ["CONTEXT_MAX_BYTES", "PROFILE_MAX_BYTES", "Decider", "validate_evaluate"]

log = structlog.get_logger("overture.rules")
D = decision_pb2
CONTEXT_MAX_BYTES = 16 * 1024
PROFILE_MAX_BYTES = 32 * 1024
"""The most a dry run's profile traits may take, as much as a stored profile's."""
_MAX_TAGS = 32
_ROUNDS = 4
"""Round trips a decision may take to catch up with profile writes before it fails closed."""
_TRANSACTIONAL = messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL
_CHANNELS = frozenset(messaging_pb2.Channel.values())
_CATEGORIES = frozenset(messaging_pb2.MessageCategory.values())
_MODES = frozenset(D.EvaluationMode.values())
_MODE_NAMES = {m: D.EvaluationMode.Name(m).removeprefix("EVALUATION_MODE_").lower() for m in _MODES}
_GENERATION_TTL_MS = 3_600_000
_SETTLING = frozenset((D.EVALUATION_MODE_COMMIT, D.EVALUATION_MODE_RELEASE))
_LEDGER_OPS = {D.EVALUATION_MODE_RESERVE: "reserve", D.EVALUATION_MODE_RESERVE_AND_COMMIT: "commit"}
"""The ledger operation of each reserving mode (any other mode only checks)."""


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
        elif req.channel not in _CHANNELS:
            v.add("channel", f"unknown channel {req.channel}", "INVALID_ENUM")
        if req.category not in _CATEGORIES:
            v.add("category", f"unknown category {req.category}", "INVALID_ENUM")
        check_identifier(v, "decision_id", req.decision_id, required=False)
    if mode not in _MODES:
        v.add("mode", f"unknown mode {req.mode}", "INVALID_ENUM")
    if not 0 <= req.priority <= 100:
        v.add("priority", "priority must be between 0 and 100", "OUT_OF_RANGE")
    if len(req.tags) > _MAX_TAGS:
        v.add("tags", f"at most {_MAX_TAGS} tags", "TOO_MANY")
    for i, tag in enumerate(req.tags):
        check_name(v, f"tags[{i}]", tag)
    if req.context.fields:
        check_struct(v, "context", req.context, max_bytes=CONTEXT_MAX_BYTES)
    if req.dry_run:
        if mode != D.EVALUATION_MODE_CHECK:
            v.add("dry_run", "a dry run only checks: use mode CHECK", "DRY_RUN_NEEDS_CHECK")
        if req.decision_id:
            v.add("decision_id", "a dry run stores no decision, so it takes no decision_id", "DRY_RUN_HAS_NO_ID")
        if req.HasField("profile"):
            check_profile(v, "profile", req.profile, subject_id=req.subject_id, max_bytes=PROFILE_MAX_BYTES)
    elif req.HasField("profile"):
        v.add("profile", "a profile may only be given with dry_run", "PROFILE_NEEDS_DRY_RUN")
    return v.items


class Decider:
    """Evaluates requests, reserves and settles cap slots, keeps the records."""

    def __init__(
        self, db: Database, rule_sets: RuleSetStore, profiles: ProfileStore, ledger: CapLedger, clock: Clock, ids: IdGenerator,
        *, durable_writes: bool = True, redis_timeout: float = 1.0,
    ) -> None:
        self._records = DecisionStore(db, durable=durable_writes)
        self._channel = ScriptChannel(ledger.redis, timeout=redis_timeout)
        self._db = db
        self._rule_sets = rule_sets
        self._profiles = profiles
        self._ledger = ledger
        self._clock = clock
        self._ids = ids
        cache = profiles.cache
        self._local = profiles.local or LocalViews(ledger.keys)
        self._generation_ttl_ms = cache.generation_ttl_ms if cache is not None else _GENERATION_TTL_MS

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
        settling: list[int] = []
        for i, req in enumerate(requests):
            (settling if req.mode in _SETTLING else pending).append(i)
        if settling:
            now = self._clock.now()
            settled = await settle_many(self._db, self._records, self._ledger, self._channel, tenant=tenant, items=[
                Settlement(requests[i].decision_id, requests[i].mode, requests[i].now.ToDatetime(tzinfo=dt.UTC)
                           if requests[i].HasField("now") else now) for i in settling])
            for i, result in zip(settling, settled, strict=True):
                results[i] = result
        given = [requests[i].decision_id for i in pending if requests[i].decision_id]
        existing = await self._records.load_many(tenant, given) if given else {}
        work: list[_Work] = []
        dry: list[tuple[int, DryRun]] = []
        versions: dict[tuple[str, int], tuple[CompiledRuleSet, rule_set_pb2.RuleSetVersion] | OvertureError] = {}
        for i in pending:
            req = requests[i]
            if req.decision_id in existing:
                results[i] = existing[req.decision_id]  # idempotent on decision_id
                continue
            key = (req.rule_set, req.version)
            found = versions.get(key)
            if found is None:
                try:
                    found = versions[key] = await self._rule_sets.compiled(tenant=tenant, name=req.rule_set, version=req.version)
                except OvertureError as error:
                    found = versions[key] = error
            if isinstance(found, OvertureError):
                results[i] = found
                continue
            if req.dry_run:
                dry.append((i, DryRun(req, found[0], found[1])))
                continue
            work.append(_Work(i, req, found[0], found[1], req.decision_id or self._ids.new()))
        if dry:
            decided = await decide_dry([d for _, d in dry], tenant=tenant, now=self._clock.now(), profiles=self._profiles,
                                       ledger=self._ledger, channel=self._channel)
            for (i, _), decision in zip(dry, decided, strict=True):
                results[i] = decision
        if work:
            for item, decision in zip(work, await self._decide(tenant, work), strict=True):
                results[item.index] = decision
        return [r for r in results if r is not None]

    async def _decide(self, tenant: str, work: list[_Work]) -> list[decision_pb2.Decision]:
        now = self._clock.now()
        for w in work:
            req = w.req
            w.message = EvaluationInput(
                channel=req.channel, category=req.category, now=req.now.ToDatetime(tzinfo=dt.UTC) if req.HasField("now") else now,
                tags=tuple(req.tags), priority=req.priority, context=struct_to_dict(req.context) if req.context.fields else {},
            )
            w.entry = self._local.entry(tenant, req.subject_id)
        try:
            await self._confirm(tenant, work)
        except RedisError as error:
            log.warning("rules.redis_unavailable", error=type(error).__name__)
            await self._without_redis(tenant, [w for w in work if not w.done])
        decisions = [self._record(w) for w in work]
        return await self._store(tenant, work, decisions)

    def _prepare(self, w: _Work) -> None:
        """Decide on the entry's view (if any) and plan the ledger call that confirms it."""
        assert w.message is not None and w.entry is not None
        w.profile, w.outcome, w.windows, w.args = w.entry.view, None, [], None
        if w.profile is None:
            return
        plan = w.compiled.plan
        w.outcome = plan.decide(w.profile, w.message, w.entry.memo)
        if not w.outcome.allowed or w.req.category == _TRANSACTIONAL or not w.compiled.spec.frequency_caps:
            return
        w.windows = plan.caps.plan(channel=w.req.channel, tags=w.req.tags, now=w.message.now, zone=plan.zone(w.profile, w.entry.memo))
        if w.windows:
            op = _LEDGER_OPS.get(w.req.mode, "check") if w.outcome.defer_until is None else "check"
            w.args = self._ledger.args(op, decision_id=w.decision_id, priority=w.req.priority,
                                       channel=w.req.channel, tags=w.req.tags, windows=w.windows, now=w.message.now)

    async def _confirm(self, tenant: str, work: list[_Work]) -> None:
        """Decide every item on a view Redis confirms as current, checking or
        reserving its cap slots in the same call; fetch missing or stale views
        and decide those again, for up to ``_ROUNDS`` round trips."""
        pending = work
        fills: list[tuple[Script, tuple[Any, ...]]] = []
        for _ in range(_ROUNDS):
            for w in pending:
                self._prepare(w)
            commands = fills + [self._ledger.decide_command(w.entry.keys, generation=w.entry.generation if w.profile is not None else "",  # type: ignore[union-attr]
                                                            generation_ttl_ms=self._generation_ttl_ms, args=w.args) for w in pending]
            replies = (await self._channel.run(commands))[len(fills):]
            stale: list[tuple[_Work, str, bytes | None]] = []
            for w, reply in zip(pending, replies, strict=True):
                if reply[0] == b"ok":
                    w.done = True
                    if w.args is not None:
                        w.ledger = self._ledger.parse(reply[2], w.windows)
                else:
                    stale.append((w, _text(reply[1]), reply[2]))
            if not stale:
                return
            fills = await self._refresh(tenant, stale)
            pending = [w for w, _, _ in stale if not w.done]
            if not pending:
                await self._channel.run(fills)
                return
        log.warning("rules.profile_changing", subjects=len(pending))  # it kept changing under the decision: fail closed
        for w in pending:
            w.profile, w.outcome, w.windows, w.args, w.done = None, None, [], None, True

    async def _refresh(self, tenant: str, stale: list[tuple[_Work, str, bytes | None]]) -> list[tuple[Script, tuple[Any, ...]]]:
        """Bring stale entries up to the generation Redis named: from the
        cached view when it is of that generation, else from the database
        (returning the commands that cache what was read). Items whose
        profile cannot be read are done, with no outcome (fail closed)."""
        from_db: dict[str, list[tuple[_Work, str]]] = {}
        for w, generation, raw in stale:
            entry = w.entry
            assert entry is not None
            if entry.generation == generation and entry.view is not None:
                continue  # an earlier item of this batch refreshed it
            if raw is not None:
                view, cached_at = load_view(w.req.subject_id, raw)
                if cached_at == generation:
                    self._local.store(entry, view, generation)
                    continue
            from_db.setdefault(w.req.subject_id, []).append((w, generation))
        if not from_db:
            return []
        try:
            views = await self._profiles.load_views(tenant, list(from_db))
        except Exception as error:  # noqa: BLE001 - any store failure fails closed
            log.warning("rules.profile_store_unavailable", error=type(error).__name__)
            for items in from_db.values():
                for w, _ in items:
                    w.profile, w.outcome, w.windows, w.args, w.done = None, None, [], None, True
            return []
        fills = []
        cache = self._profiles.cache
        for subject_id, items in from_db.items():
            w, generation = items[-1]
            assert w.entry is not None
            self._local.store(w.entry, views[subject_id], generation)
            if cache is not None:
                fills.append(cache.put_command(w.entry.keys, views[subject_id], generation))
        return fills

    async def _without_redis(self, tenant: str, work: list[_Work]) -> None:
        """Redis cannot be reached: decide from PostgreSQL, and fail closed
        on every message that a cap would count."""
        if not work:
            return
        try:
            views: dict[str, ProfileView] | None = await self._profiles.load_views(tenant, list({w.req.subject_id for w in work}))
        except Exception as error:  # noqa: BLE001 - any store failure fails closed
            log.warning("rules.profile_store_unavailable", error=type(error).__name__)
            views = None
        for w in work:
            assert w.message is not None
            w.profile, w.outcome, w.windows, w.args, w.done = None, None, [], None, True
            if views is None:
                continue
            w.profile = views[w.req.subject_id]
            w.outcome = w.compiled.plan.decide(w.profile, w.message)
            if w.outcome.allowed and w.req.category != _TRANSACTIONAL and w.compiled.spec.frequency_caps:
                w.windows = w.compiled.plan.caps.plan(channel=w.req.channel, tags=w.req.tags, now=w.message.now,
                                                      zone=w.compiled.plan.zone(w.profile))
                w.ledger_error = bool(w.windows)

    def _record(self, w: _Work) -> decision_pb2.Decision:
        assert w.message is not None
        snapshot = b""
        if w.outcome is not None:
            memo = w.entry.memo if w.entry is not None and w.profile is w.entry.view and not w.message.context else None
            key = (w.compiled.plan, "snapshot", w.req.channel, w.req.category == _TRANSACTIONAL)
            cached = memo.get(key) if memo is not None else None
            if cached is None:
                cached = masked_snapshot(w.outcome)
                if memo is not None:
                    memo[key] = cached
            snapshot = cached
        return build_decision(decision_id=w.decision_id, req=w.req, version=w.version, plan=w.compiled.plan, message=w.message,
                              outcome=w.outcome, snapshot=snapshot, windows=w.windows, ledger=w.ledger, ledger_error=w.ledger_error)

    def _replay(self, w: _Work, counters: Sequence[decision_pb2.CapCounter]) -> str | None:
        if w.profile is None or w.message is None:
            return None
        memo = w.entry.memo if w.entry is not None and w.profile is w.entry.view else None
        part = memo.get("replay") if memo is not None else None
        if part is None:
            part = profile_json(w.profile)
            if memo is not None:
                memo["replay"] = part
        return encode_json(part, w.message, tuple(counters))

    async def _store(self, tenant: str, work: list[_Work], decisions: list[decision_pb2.Decision]) -> list[decision_pb2.Decision]:
        now = self._clock.now()
        created = timestamp_pb2.Timestamp()
        created.FromDatetime(now)
        rows = []
        for w, decision in zip(work, decisions, strict=True):
            decision.create_time.CopyFrom(created)
            assert w.message is not None
            rows.append(dict(
                tenant=tenant, decision_id=decision.decision_id, rule_set=decision.rule_set, version=decision.version,
                subject_id=decision.subject_id, allowed=decision.allowed, mode=_MODE_NAMES[decision.mode],
                reservation_state=state_name(decision.reservation_state), evaluate_time=w.message.now,
                create_time=now, record=decision.SerializeToString(), replay=self._replay(w, decision.cap_counters),
            ))
        new = {d.decision_id for d, fresh in zip(decisions, await self._records.write(rows, decisions), strict=True) if fresh}
        preempted = [(victim, w.decision_id) for w in work if w.ledger for victim in w.ledger.preempted]
        if preempted:
            async with self._db.begin() as conn:
                await self._records.mark_many(conn, tenant, [(victim, D.RESERVATION_STATE_PREEMPTED, by) for victim, by in preempted])
        lost = [d.decision_id for d in decisions if d.decision_id not in new]
        if lost:  # a concurrent call with the same decision id stored first: its answer stands
            winners = await self._records.load_many(tenant, lost)
            decisions = [winners.get(d.decision_id, d) for d in decisions]
        return decisions

    def start(self) -> None:
        """Start writing records in the background."""
        self._records.start()

    async def close(self) -> None:
        """Flush queued records; close the connections of their own."""
        await self._records.close()
        await self._channel.close()

    async def get(self, tenant: str, decision_id: str) -> decision_pb2.Decision:
        """One stored decision."""
        found = await self._records.load_many(tenant, [decision_id])
        if decision_id not in found:
            raise NotFound(f"decision {decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
        return found[decision_id]

    async def list_for_subject(
        self, tenant: str, subject_id: str, *, limit: int, before: tuple[dt.datetime, str] | None,
    ) -> list[decision_pb2.Decision]:
        """A subject's decisions, newest first, older than *before* (a (create time, decision id) cursor)."""
        return await self._records.list_for_subject(tenant, subject_id, limit=limit, before=before)


@dataclass
class _Work:
    """One request being decided in a batch."""

    index: int
    req: rules_service_pb2.EvaluateRequest
    compiled: CompiledRuleSet
    version: rule_set_pb2.RuleSetVersion
    decision_id: str
    message: EvaluationInput | None = None
    entry: LocalEntry | None = None
    profile: ProfileView | None = None
    outcome: DecisionOutcome | None = None
    windows: list[CapWindow] = field(default_factory=list)
    args: list[Any] | None = None
    ledger: LedgerResult | None = None
    ledger_error: bool = False
    done: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
