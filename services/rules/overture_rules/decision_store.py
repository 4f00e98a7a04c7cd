"""The stored decision records: written in group commits, read back by id
or subject, and marked as reservations are settled.

On PostgreSQL the records go through one connection of their own, opened
with ``synchronous_commit = off`` (ADR 0007: a decision costs no disk sync)
and used by the group writer alone. A small group is one ``INSERT ... SELECT
FROM unnest(...) ON CONFLICT DO NOTHING`` statement, one round trip; a group
of ``COPY_ROWS`` or more (a batch) is written with ``COPY``, a third of the
CPU per row here and in PostgreSQL, and only if an id in it already exists
(a repeated decision id that raced its first) is it inserted the other way. The
other connections of the pool keep synchronous commits for what must not
be lost (rule set versions, the audit log, profiles). On SQLite (``overture
dev``) the group goes through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import asyncpg
import sqlalchemy as sa

from overture.rules.v1 import decision_pb2
from overture_runtime.db import Database, any_of, any_param, built_once, insert_ignore
from overture_runtime.group_commit import GroupWriter

from .tables import decisions as decisions_table

__all__ = ["COLUMNS", "COPY_ROWS", "DecisionStore", "state_name"]

D = decision_pb2
COLUMNS = ("tenant", "decision_id", "rule_set", "version", "subject_id", "allowed", "mode", "reservation_state",
           "evaluate_time", "create_time", "record", "replay")
"""The columns of a decision row, in the order of the insert."""
_TYPES = ("text", "text", "text", "bigint", "text", "boolean", "text", "text", "timestamptz", "timestamptz", "bytea", "jsonb")
ASYNC_DELAY = 0.01
"""Not durable, a group gathers for this long: a record waits for no one, and a group shares one round trip."""
COPY_ROWS = 100
"""Groups at least this large are written with COPY."""
_UNNEST = (
    f"INSERT INTO rules_decisions ({', '.join(COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'${i + 1}::{t}[]' for i, t in enumerate(_TYPES))}) "
    "ON CONFLICT (tenant, decision_id) DO NOTHING RETURNING tenant, decision_id"
)
_RECORDS = built_once(lambda on_postgresql: sa.select(decisions_table.c.record).where(
    (decisions_table.c.tenant == sa.bindparam("tenant"))
    & any_param(decisions_table.c.decision_id, "decision_ids", on_postgresql=on_postgresql)))
"""A tenant's records of some decisions (``tenant``, ``decision_ids``), for the replay of a batch."""


def state_name(state: decision_pb2.ReservationState.ValueType) -> str:
    """``RESERVATION_STATE_HELD`` -> ``held``, as the column stores it."""
    return D.ReservationState.Name(state).removeprefix("RESERVATION_STATE_").lower()


