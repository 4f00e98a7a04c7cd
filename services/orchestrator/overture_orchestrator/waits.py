"""Ending waits early, from the event stream: an awaited event arrives
(wait-for-event), or the subject's profile changes (wait-until re-checks).

For each batch of events, one query finds the registered waits of the
batch's (event type, subject) pairs; a wait-for-event's filter is checked
against the event; the matched tokens are moved to RESUMED and due now in
one transaction, with the event kept in the run's context for later steps
(``steps.<step id>.event``). Only a token nobody is executing (no lease)
and still waiting at that step is moved, so a wait that has just timed out
is not resumed as well: the first of the two wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import rule_engine
import sqlalchemy as sa
import structlog

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database, any_param, built_once
from overture_runtime.errors import OvertureError
from overture_runtime.protojson import struct_to_dict

from .definition import evaluate_expression
from .journeys import JourneyStore
from .model import TokenState
from .recording import write_context
from .tables import tokens, waits

__all__ = ["PROFILE_EVENTS", "Waits", "waiting_for"]

log = structlog.get_logger("overture.orchestrator")
PROFILE_EVENTS = ("identify", "consent.granted", "consent.revoked", "segment.entered", "segment.exited")
"""Event types that change a profile (applied before they reach the stream): they re-check wait-until steps."""
_ANY_PROFILE_CHANGE = ""


_WAITING = built_once(lambda on_postgresql: sa.select(waits).where(
    (waits.c.tenant == sa.bindparam("tenant")) & any_param(waits.c.event_type, "event_types", on_postgresql=on_postgresql)
    & any_param(waits.c.subject_id, "subjects", on_postgresql=on_postgresql)))


def waiting_for(conn: Any, tenant: str, event_types: Iterable[str], subjects: Iterable[str]) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The statement, and its parameters, that reads the waits of *tenant*
    for any of *event_types* by any of *subjects*, on the (tenant, event
    type, subject) index: one statement whatever the batch, built once
    (:func:`overture_runtime.db.built_once`)."""
    return _WAITING(conn), {
        "tenant": tenant, "event_types": sorted(set(event_types)), "subjects": sorted(set(subjects))}


class Waits:
    """Resumes waiting tokens from events."""

    def __init__(self, db: Database, clock: Clock, journeys: JourneyStore, *, wake: Callable[[], None]) -> None:
        self._db = db
        self._clock = clock
        self._journeys = journeys
        self._wake = wake

    async def resume(self, tenant: str, events: Sequence[event_pb2.Event]) -> int:
        """Resume the tokens *events* end the wait of; returns how many."""
        types = {e.event_type for e in events}
        if types & set(PROFILE_EVENTS):
            types.add(_ANY_PROFILE_CHANGE)
        subjects = {e.subject_id for e in events}
        if not subjects:
            return 0
        async with self._db.connect() as conn:
            found = (await conn.execute(*waiting_for(conn, tenant, types, subjects))).all()
        if not found:
            return 0
        by_key: dict[tuple[str, str], list[event_pb2.Event]] = {}
        for event in events:
            by_key.setdefault((event.event_type, event.subject_id), []).append(event)
            if event.event_type in PROFILE_EVENTS:
                by_key.setdefault((_ANY_PROFILE_CHANGE, event.subject_id), []).append(event)
        matches: list[tuple[Any, event_pb2.Event]] = []
        for row in found:
            for event in by_key.get((row.event_type, row.subject_id), []):
                if row.event_type == _ANY_PROFILE_CHANGE or await self._passes(tenant, row, event):
                    matches.append((row, event))
                    break
        return await self._move(tenant, matches) if matches else 0

    async def _passes(self, tenant: str, row: Any, event: event_pb2.Event) -> bool:
        try:
            compiled = await self._journeys.compiled(tenant, row.journey, row.journey_version)
        except OvertureError:
            return False
        rule: rule_engine.Rule | None = compiled.conditions.get(row.step_id)
        if rule is None:
            return True
        try:
            return evaluate_expression(rule, {"attributes": struct_to_dict(event.attributes), "event_type": event.event_type})
        except rule_engine.EngineError:
            return False

    async def _move(self, tenant: str, matches: list[tuple[Any, event_pb2.Event]]) -> int:
        now = self._clock.now()
        async with self._db.begin() as conn:
            if conn.dialect.name == "postgresql":
                moved = await self._move_together(conn, tenant, matches, now)
            else:
                moved = await self._move_one_by_one(conn, tenant, matches, now)
            kept = [(row, event) for row, event in matches if (row.run_id, row.token) in moved]
            await write_context(conn, [dict(tenant=tenant, run_id=row.run_id, key=f"{row.step_id}.event", value=_event_json(event))
                                       for row, event in kept if row.event_type != _ANY_PROFILE_CHANGE])
        if kept:
            log.info("waits.resumed", count=len(kept))
            self._wake()
        return len(kept)

    @staticmethod
    async def _move_together(conn: Any, tenant: str, matches: list[tuple[Any, event_pb2.Event]], now: Any) -> set[tuple[str, int]]:
        """One statement: the matched tokens still waiting at their step, unleased, become RESUMED and due now, and their waits go."""
        rows = (await conn.execute(_RESUME, {
            "tenant": tenant, "now": now, "resumed": TokenState.RESUMED.value, "waiting": TokenState.WAITING.value,
            "runs": [r.run_id for r, _ in matches], "tokens": [r.token for r, _ in matches], "nodes": [r.step_id for r, _ in matches],
        })).all()
        return {(r.run_id, r.token) for r in rows}

    @staticmethod
    async def _move_one_by_one(conn: Any, tenant: str, matches: list[tuple[Any, event_pb2.Event]], now: Any) -> set[tuple[str, int]]:
        t = tokens
        moved = set()
        for row, _ in matches:
            result = await conn.execute(t.update().where(
                (t.c.tenant == tenant) & (t.c.run_id == row.run_id) & (t.c.token == row.token) & (t.c.node == row.step_id)
                & (t.c.state == TokenState.WAITING.value) & t.c.lease_owner.is_(None)
            ).values(state=TokenState.RESUMED.value, due_time=now))
            if result.rowcount:
                moved.add((row.run_id, row.token))
                await conn.execute(waits.delete().where((waits.c.tenant == tenant) & (waits.c.run_id == row.run_id)
                                                        & (waits.c.token == row.token)))
        return moved


_RESUME = sa.text(
    "WITH moved AS ("
    " UPDATE orchestrator_tokens AS t SET state = :resumed, due_time = :now"
    " FROM unnest(CAST(:runs AS text[]), CAST(:tokens AS smallint[]), CAST(:nodes AS text[])) AS m(run_id, token, node)"
    " WHERE t.tenant = :tenant AND t.run_id = m.run_id AND t.token = m.token AND t.node = m.node"
    " AND t.state = :waiting AND t.lease_owner IS NULL RETURNING t.run_id, t.token),"
    " gone AS (DELETE FROM orchestrator_waits AS w USING moved WHERE w.tenant = :tenant AND w.run_id = moved.run_id"
    " AND w.token = moved.token)"
    " SELECT run_id, token FROM moved")


def _event_json(event: event_pb2.Event) -> dict[str, Any]:
    """The event as later steps read it (``steps.<id>.event``)."""
    return {"event_id": event.event_id, "event_type": event.event_type, "attributes": struct_to_dict(event.attributes),
            "occurred_at": event.occurred_at.ToJsonString() if event.HasField("occurred_at") else ""}
