"""Recording a claim's outcomes: one transaction per batch, and only for the
tokens the claim still holds (a worker whose lease ran out changes nothing).

In order: the attempts are appended; the tokens move, end, fork (parallel
branches) or wait at a join; waits for events and approvals are registered;
the run context is written; joins whose branches are all in let one token
go on; the runs' rows take their new state and flags; the journeys'
counters are added to; failed runs go to the dead-letter queue. A run with
several tokens ends only with its last one.

On PostgreSQL a batch whose outcomes are all simple (a send, a delay, an
exit; one token per run) is recorded in one statement instead
(:mod:`.simple_records`, which reuses :func:`attempt_rows` and
:func:`count_outcomes`); :meth:`.runs.RunStore.record` chooses.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, any_of, tenant_keys

from .audit_outbox import SYSTEM_ACTOR, stage
from .deadletters import DeadLetters
from .model import LIVE, RunState, StepState, TokenState
from .stats import Counts, add_counts, day_metric, latency_metric, waiting_left
from .tables import approvals, run_context, runs, step_attempts, tokens, waits
from .work import Outcome

__all__ = ["FAR_FUTURE", "Recorder", "attempt_rows", "count_outcomes", "read_context", "write_context"]

FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
"""The due time of a token that only another token can move (at a join)."""


async def read_context(conn: Any, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The context of each (tenant, run id), as ``key -> value``."""
    pairs = list(keys)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if not pairs:
        return found
    c = run_context
    for row in await conn.execute(sa.select(c.c.tenant, c.c.run_id, c.c.key, c.c.value).where(tenant_keys(conn, c.c.tenant, c.c.run_id, pairs))):
        found.setdefault((row.tenant, row.run_id), {})[row.key] = row.value
    return found


async def write_context(conn: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Set context keys (rows of tenant, run_id, key, value), replacing what they held."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(run_context)
    await conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "run_id", "key"], set_={"value": insert.excluded["value"]}),
                       list(rows))


