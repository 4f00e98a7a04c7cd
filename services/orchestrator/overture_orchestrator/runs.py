"""Runs and their steps, in the database.

A run is advanced by whoever holds its lease, so replicas never execute the
same run at once; a lease that expires (its holder crashed) lets another
replica resume the run from its last recorded step. Operators' changes to
runs (cancel, retry) write their audit record in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, insert_ignore
from overture_runtime.errors import NotFound

from .audit_outbox import SYSTEM_ACTOR, stage
from .tables import dead_letters, runs, step_runs

__all__ = ["JourneyTarget", "RetryRefusal", "RunRecord", "RunStore", "StepRecord"]

LEASE = dt.timedelta(seconds=30)
_RUN_STATES = {
    "running": run_pb2.RUN_STATE_RUNNING, "waiting": run_pb2.RUN_STATE_WAITING, "completed": run_pb2.RUN_STATE_COMPLETED,
    "failed": run_pb2.RUN_STATE_FAILED, "cancelled": run_pb2.RUN_STATE_CANCELLED,
}
_STEP_STATES = {
    "running": run_pb2.STEP_RUN_STATE_RUNNING, "waiting": run_pb2.STEP_RUN_STATE_WAITING,
    "completed": run_pb2.STEP_RUN_STATE_COMPLETED, "skipped": run_pb2.STEP_RUN_STATE_SKIPPED, "failed": run_pb2.STEP_RUN_STATE_FAILED,
}
ENDED = frozenset({"completed", "failed", "cancelled"})


@dataclass
class StepRecord:
    """The recorded state of one step of a run. Mutable while the step runs."""

    step_id: str
    position: int
    state: str = "running"
    attempts: int = 0
    evaluations: int = 0
    decision_id: str = ""
    delivery_id: str = ""
    outcome: str = ""
    error: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    wake_time: dt.datetime | None = None


@dataclass
class RunRecord:
    """A run as the executor sees it."""

    tenant: str
    run_id: str
    journey: str
    journey_version: int
    subject_id: str
    trigger_event: event_pb2.Event
    inline_spec: str | None
    state: str
    current_step: str


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

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, owner: str) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.owner = owner

    async def create(
        self, *, tenant: str, journey: str, version: int, subject_id: str, trigger_event_id: str,
        event: event_pb2.Event, first_step: str, inline_spec: str | None = None,
    ) -> tuple[str, bool]:
        """Create a run, leased to this replica, unless this trigger already
        made one. Returns the run id and whether it is new."""
        now = self._clock.now()
        run_id = self._ids.new()
        async with self._db.begin() as conn:
            result = await conn.execute(insert_ignore(
                conn, runs, index_elements=["tenant", "journey", "subject_id", "trigger_event_id"]
            ).values(
                tenant=tenant, run_id=run_id, journey=journey, journey_version=version, subject_id=subject_id,
                trigger_event_id=trigger_event_id, trigger_event=event.SerializeToString(), inline_spec=inline_spec,
                state="running", current_step=first_step, wake_time=now, lease_owner=self.owner, lease_until=now + LEASE,
                create_time=now, update_time=now,
            ))
            if result.rowcount:
                return run_id, True
            existing = (await conn.execute(sa.select(runs.c.run_id).where(
                (runs.c.tenant == tenant) & (runs.c.journey == journey)
                & (runs.c.subject_id == subject_id) & (runs.c.trigger_event_id == trigger_event_id)))).scalar_one()
        return str(existing), False

    async def has_unfinished(self, tenant: str, journey: str, subject_id: str) -> bool:
        """Whether the subject has a run of *journey* that has not ended."""
        async with self._db.connect() as conn:
            found = (await conn.execute(sa.select(runs.c.run_id).where(
                (runs.c.tenant == tenant) & (runs.c.journey == journey) & (runs.c.subject_id == subject_id)
                & runs.c.state.in_(("running", "waiting"))).limit(1))).first()
        return found is not None

    async def lease(self, tenant: str, run_id: str) -> RunRecord | None:
        """Take the run's lease if it is free or ours; None if another replica holds it or it ended."""
        now = self._clock.now()
        key = (runs.c.tenant == tenant) & (runs.c.run_id == run_id)
        free = runs.c.lease_until.is_(None) | (runs.c.lease_until < now) | (runs.c.lease_owner == self.owner)
        async with self._db.begin() as conn:
            taken = await conn.execute(runs.update().where(key & free & runs.c.state.in_(("running", "waiting")))
                                       .values(lease_owner=self.owner, lease_until=now + LEASE))
            if not taken.rowcount:
                return None
            row = (await conn.execute(sa.select(runs).where(key))).one()
        return RunRecord(
            tenant=row.tenant, run_id=row.run_id, journey=row.journey, journey_version=row.journey_version,
            subject_id=row.subject_id, trigger_event=event_pb2.Event.FromString(row.trigger_event),
            inline_spec=row.inline_spec, state=row.state, current_step=row.current_step,
        )

    async def due(self, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, run id) of runs whose timer is due and whose lease is free."""
        now = self._clock.now()
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(runs.c.tenant, runs.c.run_id).where(
                (runs.c.wake_time <= now) & runs.c.state.in_(("running", "waiting"))
                & (runs.c.lease_until.is_(None) | (runs.c.lease_until < now))
            ).order_by(runs.c.wake_time).limit(limit))).all()
        return [(r.tenant, r.run_id) for r in rows]

    async def step(self, tenant: str, run_id: str, step_id: str, position: int) -> StepRecord:
        """The recorded state of a step, or a fresh record."""
        t = step_runs
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.step_id == step_id)))).first()
        if row is None:
            return StepRecord(step_id=step_id, position=position, start_time=self._clock.now())
        return StepRecord(**{k: getattr(row, k) for k in StepRecord.__dataclass_fields__})

    async def save(self, run: RunRecord, step: StepRecord, *, run_state: str, next_step: str, wake_time: dt.datetime | None) -> None:
        """Record a step's state and move the run, in one transaction."""
        now = self._clock.now()
        t = step_runs
        values: dict[str, Any] = {k: getattr(step, k) for k in StepRecord.__dataclass_fields__}
        async with self._db.begin() as conn:
            inserted = await conn.execute(insert_ignore(conn, t, index_elements=["tenant", "run_id", "step_id"]).values(
                tenant=run.tenant, run_id=run.run_id, **values))
            if not inserted.rowcount:
                await conn.execute(t.update().where((t.c.tenant == run.tenant) & (t.c.run_id == run.run_id) & (t.c.step_id == step.step_id))
                                   .values(**{k: v for k, v in values.items() if k not in ("step_id",)}))
            ended = run_state in ENDED
            await conn.execute(runs.update().where((runs.c.tenant == run.tenant) & (runs.c.run_id == run.run_id)).values(
                state=run_state, current_step="" if ended else next_step, wake_time=None if ended else wake_time,
                lease_until=None if run_state != "running" else now + LEASE, update_time=now,
            ))
        run.state, run.current_step = run_state, ("" if run_state in ENDED else next_step)

    async def finish(self, run: RunRecord, state: str) -> None:
        """End a run without a step (an empty journey, a cancelled run)."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            await conn.execute(runs.update().where((runs.c.tenant == run.tenant) & (runs.c.run_id == run.run_id))
                               .values(state=state, current_step="", wake_time=None, lease_until=None, update_time=now))
        run.state, run.current_step = state, ""

    async def cancel(self, tenant: str, run_id: str, *, actor: str = SYSTEM_ACTOR, reason: str = "") -> bool:
        """Cancel a run that has not ended, audited; return whether it was cancelled."""
        now = self._clock.now()
        key = (runs.c.tenant == tenant) & (runs.c.run_id == run_id)
        async with self._db.begin() as conn:
            row = (await conn.execute(sa.select(runs.c.journey, runs.c.journey_version, runs.c.current_step).where(
                key & runs.c.state.in_(("running", "waiting"))).with_for_update())).first()
            if row is None:
                return False
            await conn.execute(runs.update().where(key).values(
                state="cancelled", current_step="", wake_time=None, lease_until=None, update_time=now))
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_RUN_CANCELLED, actor=actor,
                        time=now, reason=reason, target=f"run/{run_id}",
                        details={"journey": row.journey, "journey_version": row.journey_version, "step_id": row.current_step})
        return True

    async def retry(
        self, tenant: str, run_id: str, *, actor: str = SYSTEM_ACTOR, reason: str = "", via: str = "RetryRun",
        move_to: JourneyTarget | None = None,
    ) -> RetryRefusal | None:
        """Send a failed run back to the step that failed, with fresh attempts,
        on its own journey version or, with *move_to*, on that version, which
        must have a step with the failed step's id. It runs on the next timer
        tick; its dead-letter entry is removed and the retry audited, in one
        transaction. Returns None, or why the run was left as it was."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            key = (runs.c.tenant == tenant) & (runs.c.run_id == run_id)
            run = (await conn.execute(sa.select(runs.c.journey, runs.c.journey_version).where(
                key & (runs.c.state == "failed")).with_for_update())).first()
            t = step_runs
            failed = None if run is None else (await conn.execute(sa.select(t.c.step_id, t.c.error).where(
                (t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.state == "failed")).order_by(t.c.position.desc()).limit(1))).first()
            if run is None or failed is None:
                return RetryRefusal("RUN_NOT_FAILED", f"run {run_id!r} has not failed; only failed runs can be retried")
            if move_to is not None and failed.step_id not in move_to.steps:
                return RetryRefusal("STEP_NOT_IN_VERSION", f"run {run_id!r} failed at step {failed.step_id!r}, which version "
                                    f"{move_to.version} of journey {run.journey!r} does not have; it stays in the dead-letter queue")
            version = move_to.version if move_to is not None else run.journey_version
            await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.step_id == failed.step_id)).values(
                state="running", attempts=0, evaluations=t.c.evaluations + 1, end_time=None, error=f"retried after: {failed.error}"[:2000]))
            await conn.execute(runs.update().where(key).values(
                state="waiting", current_step=failed.step_id, journey_version=version, wake_time=now, lease_until=None, update_time=now))
            await conn.execute(dead_letters.delete().where(
                (dead_letters.c.tenant == tenant) & (dead_letters.c.kind == "run") & (dead_letters.c.ref == run_id)))
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_RUN_RETRIED, actor=actor,
                        time=now, reason=reason, target=f"run/{run_id}",
                        details={"journey": run.journey, "step_id": failed.step_id, "from_version": run.journey_version,
                                 "to_version": version, "via": via})
        return None

    async def note_delivery(self, tenant: str, run_id: str, step_id: str, outcome: str) -> None:
        """Record what a send step's delivery became."""
        t = step_runs
        async with self._db.begin() as conn:
            await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.step_id == step_id))
                               .values(outcome=outcome[:1000]))

    async def trigger_event(self, tenant: str, event_id: str) -> event_pb2.Event | None:
        """The event that started a run, from any run it started."""
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(runs.c.trigger_event).where(
                (runs.c.tenant == tenant) & (runs.c.trigger_event_id == event_id)).limit(1))).first()
        return event_pb2.Event.FromString(row.trigger_event) if row else None

    async def cancel_waiting(self, tenant: str, journey: str) -> int:
        """Cancel the journey's runs that wait on a timer; return how many."""
        async with self._db.begin() as conn:
            result = await conn.execute(runs.update().where(
                (runs.c.tenant == tenant) & (runs.c.journey == journey) & (runs.c.state == "waiting")
            ).values(state="cancelled", current_step="", wake_time=None, lease_until=None, update_time=self._clock.now()))
        return int(result.rowcount)

    async def get(self, tenant: str, run_id: str) -> run_pb2.Run:
        """One run with its steps."""
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(runs).where((runs.c.tenant == tenant) & (runs.c.run_id == run_id)))).first()
            if row is None:
                raise NotFound(f"run {run_id!r} does not exist", reason="RUN_NOT_FOUND")
            steps = (await conn.execute(sa.select(step_runs).where(
                (step_runs.c.tenant == tenant) & (step_runs.c.run_id == run_id)).order_by(step_runs.c.position))).all()
        return _run_proto(row, steps)

    async def list_runs(
        self, *, tenant: str, journey: str = "", subject_id: str = "", trigger_event_id: str = "", limit: int, before: str | None,
        state: str = "",
    ) -> list[run_pb2.Run]:
        """Runs newest first, filtered."""
        query = sa.select(runs).where(runs.c.tenant == tenant)
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
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(runs.c.run_id.desc()).limit(limit))).all()
            ids = [r.run_id for r in rows]
            steps = (await conn.execute(sa.select(step_runs).where(
                (step_runs.c.tenant == tenant) & step_runs.c.run_id.in_(ids)).order_by(step_runs.c.position))).all() if ids else []
        by_run: dict[str, list[Any]] = {}
        for s in steps:
            by_run.setdefault(s.run_id, []).append(s)
        return [_run_proto(r, by_run.get(r.run_id, [])) for r in rows]


def _run_proto(row: Any, steps: list[Any]) -> run_pb2.Run:
    run = run_pb2.Run(
        run_id=row.run_id, journey=row.journey, journey_version=row.journey_version, subject_id=row.subject_id,
        trigger_event_id=row.trigger_event_id, state=_RUN_STATES[row.state], current_step=row.current_step,
    )
    run.create_time.FromDatetime(row.create_time)
    run.update_time.FromDatetime(row.update_time)
    for s in steps:
        step = run.steps.add(step_id=s.step_id, state=_STEP_STATES[s.state], attempts=s.attempts, decision_id=s.decision_id,
                             delivery_id=s.delivery_id, outcome=s.outcome, error=s.error)
        step.start_time.FromDatetime(s.start_time)
        if s.end_time:
            step.end_time.FromDatetime(s.end_time)
        if s.wake_time:
            step.wake_time.FromDatetime(s.wake_time)
    return run
