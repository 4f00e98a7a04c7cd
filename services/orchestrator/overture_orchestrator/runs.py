"""Runs, their tokens and their step attempts, in the database.

A run is a small row (its state and where it is), its immutable inputs (the
trigger event, an Enqueue's spec), one token per live branch, and the
appended attempts of its steps. Work is claimed, not leased per run: a
worker takes a batch of due tokens with ``FOR UPDATE SKIP LOCKED`` and
pushes their due time past a lease, so a token whose worker died comes due
again by itself, and replicas never execute the same token at once. A
worker records a batch's outcomes in one transaction, and only for the
tokens it still holds. Operators' changes to runs (cancel, retry) write
their audit record in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, any_of, tenant_keys
from overture_runtime.errors import NotFound
from overture_runtime.protojson import struct_from_dict

from .audit_outbox import SYSTEM_ACTOR, stage
from .contexts import steps_of
from .deadletters import DeadLetters
from .model import LIVE, RunState, StepState, TokenState
from .recording import Recorder, read_context
from .run_starts import insert_runs
from .simple_records import is_simple, record_simple
from .stats import Counts, add_counts, waiting_left
from .tables import run_inputs, runs, step_attempts, tokens, waits
from .work import Attempt, Effects, NewRun, Outcome, Work

__all__ = ["Attempt", "Effects", "JourneyTarget", "NewRun", "Outcome", "RetryRefusal", "RunStore", "Work"]

LEASE = dt.timedelta(seconds=30)
"""How long a claimed token is a worker's; past it, the token is due again."""
_LIVE = tuple(s.value for s in LIVE)


@dataclass(frozen=True)
class JourneyTarget:
    """The journey version a retried run moves to."""

    version: int
    """The version number."""
    steps: frozenset[str]
    """The ids of its steps."""


@dataclass(frozen=True)
class RetryRefusal:
    """Why a run was not sent back to its failed step."""

    reason: str
    """UPPER_SNAKE: RUN_NOT_FAILED, STEP_NOT_IN_VERSION, NO_JOURNEY, RUN_NOT_FOUND."""
    description: str
    """For a human."""


