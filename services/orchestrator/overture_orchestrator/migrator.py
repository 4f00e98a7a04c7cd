"""MigrateRuns: moving a journey's live runs from one version to another.

Runs stay on the version they started on; an operator who publishes a fix
may move them. Each token of a run goes to the step the mapping names for
its node (a node missing from the mapping keeps its id), and the run's
version with them. A run moves whole or not at all (ADR 0017):

- **Every token must have a target.** A token whose target step is not in
  the target version leaves its run where it is (``STEP_NOT_IN_VERSION``).
  A token that has started its step (waiting on a delay, an event, an
  approval, a retry backoff) keeps its wake time, timeout and request, so
  it may only move to a step of the same kind (``STEP_KIND_CHANGED``); a
  token about to start its step may move to any step.
- **A run being executed is not moved.** A worker that claimed a token
  holds it under a lease (``lease_owner``) until it records the outcome,
  and records only for tokens it still holds; its outcome was computed on
  the old version, so it must neither be overwritten by a move nor land on
  a moved run. So a run moves only when none of its tokens is leased, and
  its rows are locked without waiting (``SKIP LOCKED``) for the move: a
  claim made after the move sees the new version. A busy run is tried
  again a few times within the call, and otherwise reported
  (``RUN_BUSY``); running the migration again moves it.
- What the run waits on moves with it: its wait registrations and its
  pending approval go to the target step and version, and what it keeps
  under a mapped step's id in its context (a matched event, a decided
  approval, a kept response, loop visits) goes to the step's new id. Its
  history (step attempts, split arms) keeps the old steps' ids, and the
  journey's counters stay with the version they were counted on.

Runs move a page at a time, each page in one transaction with one audit
record (``RUN_MIGRATED``) per moved run. A call cut short (a deadline) has
moved whole pages; moved runs are no longer on the source version, so the
same migration run again moves the rest.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FieldViolation, InvalidArgument

from .audit_outbox import stage
from .journeys import JourneyStore
from .model import LIVE, TokenState
from .runs import RetryRefusal
from .stats import add_counts
from .tables import approvals, run_context, runs, tokens, waits

__all__ = ["Migration", "RunMigrator", "live_runs_page"]

_LIVE = tuple(s.value for s in LIVE)
_WAITING = frozenset({TokenState.WAITING.value, TokenState.RESUMED.value, TokenState.JOINED.value})
"""Token states counted as waiting at their step (``waiting_in`` / ``waiting_out``)."""
_PAGE = 200
_BUSY_BACKOFF = (0.1, 0.2, 0.4, 0.8, 1.6)
"""Seconds between the tries of runs that were busy (about 3 s in all, well within a worker's batch)."""
_CONFLICTS = frozenset({"40P01", "40001", "55P03"})
"""Deadlock, serialization failure, lock not available: the page rolled back whole and is tried again."""


@dataclass(frozen=True)
class Migration:
    """What a migration did."""

    migrated: int
    """Runs moved."""
    rejections: list[tuple[str, RetryRefusal]]
    """(run id, why) of the runs left where they were."""
    to_version: int
    """The version the runs moved to."""


@dataclass(frozen=True)
class _Plan:
    tenant: str
    journey: str
    from_version: int
    to_version: int
    mapping: Mapping[str, str]
    from_kinds: Mapping[str, str]
    to_kinds: Mapping[str, str]
    wait_events: Mapping[str, str]
    """Event types of the target version's wait_for_event steps."""
    actor: str
    reason: str

    def target(self, node: str) -> str:
        return self.mapping.get(node, node)


class RunMigrator:
    """Moves live runs between versions of their journey."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, journeys: JourneyStore, page: int = _PAGE) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._journeys = journeys
        self._page = page

    async def migrate(self, tenant: str, *, journey: str, from_version: int, to_version: int, mapping: Mapping[str, str],
                      actor: str, reason: str) -> Migration:
        """Move the live runs of *journey* on *from_version* to *to_version*
        (0: the latest). Raises NotFound for a journey or version that does
        not exist, InvalidArgument for a mapping that names steps the versions
        do not have or for the same version twice."""
        plan = await self._plan(tenant, journey, from_version, to_version, mapping, actor, reason)
        moved, refused, busy = 0, dict[str, RetryRefusal](), list[str]()
        after = ""
        while True:
            page = await self._candidates(plan, after)
            if not page:
                break
            done, no, later = await self._move_page(plan, page)
            moved, busy = moved + done, busy + later
            refused.update(no)
            after = page[-1]
        for delay in _BUSY_BACKOFF:
            if not busy:
                break
            await asyncio.sleep(delay)
            done, no, busy = await self._move_page(plan, busy)
            moved += done
            refused.update(no)
        for run_id in busy:
            refused[run_id] = RetryRefusal("RUN_BUSY", f"run {run_id!r} was being executed throughout the migration; migrate again to move it")
        return Migration(migrated=moved, rejections=sorted(refused.items()), to_version=plan.to_version)

    async def _plan(self, tenant: str, journey: str, from_version: int, to_version: int, mapping: Mapping[str, str], actor: str,
                    reason: str) -> _Plan:
        source = await self._journeys.get(tenant=tenant, name=journey, version=from_version)
        target = await self._journeys.get(tenant=tenant, name=journey, version=to_version)
        if target.version == source.version:
            raise InvalidArgument(f"the runs are on version {source.version} already", violations=[
                FieldViolation("to_version", f"to_version must differ from from_version ({source.version})", "SAME_VERSION")])
        await self._journeys.compiled(tenant, journey, target.version)  # the runs will execute it: it must compile
        from_kinds = {s.id: s.WhichOneof("kind") or "" for s in source.spec.steps}
        to_kinds = {s.id: s.WhichOneof("kind") or "" for s in target.spec.steps}
        problems = []
        for old, new in sorted(mapping.items()):
            if old not in from_kinds:
                problems.append(FieldViolation(f"step_mapping[{old}]", f"version {source.version} has no step {old!r}", "UNKNOWN_STEP"))
            if new not in to_kinds:
                problems.append(FieldViolation(f"step_mapping[{old}]", f"version {target.version} has no step {new!r}", "UNKNOWN_STEP"))
        if problems:
            raise InvalidArgument(f"the step mapping is invalid: {problems[0].description}", violations=problems)
        return _Plan(tenant=tenant, journey=journey, from_version=source.version, to_version=target.version, mapping=dict(mapping),
                     from_kinds=from_kinds, to_kinds=to_kinds, actor=actor, reason=reason,
                     wait_events={s.id: s.wait_for_event.event_type for s in target.spec.steps if s.WhichOneof("kind") == "wait_for_event"})

    async def _candidates(self, plan: _Plan, after: str) -> list[str]:
        async with self._db.connect() as conn:
            return list((await conn.execute(live_runs_page(plan.tenant, plan.journey, plan.from_version, after=after,
                                                           limit=self._page))).scalars())

    async def _move_page(self, plan: _Plan, run_ids: Sequence[str]) -> tuple[int, dict[str, RetryRefusal], list[str]]:
        """Move what can move of *run_ids* in one transaction; returns how
        many moved, the refusals, and the runs that were busy."""
        for _ in range(5):
            try:
                async with self._db.begin() as conn:
                    return await self._move(conn, plan, run_ids)
            except DBAPIError as error:
                if _sqlstate(error) not in _CONFLICTS:
                    raise
        return 0, {}, list(run_ids)

    async def _move(self, conn: AsyncConnection, plan: _Plan, run_ids: Sequence[str]) -> tuple[int, dict[str, RetryRefusal], list[str]]:
        r, t = runs, tokens
        on_source = (r.c.tenant == plan.tenant) & r.c.run_id.in_(run_ids) & r.c.state.in_(_LIVE) & (r.c.journey_version == plan.from_version)
        locked = {row.run_id: row for row in (await conn.execute(
            sa.select(r.c.run_id, r.c.current_step).where(on_source).with_for_update(skip_locked=True))).all()}
        busy = set((await conn.execute(sa.select(r.c.run_id).where(on_source))).scalars()) - set(locked)
        ids = sorted(locked)
        every = _by_run((await conn.execute(sa.select(t.c.run_id, t.c.token).where(
            (t.c.tenant == plan.tenant) & t.c.run_id.in_(ids)))).all()) if ids else {}
        free = _by_run((await conn.execute(sa.select(t.c.run_id, t.c.token, t.c.node, t.c.state).where(
            (t.c.tenant == plan.tenant) & t.c.run_id.in_(ids) & t.c.lease_owner.is_(None)).with_for_update(skip_locked=True))).all()) if ids else {}
        refused: dict[str, RetryRefusal] = {}
        movable: list[tuple[Any, list[Any]]] = []
        for run_id in ids:
            held = free.get(run_id, [])
            if {k.token for k in held} != {k.token for k in every.get(run_id, [])}:
                busy.add(run_id)  # a worker holds one of its tokens (or is recording it right now)
                continue
            refusal = _refusal(plan, run_id, held)
            if refusal is not None:
                refused[run_id] = refusal
                continue
            movable.append((locked[run_id], held))
        movable = await self._without_approval_conflicts(conn, plan, movable, refused)
        if movable:
            await self._apply(conn, plan, movable)
        return len(movable), refused, sorted(busy)

    async def _rename_context(self, conn: AsyncConnection, plan: _Plan, run_ids: list[str]) -> None:
        """What the moved runs keep under a renamed step (``<step id>.<key>``:
        a matched event, a decided approval, a kept response, loop visits)
        follows the step to its new id, so the target version's steps find
        it; a key the run already has under the new id is left as it is."""
        renamed = {old: new for old, new in plan.mapping.items() if old != new}
        if not renamed:
            return
        c = run_context
        rows = (await conn.execute(sa.select(c.c.run_id, c.c.key).where((c.c.tenant == plan.tenant) & c.c.run_id.in_(run_ids)))).all()
        keys: dict[str, set[str]] = {}
        for row in rows:
            keys.setdefault(row.run_id, set()).add(row.key)
        moves = []
        for run_id, held in sorted(keys.items()):
            for key in sorted(held):
                step, dot, rest = key.partition(".")
                if dot and step in renamed and f"{renamed[step]}.{rest}" not in held:
                    moves.append(dict(k_tenant=plan.tenant, k_run=run_id, k_key=key, v_key=f"{renamed[step]}.{rest}"))
        if moves:
            await conn.execute(c.update().where((c.c.tenant == sa.bindparam("k_tenant")) & (c.c.run_id == sa.bindparam("k_run"))
                                                & (c.c.key == sa.bindparam("k_key"))).values(key=sa.bindparam("v_key")), moves)

    async def _without_approval_conflicts(self, conn: AsyncConnection, plan: _Plan, movable: list[tuple[Any, list[Any]]],
                                          refused: dict[str, RetryRefusal]) -> list[tuple[Any, list[Any]]]:
        """Refuse runs whose pending approval would land on a step the run already has an approval request for."""
        a = approvals
        renamed = [(run.run_id, k.node, plan.target(k.node)) for run, held in movable for k in held if plan.target(k.node) != k.node]
        if not renamed:
            return movable
        taken = {(row.run_id, row.step_id) for row in (await conn.execute(sa.select(a.c.run_id, a.c.step_id).where(
            (a.c.tenant == plan.tenant) & a.c.run_id.in_({run_id for run_id, _, _ in renamed})))).all()}
        for run_id, old, new in renamed:
            if (run_id, old) in taken and (run_id, new) in taken:
                refused[run_id] = RetryRefusal("STEP_ALREADY_VISITED", f"run {run_id!r} waits for an approval at step {old!r} and already "
                                               f"had one at step {new!r}; it stays on version {plan.from_version}")
        return [(run, held) for run, held in movable if run.run_id not in refused]

    async def _apply(self, conn: AsyncConnection, plan: _Plan, movable: list[tuple[Any, list[Any]]]) -> None:
        now = self._clock.now()
        moves = [(run.run_id, k.token, k.node, plan.target(k.node)) for run, held in movable for k in held]
        key: tuple[Any, Any, Any] = (sa.bindparam("k_tenant"), sa.bindparam("k_run"), sa.bindparam("k_token"))
        t, w, a = tokens, waits, approvals
        renamed = [dict(k_tenant=plan.tenant, k_run=run_id, k_token=token, v_node=new) for run_id, token, old, new in moves if old != new]
        if renamed:
            await conn.execute(t.update().where((t.c.tenant == key[0]) & (t.c.run_id == key[1]) & (t.c.token == key[2]))
                               .values(node=sa.bindparam("v_node")), renamed)
        await conn.execute(runs.update().where((runs.c.tenant == key[0]) & (runs.c.run_id == key[1])).values(
            journey_version=plan.to_version, current_step=sa.bindparam("v_step"), update_time=now), [
            dict(k_tenant=plan.tenant, k_run=run.run_id, v_step=plan.target(run.current_step) if run.current_step else "")
            for run, _ in movable])
        await conn.execute(w.update().where((w.c.tenant == key[0]) & (w.c.run_id == key[1]) & (w.c.token == key[2])).values(
            step_id=sa.bindparam("v_node"), journey_version=plan.to_version, event_type=sa.bindparam("v_event")), [
            dict(k_tenant=plan.tenant, k_run=run_id, k_token=token, v_node=new, v_event=plan.wait_events.get(new, ""))
            for run_id, token, _, new in moves])
        await conn.execute(a.update().where((a.c.tenant == key[0]) & (a.c.run_id == key[1]) & (a.c.step_id == sa.bindparam("k_step"))
                                            & (a.c.decision == "")).values(step_id=sa.bindparam("v_node"), journey_version=plan.to_version), [
            dict(k_tenant=plan.tenant, k_run=run_id, k_step=old, v_node=new) for run_id, _, old, new in moves])
        await self._rename_context(conn, plan, [run.run_id for run, _ in movable])
        # In the journey's counters the run leaves the old version for the new
        # one, and a token waiting at its step leaves the old step and waits at the new.
        waiting = [(k.node, plan.target(k.node)) for _, held in movable for k in held if k.state in _WAITING]
        await add_counts(conn, plan.tenant, Counter({(plan.journey, plan.from_version, "", "migrated_out"): len(movable),
                                                     (plan.journey, plan.to_version, "", "migrated_in"): len(movable)})
                         + Counter((plan.journey, plan.from_version, old, "waiting_out") for old, _ in waiting)
                         + Counter((plan.journey, plan.to_version, new, "waiting_in") for _, new in waiting))
        for run, held in movable:
            steps = {k.node: plan.target(k.node) for k in held}
            await stage(conn, tenant=plan.tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_RUN_MIGRATED,
                        actor=plan.actor, time=now, reason=plan.reason, target=f"run/{run.run_id}",
                        details={"journey": plan.journey, "from_version": plan.from_version, "to_version": plan.to_version,
                                 "steps": ", ".join(f"{old}->{new}" for old, new in sorted(steps.items()))})


def live_runs_page(tenant: str, journey: str, version: int, *, after: str, limit: int) -> sa.Select[tuple[str]]:
    """The ids of the next *limit* live runs of *journey* on *version* after
    the run id *after*, in order: one ordered range of the runs' journey and
    state index per live state, merged, so a page reads about *limit* rows
    whatever the journey's history holds."""
    r = runs
    ranges = [sa.select(r.c.run_id).where(
        (r.c.tenant == tenant) & (r.c.journey == journey) & (r.c.state == state) & (r.c.run_id > after)
        & (r.c.journey_version == version)).order_by(r.c.run_id).limit(limit).subquery() for state in _LIVE]
    merged = sa.union_all(*(sa.select(q.c.run_id) for q in ranges)).subquery()
    return sa.select(merged.c.run_id).order_by(merged.c.run_id).limit(limit)


def _refusal(plan: _Plan, run_id: str, held: Iterable[Any]) -> RetryRefusal | None:
    """Why a run whose tokens are all free cannot move, or None."""
    for k in held:
        new = plan.target(k.node)
        if new not in plan.to_kinds:
            return RetryRefusal("STEP_NOT_IN_VERSION", f"run {run_id!r} is at step {k.node!r}, and version {plan.to_version} has no step "
                                f"{new!r}; map it with step_mapping, it stays on version {plan.from_version}")
        if k.state != TokenState.READY.value and plan.from_kinds.get(k.node) != plan.to_kinds[new]:
            return RetryRefusal("STEP_KIND_CHANGED", f"run {run_id!r} is in the middle of {plan.from_kinds.get(k.node) or 'a'} step "
                                f"{k.node!r}, and step {new!r} of version {plan.to_version} is a {plan.to_kinds[new]} step; it stays "
                                f"on version {plan.from_version}")
    return None


def _by_run(rows: Iterable[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for row in rows:
        found.setdefault(row.run_id, []).append(row)
    return found


def _sqlstate(error: DBAPIError) -> str:
    orig = error.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