class Recorder:
    """Records claims' outcomes."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, dead_letters: DeadLetters) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._dead_letters = dead_letters

    async def record(self, *, owner: str, outcomes: Sequence[Outcome]) -> int:
        """Record *outcomes* of the claim *owner*; returns how many it still held."""
        now = self._clock.now()
        t = tokens
        async with self._db.begin() as conn:
            pairs = [(o.work.tenant, o.work.run_id) for o in outcomes]
            held = {(r.tenant, r.run_id, r.token) for r in (await conn.execute(
                sa.select(t.c.tenant, t.c.run_id, t.c.token).where(tenant_keys(conn, t.c.tenant, t.c.run_id, pairs) & (t.c.lease_owner == owner))
                .with_for_update())).all()}
            kept = [o for o in outcomes if (o.work.tenant, o.work.run_id, o.work.token) in held]
            if not kept:
                return 0
            await self._attempts(conn, kept)
            await conn.execute(waits.delete().where(tenant_keys(conn, waits.c.tenant, waits.c.run_id, [(o.work.tenant, o.work.run_id) for o in kept])
                                                    & any_of(conn, waits.c.token, {o.work.token for o in kept})))
            gone: dict[str, Counts] = defaultdict(Counter)  # waiting tokens that other tokens' outcomes remove
            await self._tokens(conn, kept, now, gone)
            await self._effects(conn, kept, now)
            states = await self._joins_and_states(conn, kept, now, gone)
            await self._runs(conn, kept, states, now)
            await self._counters(conn, kept, states, gone, now)
            failed = [o for o in kept if states[(o.work.tenant, o.work.run_id)] == RunState.FAILED]
            if failed:
                await self._dead_letters.add_runs(conn, [(o.work.tenant, o.work.run_id, o.work.trigger_event.SerializeToString(),
                                                          o.work.attempts, o.dead_letter) for o in failed])
        return len(kept)

    async def _attempts(self, conn: Any, kept: Sequence[Outcome]) -> None:
        rows = attempt_rows(kept, self._ids)
        if rows:
            await conn.execute(step_attempts.insert(), rows)

    async def _tokens(self, conn: Any, kept: Sequence[Outcome], now: dt.datetime, gone: dict[str, Counts]) -> None:
        t = tokens
        ended = [o for o in kept if o.run_state not in LIVE]
        moving = [o for o in kept if o.run_state in LIVE]
        if ended:
            await conn.execute(t.delete().where(tenant_keys(conn, t.c.tenant, t.c.run_id, [(o.work.tenant, o.work.run_id) for o in ended])
                                                & any_of(conn, t.c.token, {o.work.token for o in ended})))
        if moving:
            await conn.execute(t.update().where(
                (t.c.tenant == sa.bindparam("k_tenant")) & (t.c.run_id == sa.bindparam("k_run")) & (t.c.token == sa.bindparam("k_token"))
            ).values(node=sa.bindparam("v_node"), state=sa.bindparam("v_state"), due_time=sa.bindparam("v_due"),
                     attempts=sa.bindparam("v_attempts"), evaluations=sa.bindparam("v_evaluations"), lease_owner=None,
                     deadline=sa.bindparam("v_deadline"), node_since=sa.bindparam("v_since")), [
                dict(k_tenant=o.work.tenant, k_run=o.work.run_id, k_token=o.work.token, v_node=o.node, v_state=o.token_state.value,
                     v_due=FAR_FUTURE if o.token_state == TokenState.JOINED else (o.due_time or now), v_attempts=o.work.attempts,
                     v_evaluations=o.work.evaluations, v_deadline=o.work.deadline, v_since=o.work.node_since or now)
                for o in moving])
        siblings = [o for o in kept if o.effects is not None and o.effects.cancel_siblings]
        for o in siblings:
            cancelled = (await conn.execute(t.delete().where((t.c.tenant == o.work.tenant) & (t.c.run_id == o.work.run_id)
                                                             & (t.c.token != o.work.token)).returning(t.c.node, t.c.state))).all()
            gone[o.work.tenant].update(waiting_left((o.work.journey, o.work.journey_version), cancelled))
            await conn.execute(waits.delete().where((waits.c.tenant == o.work.tenant) & (waits.c.run_id == o.work.run_id)))
        forking = [o for o in kept if o.effects is not None and o.effects.forks]
        for o in forking:
            assert o.effects is not None
            top = (await conn.execute(sa.select(sa.func.max(t.c.token)).where((t.c.tenant == o.work.tenant) & (t.c.run_id == o.work.run_id)))).scalar()
            first = int(top or 0) + 1
            await conn.execute(t.insert(), [
                dict(tenant=o.work.tenant, run_id=o.work.run_id, token=first + i, node=node, state=TokenState.READY.value, due_time=now,
                     attempts=0, evaluations=0, lease_owner=None, deadline=None, node_since=now)
                for i, node in enumerate(o.effects.forks)])

    async def _effects(self, conn: Any, kept: Sequence[Outcome], now: dt.datetime) -> None:
        new_waits: list[dict[str, Any]] = []
        new_approvals: list[dict[str, Any]] = []
        context: list[dict[str, Any]] = []
        for o in kept:
            e = o.effects
            if e is None:
                continue
            w = o.work
            if e.wait is not None and o.run_state in LIVE:
                new_waits.append(dict(tenant=w.tenant, run_id=w.run_id, token=w.token, subject_id=w.subject_id, event_type=e.wait[0],
                                      step_id=e.wait[1], journey=w.journey, journey_version=w.journey_version))
            if e.approval is not None:
                role, message, expires = e.approval
                new_approvals.append(dict(tenant=w.tenant, run_id=w.run_id, step_id=o.node, token=w.token, journey=w.journey,
                                          journey_version=w.journey_version, subject_id=w.subject_id, approver_role=role,
                                          message=message, request_time=now, expire_time=expires, decision="", decided_by="",
                                          reason="", decide_time=None))
            if e.expired_approval:
                a = approvals
                key = (a.c.tenant == w.tenant) & (a.c.run_id == w.run_id) & (a.c.step_id == e.expired_approval) & (a.c.decision == "")
                expired = await conn.execute(a.update().where(key).values(decision="expired", decided_by=SYSTEM_ACTOR, decide_time=now,
                                                                          reason="no decision before the timeout"))
                if expired.rowcount:
                    await stage(conn, tenant=w.tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_APPROVAL_DECIDED,
                                actor=SYSTEM_ACTOR, time=now, reason="rejected automatically: no decision before the timeout",
                                target=f"run/{w.run_id}", details={"journey": w.journey, "journey_version": w.journey_version,
                                                                   "step_id": e.expired_approval, "decision": "expired"})
            context.extend(dict(tenant=w.tenant, run_id=w.run_id, key=k, value=v) for k, v in e.context.items())
        if new_waits:
            await conn.execute(waits.insert(), new_waits)
        if new_approvals:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            await conn.execute(dialect.insert(approvals).on_conflict_do_nothing(index_elements=["tenant", "run_id", "step_id"]), new_approvals)
        await write_context(conn, context)

    async def _joins_and_states(self, conn: Any, kept: Sequence[Outcome], now: dt.datetime,
                                gone: dict[str, Counts]) -> dict[tuple[str, str], RunState]:
        """Each run's state after the batch. A run whose tokens were several
        (or still are) is locked and read back: it ends only with its last
        token, and a join whose branches are all in lets one token go on.
        Tokens that stop waiting so (at the join, or at any step of a run
        that ends) are added to *gone*."""
        states = {(o.work.tenant, o.work.run_id): o.run_state for o in kept}
        several = {(o.work.tenant, o.work.run_id) for o in kept
                   if o.work.token != 0 or (o.effects is not None and (o.effects.forks or o.effects.joined))}
        t = tokens
        for tenant, run_id in sorted(several):
            own = [o for o in kept if (o.work.tenant, o.work.run_id) == (tenant, run_id)]
            ident = (own[0].work.journey, own[0].work.journey_version)
            if any(o.run_state in (RunState.FAILED, RunState.CANCELLED) or (o.effects is not None and o.effects.cancel_siblings
                                                                            and o.run_state not in LIVE) for o in own):
                # A failed, cancelled or exited branch ends the whole run.
                ended = (await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.run_id == run_id))
                                            .returning(t.c.node, t.c.state))).all()
                gone[tenant].update(waiting_left(ident, ended))
                await conn.execute(waits.delete().where((waits.c.tenant == tenant) & (waits.c.run_id == run_id)))
                continue
            await conn.execute(sa.select(runs.c.run_id).where((runs.c.tenant == tenant) & (runs.c.run_id == run_id)).with_for_update())
            left = (await conn.execute(sa.select(t.c.token, t.c.node, t.c.state).where((t.c.tenant == tenant) & (t.c.run_id == run_id)))).all()
            joined = [r for r in left if r.state == TokenState.JOINED.value]
            if joined and len(joined) == len(left):
                arrival = next((o.effects for o in own if o.effects is not None and o.effects.joined), None)
                if arrival is None:  # cannot happen: a join is complete only once a branch arrives
                    continue
                nxt = arrival.join_next
                gone[tenant].update(waiting_left(ident, joined))  # every branch leaves the join, the survivor too
                survivor = min(r.token for r in joined)
                await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.token != survivor)))
                if nxt:
                    await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.token == survivor)).values(
                        node=nxt, state=TokenState.READY.value, due_time=now, attempts=0, evaluations=0, lease_owner=None, node_since=now))
                    states[(tenant, run_id)] = RunState.RUNNING
                else:
                    await conn.execute(t.delete().where((t.c.tenant == tenant) & (t.c.run_id == run_id)))
                    states[(tenant, run_id)] = RunState.COMPLETED
            elif left:
                states[(tenant, run_id)] = RunState.RUNNING if any(r.state == TokenState.READY.value for r in left) else RunState.WAITING
            else:
                states[(tenant, run_id)] = RunState.COMPLETED
        return states

    async def _runs(self, conn: Any, kept: Sequence[Outcome], states: dict[tuple[str, str], RunState], now: dt.datetime) -> None:
        last: dict[tuple[str, str], Outcome] = {}
        flags: dict[tuple[str, str], dict[str, Any]] = {}
        for o in kept:
            key = (o.work.tenant, o.work.run_id)
            last[key] = o
            e = o.effects
            f = flags.setdefault(key, dict(arms=list(o.work.arms), holdout=o.work.holdout, goal="", actions=0))
            if e is not None:
                f["arms"] += [a for a in e.arms if a not in f["arms"]]
                f["holdout"] = f["holdout"] or e.holdout
                f["goal"] = f["goal"] or e.goal
                f["actions"] += e.actions
        plain = [key for key in last if not flags[key]["goal"] and flags[key]["arms"] == list(last[key].work.arms)
                 and flags[key]["holdout"] == last[key].work.holdout and not flags[key]["actions"]]
        richer = [key for key in last if key not in set(plain)]
        r = runs
        key_clause = (r.c.tenant == sa.bindparam("k_tenant")) & (r.c.run_id == sa.bindparam("k_run"))
        if plain:
            await conn.execute(r.update().where(key_clause).values(state=sa.bindparam("v_state"), current_step=sa.bindparam("v_step"),
                                                                   update_time=now), [
                dict(k_tenant=k[0], k_run=k[1], v_state=states[k].value, v_step=_current(last[k], states[k])) for k in plain])
        if richer:
            await conn.execute(r.update().where(key_clause).values(
                state=sa.bindparam("v_state"), current_step=sa.bindparam("v_step"), update_time=now, arms=sa.bindparam("v_arms"),
                holdout=sa.bindparam("v_holdout"), converted=r.c.converted | sa.bindparam("v_converted"),
                goal=sa.case((sa.bindparam("v_goal") != "", sa.bindparam("v_goal")), else_=r.c.goal),
                actions=r.c.actions + sa.bindparam("v_actions")), [
                dict(k_tenant=k[0], k_run=k[1], v_state=states[k].value, v_step=_current(last[k], states[k]), v_arms=flags[k]["arms"],
                     v_holdout=flags[k]["holdout"], v_converted=bool(flags[k]["goal"]), v_goal=flags[k]["goal"],
                     v_actions=flags[k]["actions"]) for k in richer])

    async def _counters(self, conn: Any, kept: Sequence[Outcome], states: dict[tuple[str, str], RunState],
                        gone: dict[str, Counts], now: dt.datetime) -> None:
        for tenant, counts in count_outcomes(kept, states, gone, now).items():
            await add_counts(conn, tenant, counts)


def attempt_rows(kept: Sequence[Outcome], ids: IdGenerator) -> list[dict[str, Any]]:
    """The step attempts of *kept*, as rows of ``step_attempts`` (new, time-ordered ids)."""
    return [dict(tenant=o.work.tenant, run_id=o.work.run_id, attempt_id=ids.new(), step_id=a.step_id, state=a.state.value,
                 decision_id=a.decision_id, delivery_id=a.delivery_id, outcome=a.outcome[:2000], error=a.error[:2000],
                 start_time=a.start_time, end_time=a.end_time, wake_time=a.wake_time, edge=a.edge[:128], detail=a.detail)
            for o in kept for a in o.attempts]


def count_outcomes(kept: Sequence[Outcome], states: dict[tuple[str, str], RunState], gone: dict[str, Counts],
                   now: dt.datetime) -> dict[str, Counts]:
    """The journeys' counters that recording *kept* adds, by tenant: steps
    entered, left and waited at, edges, latencies, sends, arms, goals, and
    runs that end (by their state in *states*), plus the waiting tokens *gone*."""
    by_tenant: dict[str, Counts] = defaultdict(Counter)
    for tenant, counts in gone.items():
        by_tenant[tenant].update(counts)
    ended_runs: set[tuple[str, str]] = set()
    for o in kept:
        w = o.work
        c = by_tenant[w.tenant]
        ident = (w.journey, w.journey_version)
        for a in o.attempts:
            if a.arrival:
                c[(*ident, a.step_id, "entered")] += 1
            if a.state == StepState.WAITING and a.arrival:
                c[(*ident, a.step_id, "waiting_in")] += 1
            if a.state in (StepState.COMPLETED, StepState.SKIPPED, StepState.FAILED):
                c[(*ident, a.step_id, a.state.value)] += 1
                if a.waited:
                    c[(*ident, a.step_id, "waiting_out")] += 1
                if a.edge:
                    c[(*ident, a.step_id, f"edge:{a.edge}")] += 1
                if a.latency is not None:
                    c[(*ident, a.step_id, latency_metric(a.latency))] += 1
                if a.delivery_id and a.state == StepState.COMPLETED:
                    c[(*ident, a.step_id, "sent")] += 1
                    c[(*ident, "", day_metric(now, "sent"))] += 1
                elif a.decision_id and a.state == StepState.FAILED:
                    c[(*ident, a.step_id, "send_failed")] += 1
        e = o.effects
        if e is not None:
            for arm in e.arms:
                c[(*ident, "", f"arm:{arm}:entered")] += 1
            if e.goal:
                c[(*ident, "", "converted")] += 1
                c[(*ident, "", day_metric(now, "converted"))] += 1
                for arm in (*w.arms, *e.arms):
                    c[(*ident, "", f"arm:{arm}:converted")] += 1
        key = (w.tenant, w.run_id)
        state = states[key]
        if state not in LIVE and key not in ended_runs:
            ended_runs.add(key)
            c[(*ident, "", "erased" if e is not None and e.skipped else state.value)] += 1
            if state == RunState.FAILED:
                c[(*ident, "", day_metric(now, "failed"))] += 1
    return by_tenant


def _current(outcome: Outcome, state: RunState) -> str:
    return outcome.node if state in (*LIVE, RunState.FAILED) else ""