class RunStore:
    """Runs of all tenants."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, owner: str, dead_letters: DeadLetters) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.owner = owner
        self.dead_letters = dead_letters

    # -- starting ------------------------------------------------------------

    async def start(self, batch: Sequence[NewRun], *, lease_owner: str | None = None, skipped: tuple[str, Counts] | None = None,
                    ) -> list[tuple[str, Work | None]]:
        """Start the runs of *batch* that their trigger has not started yet,
        atomically. Returns (run id, work) per item, in order: *work* is the
        new run's first token, None for an item whose trigger already made a
        run (the id is that run's). With *lease_owner* the new tokens are
        already claimed by it (its worker executes them at once); without,
        they are due now for any worker to claim. Each journey's ``entered``
        counters, and *skipped* (a tenant's skipped entries), are added with
        the runs, in one statement on PostgreSQL (:func:`.run_starts.insert_runs`)."""
        if not batch:
            if skipped:
                async with self._db.begin() as conn:
                    await add_counts(conn, *skipped)
            return []
        now = self._clock.now()
        ids = [self._ids.new() for _ in batch]
        due = now + LEASE if lease_owner is not None else now
        inserted = await insert_runs(self._db, batch, ids, now=now, due=due, lease_owner=lease_owner, skipped=skipped)
        existing: dict[tuple[str, str, str, str], str] = {}
        others = [r for r, i in zip(batch, ids, strict=True) if i not in inserted]
        if others:  # an event delivered again: the runs it made
            key = (runs.c.tenant, runs.c.journey, runs.c.subject_id, runs.c.trigger_event_id)
            async with self._db.connect() as conn:
                rows = await conn.execute(sa.select(runs.c.run_id, *key).where(tenant_keys(
                    conn, runs.c.tenant, runs.c.trigger_event_id, [(r.tenant, r.event.event_id) for r in others])))
            existing = {(row.tenant, row.journey, row.subject_id, row.trigger_event_id): row.run_id for row in rows}
        return [(i, _first_token(r, i, now)) if i in inserted else (existing.get((r.tenant, r.journey, r.subject_id, r.event.event_id), ""), None)
                for r, i in zip(batch, ids, strict=True)]

    async def unfinished(self, tenant: str, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (journey, subject) pairs have a run that has not ended."""
        wanted = list(set(pairs))
        if not wanted:
            return set()
        async with self._db.connect() as conn:
            # journey = ANY and subject = ANY: both are index conditions of
            # the once-key; a row-value IN list would read the tenant's every run.
            rows = await conn.execute(sa.select(runs.c.journey, runs.c.subject_id).where(
                (runs.c.tenant == tenant) & any_of(conn, runs.c.journey, {j for j, _ in wanted}) & any_of(conn, runs.c.subject_id, {s for _, s in wanted})
                & runs.c.state.in_(_LIVE)))
            return {(r.journey, r.subject_id) for r in rows} & set(wanted)

    # -- working -------------------------------------------------------------

    async def claim(self, *, owner: str, limit: int) -> list[Work]:
        """Take up to *limit* due tokens for *owner* (one claim's unique name)."""
        now = self._clock.now()
        t = tokens
        due = (sa.select(t.c.tenant, t.c.run_id, t.c.token).where(t.c.due_time <= now).order_by(t.c.due_time).limit(limit)
               .with_for_update(skip_locked=True))
        # The claim is one statement (atomic on its own); once it has leased
        # the tokens, reading their runs needs no transaction: the lease
        # keeps other workers off, and recording checks it.
        async with self._db.connect() as conn:
            claimed = (await conn.execute(t.update().where(sa.tuple_(t.c.tenant, t.c.run_id, t.c.token).in_(due))
                                          .values(lease_owner=owner, due_time=now + LEASE)
                                          .returning(t.c.tenant, t.c.run_id, t.c.token, t.c.node, t.c.state, t.c.attempts,
                                                     t.c.evaluations, t.c.deadline, t.c.node_since))).all()
            await conn.commit()  # SQLite keeps a transaction open: end it, so the claim holds
            if not claimed:
                return []
            keys = [(c.tenant, c.run_id) for c in claimed]
            rows = {(r.tenant, r.run_id): r for r in (await conn.execute(
                sa.select(runs.c.tenant, runs.c.run_id, runs.c.journey, runs.c.journey_version, runs.c.subject_id, runs.c.state,
                          runs.c.holdout, runs.c.actions, runs.c.arms, run_inputs.c.trigger_event, run_inputs.c.inline_spec)
                .join(run_inputs, (run_inputs.c.tenant == runs.c.tenant) & (run_inputs.c.run_id == runs.c.run_id))
                .where(tenant_keys(conn, runs.c.tenant, runs.c.run_id, keys)))).all()}
            contexts = await read_context(conn, keys)
        work = []
        for c in claimed:
            row = rows.get((c.tenant, c.run_id))
            if row is None:
                continue
            work.append(Work(
                tenant=c.tenant, run_id=c.run_id, token=c.token, journey=row.journey, journey_version=row.journey_version,
                subject_id=row.subject_id, trigger_event=event_pb2.Event.FromString(row.trigger_event), inline_spec=row.inline_spec,
                node=c.node, state=TokenState(c.state), attempts=c.attempts, evaluations=c.evaluations, deadline=c.deadline,
                node_since=c.node_since, holdout=row.holdout, actions=row.actions, arms=tuple(row.arms or ()),
                context=dict(contexts.get((c.tenant, c.run_id), {}))))
        return work

    async def record(self, *, owner: str, outcomes: Sequence[Outcome]) -> int:
        """Record a claim's outcomes in one transaction (see :mod:`.recording`;
        a batch of simple outcomes in one statement, :mod:`.simple_records`);
        only for the tokens *owner* still holds. Returns how many were recorded."""
        if not outcomes:
            return 0
        if not self._db.is_sqlite and all(is_simple(o) for o in outcomes):
            return await record_simple(self._db, self._ids, owner=owner, outcomes=outcomes, now=self._clock.now())
        return await Recorder(self._db, self._clock, self._ids, self.dead_letters).record(owner=owner, outcomes=outcomes)

    # -- operators -----------------------------------------------------------

    async def cancel(self, tenant: str, run_id: str, *, actor: str = SYSTEM_ACTOR, reason: str = "") -> bool:
        """Cancel a run that has not ended, audited; return whether it was cancelled."""
        now = self._clock.now()
        key = (runs.c.tenant == tenant) & (runs.c.run_id == run_id)
        async with self._db.begin() as conn:
            row = (await conn.execute(sa.select(runs.c.journey, runs.c.journey_version, runs.c.current_step).where(
                key & runs.c.state.in_(_LIVE)).with_for_update())).first()
            if row is None:
                return False
            await conn.execute(runs.update().where(key).values(state=RunState.CANCELLED.value, current_step="", update_time=now,
                                                              cancel_reason=reason))
            left = (await conn.execute(tokens.delete().where((tokens.c.tenant == tenant) & (tokens.c.run_id == run_id))
                                       .returning(tokens.c.node, tokens.c.state))).all()
            await conn.execute(waits.delete().where((waits.c.tenant == tenant) & (waits.c.run_id == run_id)))
            ident = (row.journey, row.journey_version)
            await add_counts(conn, tenant, Counter({(*ident, "", "cancelled"): 1}) + waiting_left(ident, left))
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_RUN_CANCELLED, actor=actor,
                        time=now, reason=reason, target=f"run/{run_id}",
                        details={"journey": row.journey, "journey_version": row.journey_version, "step_id": row.current_step})
        return True

    async def cancel_journey(self, tenant: str, journey: str, *, reason: str = "", conn: AsyncConnection | None = None) -> int:
        """Cancel the journey's live runs (it was paused or archived) with
        *reason*, kept on each run: their timers and waits are deleted, so
        they never fire, and each is counted cancelled as :meth:`cancel`
        counts it. In *conn*'s transaction when given. Returns how many."""
        if conn is None:
            async with self._db.begin() as own:
                return await self.cancel_journey(tenant, journey, reason=reason, conn=own)
        now = self._clock.now()
        live = sa.select(runs.c.run_id).where((runs.c.tenant == tenant) & (runs.c.journey == journey) & runs.c.state.in_(_LIVE))
        left = (await conn.execute(tokens.delete().where((tokens.c.tenant == tenant) & tokens.c.run_id.in_(live))
                                   .returning(tokens.c.run_id, tokens.c.node, tokens.c.state))).all()
        await conn.execute(waits.delete().where((waits.c.tenant == tenant) & waits.c.run_id.in_(live)))
        cancelled = {r.run_id: int(r.journey_version) for r in (await conn.execute(runs.update().where(
            (runs.c.tenant == tenant) & (runs.c.journey == journey) & runs.c.state.in_(_LIVE)
        ).values(state=RunState.CANCELLED.value, current_step="", update_time=now, cancel_reason=reason)
            .returning(runs.c.run_id, runs.c.journey_version))).all()}
        counts = Counter((journey, version, "", "cancelled") for version in cancelled.values())
        for version in set(cancelled.values()):
            counts += waiting_left((journey, version), [t for t in left if cancelled.get(t.run_id) == version])
        await add_counts(conn, tenant, counts)
        return len(cancelled)

    async def retry(
        self, tenant: str, run_id: str, *, actor: str = SYSTEM_ACTOR, reason: str = "", via: str = "RetryRun",
        move_to: JourneyTarget | None = None,
    ) -> RetryRefusal | None:
        """Send a failed run back to the step that failed, with fresh attempts,
        on its own journey version or, with *move_to*, on that version, which
        must have a step with the failed step's id. It is due at once; its
        dead-letter entry is removed and the retry audited, in one
        transaction. Returns None, or why the run was left as it was."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            key = (runs.c.tenant == tenant) & (runs.c.run_id == run_id)
            run = (await conn.execute(sa.select(runs.c.journey, runs.c.journey_version, runs.c.current_step).where(
                key & (runs.c.state == RunState.FAILED.value)).with_for_update())).first()
            if run is None or not run.current_step:
                return RetryRefusal("RUN_NOT_FAILED", f"run {run_id!r} has not failed; only failed runs can be retried")
            if move_to is not None and run.current_step not in move_to.steps:
                return RetryRefusal("STEP_NOT_IN_VERSION", f"run {run_id!r} failed at step {run.current_step!r}, which version "
                                    f"{move_to.version} of journey {run.journey!r} does not have; it stays in the dead-letter queue")
            version = move_to.version if move_to is not None else run.journey_version
            last = (await conn.execute(sa.select(sa.func.count()).where(
                (step_attempts.c.tenant == tenant) & (step_attempts.c.run_id == run_id)
                & (step_attempts.c.step_id == run.current_step)))).scalar_one()
            # A retried send decides again, under a new decision id: the
            # evaluations counter moves past every decision made so far.
            await conn.execute(tokens.insert().values(
                tenant=tenant, run_id=run_id, token=0, node=run.current_step, state=TokenState.READY.value, due_time=now, attempts=0,
                evaluations=int(last) + 1, lease_owner=None, node_since=now))
            await conn.execute(runs.update().where(key).values(state=RunState.RUNNING.value, journey_version=version, update_time=now))
            await self.dead_letters.remove_run(conn, tenant, run_id)
            await add_counts(conn, tenant, Counter({(run.journey, run.journey_version, "", "retried"): 1}))
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_RUN_RETRIED, actor=actor,
                        time=now, reason=reason, target=f"run/{run_id}",
                        details={"journey": run.journey, "step_id": run.current_step, "from_version": run.journey_version,
                                 "to_version": version, "via": via})
        return None

    async def note_delivery(self, tenant: str, run_id: str, step_id: str, outcome: str, *, delivery_id: str = "") -> bool:
        """Record what a send step's delivery became, on the attempt that made
        *delivery_id* (a step a loop brings back has one per time), else on
        its last attempt. False, noting nothing, when the step has
        deliveries and *delivery_id* is none of them."""
        a = step_attempts
        async with self._db.begin() as conn:
            rows = (await conn.execute(sa.select(a.c.attempt_id, a.c.delivery_id).where(
                (a.c.tenant == tenant) & (a.c.run_id == run_id) & (a.c.step_id == step_id)).order_by(a.c.attempt_id))).all()
            made = [r.attempt_id for r in rows if delivery_id and r.delivery_id == delivery_id]
            if delivery_id and not made and any(r.delivery_id for r in rows):
                return False
            target = made[-1] if made else rows[-1].attempt_id if rows else None
            if target is not None:
                await conn.execute(a.update().where((a.c.tenant == tenant) & (a.c.run_id == run_id) & (a.c.attempt_id == target))
                                   .values(outcome=outcome[:1000]))
        return True

    # -- reading -------------------------------------------------------------

    async def trigger_event(self, tenant: str, event_id: str) -> event_pb2.Event | None:
        """The event that started a run, from any run it started."""
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(run_inputs.c.trigger_event).join(
                runs, (runs.c.tenant == run_inputs.c.tenant) & (runs.c.run_id == run_inputs.c.run_id)
            ).where((runs.c.tenant == tenant) & (runs.c.trigger_event_id == event_id)).limit(1))).first()
        return event_pb2.Event.FromString(row.trigger_event) if row else None

    async def get(self, tenant: str, run_id: str) -> run_pb2.Run:
        """One run with its steps."""
        found = await self._read(tenant, sa.select(runs).where((runs.c.tenant == tenant) & (runs.c.run_id == run_id)))
        if not found:
            raise NotFound(f"run {run_id!r} does not exist", reason="RUN_NOT_FOUND")
        return found[0]

    async def list_runs(
        self, *, tenant: str, journey: str = "", subject_id: str = "", trigger_event_id: str = "", limit: int, before: str | None,
        state: str = "", start: dt.datetime | None = None, end: dt.datetime | None = None,
    ) -> list[run_pb2.Run]:
        """Runs newest first, filtered (*start* inclusive, *end* exclusive, by when they started)."""
        query = sa.select(runs).where(runs.c.tenant == tenant)
        if start is not None:
            query = query.where(runs.c.create_time >= start)
        if end is not None:
            query = query.where(runs.c.create_time < end)
        if state:
            query = query.where(runs.c.state == state)
        if journey:
            query = query.where(runs.c.journey == journey)
        if subject_id:
            query = query.where(runs.c.subject_id == subject_id)
        if trigger_event_id:
            query = query.where(runs.c.trigger_event_id == trigger_event_id)
        if before:
            query = query.where(runs.c.run_id < before)
        return await self._read(tenant, query.order_by(runs.c.run_id.desc()).limit(limit))

    async def _read(self, tenant: str, query: Any) -> list[run_pb2.Run]:
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
            ids = [r.run_id for r in rows]
            attempts = (await conn.execute(sa.select(step_attempts).where(
                (step_attempts.c.tenant == tenant) & step_attempts.c.run_id.in_(ids)).order_by(step_attempts.c.attempt_id))).all() if ids else []
            waiting: dict[str, list[Any]] = {}
            for t in ((await conn.execute(sa.select(tokens.c.run_id, tokens.c.node, tokens.c.due_time, tokens.c.state).where(
                    (tokens.c.tenant == tenant) & tokens.c.run_id.in_(ids)).order_by(tokens.c.token))).all() if ids else []):
                waiting.setdefault(t.run_id, []).append(t)
            contexts = await read_context(conn, [(tenant, i) for i in ids]) if ids else {}
        by_run: dict[str, list[Any]] = {}
        for a in attempts:
            by_run.setdefault(a.run_id, []).append(a)
        return [_run_proto(r, by_run.get(r.run_id, []), waiting.get(r.run_id, []), contexts.get((tenant, r.run_id), {})) for r in rows]


def _first_token(run: NewRun, run_id: str, now: dt.datetime) -> Work:
    return Work(tenant=run.tenant, run_id=run_id, token=0, journey=run.journey, journey_version=run.version, subject_id=run.subject_id,
                trigger_event=run.event, inline_spec=run.inline_spec, node=run.first_step, state=TokenState.READY, attempts=0,
                evaluations=0, node_since=now)


def _run_proto(row: Any, attempts: list[Any], live: list[Any], context: dict[str, Any]) -> run_pb2.Run:
    run = run_pb2.Run(
        run_id=row.run_id, journey=row.journey, journey_version=row.journey_version, subject_id=row.subject_id,
        trigger_event_id=row.trigger_event_id, state=RunState(row.state).proto, current_step=row.current_step,
        converted=row.converted, goal=row.goal, arms=list(row.arms or ()), holdout=row.holdout, cancel_reason=row.cancel_reason,
        waiting_steps=[t.node for t in live if t.state != TokenState.READY.value],
    )
    shown = {k: v for k, v in context.items() if not k.startswith("visits:")}
    if shown:
        run.context.CopyFrom(struct_from_dict(steps_of(shown)))
    run.create_time.FromDatetime(row.create_time)
    run.update_time.FromDatetime(row.update_time)
    steps: dict[str, run_pb2.StepRun] = {}
    for a in attempts:  # a step shows its last attempt, and how many there were
        step = steps.get(a.step_id)
        if step is None:
            step = steps[a.step_id] = run.steps.add(step_id=a.step_id)
            step.start_time.FromDatetime(a.start_time)
        step.attempts += 1
        step.state = StepState(a.state).proto
        step.outcome, step.error = a.outcome, a.error
        step.edge = a.edge or ""
        if a.decision_id:
            step.decision_id = a.decision_id
        if a.delivery_id:
            step.delivery_id = a.delivery_id
        if a.detail:
            if a.detail.get("input"):
                step.input.CopyFrom(struct_from_dict(a.detail["input"]))
            if a.detail.get("output"):
                step.output.CopyFrom(struct_from_dict(a.detail["output"]))
        step.ClearField("end_time")
        if a.end_time:
            step.end_time.FromDatetime(a.end_time)
        step.ClearField("wake_time")
        if a.wake_time:
            step.wake_time.FromDatetime(a.wake_time)
    for token in live:
        if token.node in steps and token.state in (TokenState.WAITING.value, TokenState.RETRY.value) and token.due_time.year < 9999:
            steps[token.node].wake_time.FromDatetime(token.due_time)
    return run