class DecisionStore:
    """The ``rules_decisions`` table of one process. Not thread-safe."""

    def __init__(self, db: Database, *, durable: bool = True) -> None:
        self._db = db
        # Durable, max_delay 0: a group is whatever queued while the previous
        # one was being written, so a lone decision waits for no timer. Not
        # durable, nobody waits for the group, so it gathers (ADR 0010).
        self._writer = GroupWriter(self._insert, key=lambda row: (row["tenant"], row["decision_id"]), name="decisions",
                                   durable=durable, max_delay=0.0 if durable else ASYNC_DELAY)
        self._dsn = None if db.is_sqlite else db.asyncpg_dsn
        self._conn: asyncpg.Connection | None = None

    def start(self) -> None:
        """Start writing records in the background."""
        self._writer.start()

    async def close(self) -> None:
        """Flush queued records and close the writer's connection."""
        await self._writer.close()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, rows: Sequence[dict[str, Any]], records: Sequence[decision_pb2.Decision]) -> list[bool]:
        """Queue rows (durable: until committed); per row, whether it was new.
        A row holds the :data:`COLUMNS`, its ``replay`` as JSON text (or None)."""
        return await self._writer.write(rows, records)

    def pending(self, tenant: str, decision_id: str) -> decision_pb2.Decision | None:
        """A record queued and not yet inserted."""
        found: decision_pb2.Decision | None = self._writer.pending((tenant, decision_id))
        return found

    async def load_many(self, tenant: str, decision_ids: Sequence[str]) -> dict[str, decision_pb2.Decision]:
        """The records of *decision_ids* that exist (queued ones included)."""
        found: dict[str, decision_pb2.Decision] = {}
        for decision_id in decision_ids:
            queued = self.pending(tenant, decision_id)
            if queued is not None:
                found[decision_id] = queued
        rest = [d for d in decision_ids if d not in found]
        if rest:
            async with self._db.connect() as conn:
                rows = (await conn.execute(_RECORDS(conn), {"tenant": tenant, "decision_ids": sorted(set(rest))})).all()
            for row in rows:
                decision = D.Decision.FromString(row.record)
                found[decision.decision_id] = decision
        return found

    async def list_for_subject(
        self, tenant: str, subject_id: str, *, limit: int, before: tuple[dt.datetime, str] | None,
    ) -> list[decision_pb2.Decision]:
        """A subject's decisions, newest first (by when they were stored, then
        by id: ids are not always time-ordered), older than *before*, a
        (create time, decision id) cursor."""
        t = decisions_table
        query = sa.select(t.c.record).where((t.c.tenant == tenant) & (t.c.subject_id == subject_id))
        if before is not None:
            at, decision_id = before
            query = query.where((t.c.create_time < at) | ((t.c.create_time == at) & (t.c.decision_id < decision_id)))
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.create_time.desc(), t.c.decision_id.desc()).limit(limit))).all()
        return [D.Decision.FromString(r.record) for r in rows]

    async def mark_many(
        self, conn: Any, tenant: str, marks: Sequence[tuple[str, decision_pb2.ReservationState.ValueType, str]],
    ) -> dict[str, decision_pb2.Decision]:
        """Set records' reservation states (and who preempted them), in
        *conn*'s transaction: *marks* holds (decision id, state, preempted by
        or ""). Returns the records marked, by id; ids without a record are left out."""
        if not marks:
            return {}
        t = decisions_table
        ids = sorted({m[0] for m in marks})  # one lock order for every caller
        query = sa.select(t.c.decision_id, t.c.record).where((t.c.tenant == tenant) & any_of(conn, t.c.decision_id, ids))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        stored = {row.decision_id: row.record for row in (await conn.execute(query)).all()}
        marked: dict[str, decision_pb2.Decision] = {}
        updates = []
        for decision_id, state, preempted_by in marks:
            current = marked.get(decision_id)
            if current is not None:
                decision = current
            elif decision_id in stored:
                decision = D.Decision.FromString(stored[decision_id])
            else:
                queued = self.pending(tenant, decision_id)
                if queued is None:
                    continue
                decision = D.Decision()
                decision.CopyFrom(queued)
            decision.reservation_state = state
            if preempted_by:
                decision.preempted_by = preempted_by
            marked[decision_id] = decision
        for decision_id, decision in marked.items():
            record, state_text = decision.SerializeToString(), state_name(decision.reservation_state)
            if decision_id in stored or not await self._amend((tenant, decision_id), decision, record=record,
                                                              reservation_state=state_text):
                updates.append(dict(k_tenant=tenant, k_id=decision_id, v_state=state_text, v_record=record))
        if updates:
            await conn.execute(t.update().where((t.c.tenant == sa.bindparam("k_tenant")) & (t.c.decision_id == sa.bindparam("k_id")))
                               .values(reservation_state=sa.bindparam("v_state"), record=sa.bindparam("v_record")), updates)
        return marked

    async def _amend(self, key: tuple[str, str], decision: decision_pb2.Decision, **changes: Any) -> bool:
        """Change the queued row of *key*; False when it is not queued. A row
        whose group is being inserted is waited for: afterwards it is stored
        (False: update it) or queued again (the insert failed)."""
        while not self._writer.amend(key, decision, **changes):
            if not await self._writer.landed(key):
                return False
        return True

    async def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """Insert one group, skipping ids that exist; return the (tenant, id) inserted."""
        if self._dsn is None:
            values = [{**row, "replay": json.loads(row["replay"]) if row["replay"] is not None else None} for row in rows]
            async with self._db.begin() as conn:
                result = await conn.execute(insert_ignore(conn, decisions_table, index_elements=["tenant", "decision_id"]).returning(
                    decisions_table.c.tenant, decisions_table.c.decision_id), values)
                return {(r.tenant, r.decision_id) for r in result}
        columns = [[row[name] for row in rows] for name in COLUMNS]
        if self._conn is None or self._conn.is_closed():
            # Records are written without waiting for the WAL flush: a
            # PostgreSQL crash may lose the last moments of records (never
            # corrupt them); a rules-service crash loses nothing in the
            # default (durable) mode. See ADR 0007.
            self._conn = await asyncpg.connect(self._dsn, server_settings={
                "synchronous_commit": "off", "application_name": "overture-rules-decisions"})
        try:
            if len(rows) >= COPY_ROWS:
                try:
                    await self._conn.copy_records_to_table("rules_decisions", records=zip(*columns, strict=True), columns=COLUMNS)
                    return {(row["tenant"], row["decision_id"]) for row in rows}
                except asyncpg.UniqueViolationError:
                    pass  # nothing of the group was written: insert it skipping the ids that exist
            return {(r[0], r[1]) for r in await self._conn.fetch(_UNNEST, *columns)}
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            await self._conn.close(timeout=1)
            self._conn = None  # opened again for the next group
            raise
