"""Goals: an event that ends a run from any step, as converted.

For each batch of events whose types are some active journey's goal, one
query reads the live runs of the batch's subjects in those journeys (a
partial index holds only live runs); each run whose own version's goal
(and filter) the event meets ends, completed and converted, in one
transaction: its tokens and waits are deleted (a worker executing one of
them finds it gone and records nothing), an attempt says which event
converted it, and the journey's counters (split branches included) add
the conversion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import rule_engine
import sqlalchemy as sa
import structlog

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, any_of
from overture_runtime.errors import OvertureError
from overture_runtime.protojson import struct_to_dict

from .definition import evaluate_expression
from .journeys import JourneyStore
from .model import LIVE, RunState, StepState
from .stats import Counts, add_counts, day_metric, waiting_left
from .tables import runs, step_attempts, tokens, waits

__all__ = ["Goals"]

log = structlog.get_logger("overture.orchestrator")
_LIVE = tuple(s.value for s in LIVE)


class Goals:
    """Converts live runs whose goal event arrives."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, journeys: JourneyStore) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._journeys = journeys

    async def convert(self, tenant: str, events: Sequence[event_pb2.Event]) -> int:
        """End, as converted, the live runs *events* are the goal of; returns how many."""
        wanted: dict[str, list[event_pb2.Event]] = {}
        names: set[str] = set()
        for event in events:
            journeys = await self._journeys.with_goal(tenant, event.event_type)
            if journeys:
                names.update(journeys)
                wanted.setdefault(event.subject_id, []).append(event)
        if not wanted:
            return 0
        r = runs
        async with self._db.connect() as conn:
            live = (await conn.execute(sa.select(r.c.run_id, r.c.journey, r.c.journey_version, r.c.subject_id, r.c.arms, r.c.current_step)
                                       .where((r.c.tenant == tenant) & any_of(conn, r.c.subject_id, wanted) & r.c.state.in_(_LIVE)
                                              & any_of(conn, r.c.journey, names)))).all()
        converted = []
        for run in live:
            goal = await self._goal_event(tenant, run, wanted.get(run.subject_id, []))
            if goal is not None:
                converted.append((run, goal))
        return await self._end(tenant, converted) if converted else 0

    async def _goal_event(self, tenant: str, run: Any, events: Sequence[event_pb2.Event]) -> event_pb2.Event | None:
        try:
            compiled = await self._journeys.compiled(tenant, run.journey, run.journey_version)
        except OvertureError:
            return None
        goal = compiled.spec.goal
        for event in events:
            if not compiled.spec.HasField("goal") or event.event_type != goal.event_type:
                continue
            if compiled.goal_filter is None:
                return event
            try:
                if evaluate_expression(compiled.goal_filter, {"attributes": struct_to_dict(event.attributes), "event_type": event.event_type}):
                    return event
            except rule_engine.EngineError:
                continue
        return None

    async def _end(self, tenant: str, converted: list[tuple[Any, event_pb2.Event]]) -> int:
        now = self._clock.now()
        r = runs
        counts: Counts = Counter()
        ended = 0
        async with self._db.begin() as conn:
            for run, event in converted:
                run_id = run.run_id
                result = await conn.execute(r.update().where((r.c.tenant == tenant) & (r.c.run_id == run_id) & r.c.state.in_(_LIVE)).values(
                    state=RunState.COMPLETED.value, current_step="", converted=True, goal=event.event_type, update_time=now))
                if not result.rowcount:
                    continue  # it ended meanwhile
                ended += 1
                left = (await conn.execute(tokens.delete().where((tokens.c.tenant == tenant) & (tokens.c.run_id == run_id))
                                           .returning(tokens.c.node, tokens.c.state))).all()
                await conn.execute(waits.delete().where((waits.c.tenant == tenant) & (waits.c.run_id == run_id)))
                step = run.current_step or "goal"
                await conn.execute(step_attempts.insert().values(
                    tenant=tenant, run_id=run_id, attempt_id=self._ids.new(), step_id=step, state=StepState.COMPLETED.value, decision_id="",
                    delivery_id="", outcome=f"converted: goal event {event.event_type} ({event.event_id})", error="", start_time=now,
                    end_time=now, wake_time=None, edge="goal", detail={"output": {"event_id": event.event_id}}))
                ident = (run.journey, run.journey_version)
                counts[(*ident, "", "converted")] += 1
                counts[(*ident, "", day_metric(now, "converted"))] += 1
                counts[(*ident, "", "completed")] += 1
                counts.update(waiting_left(ident, left))
                for arm in run.arms or ():
                    counts[(*ident, "", f"arm:{arm}:converted")] += 1
            await add_counts(conn, tenant, counts)
        if ended:
            log.info("runs.converted", count=ended)
        return ended
