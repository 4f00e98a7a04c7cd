"""The durable event log: committing batches, reading events back, and the
relay that publishes committed events to the Redis stream.

"Accepted" means committed to the database: a batch is acknowledged only
after its transaction commits. The relay publishes in log order and marks
what it published; what is committed and not marked is published again
after a crash, so a consumer may see an event twice (and dedupes by id),
but never misses one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database, insert_ignore
from overture_runtime.group_commit import GroupWriter
from overture_runtime.redis import Keys

from .normalize import PROFILE_EVENT_TYPES, NormalizedEvent
from .tables import events, relay_state

__all__ = ["EVENT_STREAM", "EventLog", "Relay"]

log = structlog.get_logger("overture.ingest")
EVENT_STREAM = "events"
"""The name of the partitioned event stream."""
_STREAM_MAXLEN = 1_000_000


_UNNEST = sa.text("""
    INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at, commit_time,
                               source, id_derived, partition, payload, published_at, profile_pending, profile_applied_at)
    SELECT * FROM unnest(CAST(:tenant AS text[]), CAST(:event_id AS text[]), CAST(:event_type AS text[]),
                         CAST(:original_event_type AS text[]), CAST(:subject_id AS text[]), CAST(:occurred_at AS timestamptz[]),
                         CAST(:received_at AS timestamptz[]), CAST(:commit_time AS timestamptz[]), CAST(:source AS text[]),
                         CAST(:id_derived AS boolean[]), CAST(:partition AS integer[]), CAST(:payload AS bytea[]),
                         CAST(:published_at AS timestamptz[]), CAST(:profile_pending AS boolean[]), CAST(:profile_applied_at AS timestamptz[]))
    ON CONFLICT (tenant, event_id) DO NOTHING
    RETURNING tenant, event_id
""")


@dataclass(frozen=True)
class StoredEvent:
    """One row of the log."""

    event: event_pb2.Event
    original_event_type: str
    partition: int
    commit_time: dt.datetime
    published_at: dt.datetime | None
    profile_applied_at: dt.datetime | None


class EventLog:
    """The tenant-scoped durable log of accepted events.

    Batches from concurrent callers are committed together (group commit):
    one transaction, one round trip, one WAL flush for all of them, and each
    caller is answered only after that commit."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._writer = GroupWriter(self._insert, key=lambda row: (row["tenant"], row["event_id"]), name="events", max_delay=0.001)

    def start(self) -> None:
        """Start the group-commit writer."""
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued and stop."""
        await self._writer.close()

    async def commit(self, tenant: str, batch: Sequence[NormalizedEvent]) -> set[str]:
        """Store *batch* durably; return the ids that were new."""
        if not batch:
            return set()
        now = self._clock.now()
        rows = [
            dict(
                tenant=tenant, event_id=n.event.event_id, event_type=n.event.event_type,
                original_event_type=n.original_event_type, subject_id=n.event.subject_id,
                occurred_at=n.occurred_at, received_at=n.received_at,
                commit_time=now, source=n.event.source, id_derived=n.event.id_derived, partition=n.partition,
                payload=n.event.SerializeToString(), published_at=None,
                profile_pending=n.event.event_type in PROFILE_EVENT_TYPES, profile_applied_at=None,
            )
            for n in batch
        ]
        fresh = await self._writer.write(rows)
        return {str(row["event_id"]) for row, new in zip(rows, fresh, strict=True) if new}

    async def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        async with self._db.begin() as conn:
            if conn.dialect.name == "postgresql":
                # One statement over arrays: one round trip per group.
                columns = {name: [row[name] for row in rows] for name in rows[0]}
                return {(r.tenant, r.event_id) for r in await conn.execute(_UNNEST, columns)}
            statement = insert_ignore(conn, events, index_elements=["tenant", "event_id"]).returning(events.c.tenant, events.c.event_id)
            result = await conn.execute(statement, rows)
            return {(r.tenant, r.event_id) for r in result}

    async def get(self, tenant: str, event_id: str) -> StoredEvent | None:
        """One accepted event."""
        t = events
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & (t.c.event_id == event_id)))).first()
        if row is None:
            return None
        return StoredEvent(
            event=event_pb2.Event.FromString(row.payload), original_event_type=row.original_event_type,
            partition=row.partition, commit_time=row.commit_time, published_at=row.published_at,
            profile_applied_at=row.profile_applied_at,
        )

    async def pending_profile_events(self, *, older_than: dt.timedelta, limit: int = 500) -> list[tuple[str, event_pb2.Event]]:
        """Profile events whose update has not been applied, oldest first."""
        t = events
        cutoff = self._clock.now() - older_than
        async with self._db.connect() as conn:
            rows = (await conn.execute(
                sa.select(t.c.tenant, t.c.payload).where(t.c.profile_pending & (t.c.commit_time <= cutoff)).order_by(t.c.seq).limit(limit)
            )).all()
        return [(r.tenant, event_pb2.Event.FromString(r.payload)) for r in rows]

    async def purge(self, *, older_than: dt.timedelta) -> int:
        """Delete published events committed before the retention window; their
        ids stop deduplicating. Returns how many were deleted."""
        t = events
        cutoff = self._clock.now() - older_than
        async with self._db.begin() as conn:
            result = await conn.execute(t.delete().where((t.c.commit_time < cutoff) & t.c.published_at.is_not(None) & ~t.c.profile_pending))
        return int(result.rowcount)

    async def mark_profile_applied(self, tenant: str, event_ids: Sequence[str]) -> None:
        """Record that these events' profile updates were applied."""
        if not event_ids:
            return
        t = events
        async with self._db.begin() as conn:
            await conn.execute(t.update().where((t.c.tenant == tenant) & t.c.event_id.in_(event_ids)).values(
                profile_pending=False, profile_applied_at=self._clock.now()))


class Relay:
    """Publishes committed events to the partitioned stream, in log order.

    On PostgreSQL, an advisory lock makes one relay replica the publisher at
    a time, so that a subject's events keep their order across replicas.

    Redis may lose the stream (a flush, a restart without persistence). The
    relay keeps a random epoch marker both in PostgreSQL and in Redis; when
    Redis no longer holds it, every event published within the republish
    horizon is published again. Consumers deduplicate by event id.
    """

    def __init__(
        self, db: Database, redis: aioredis.Redis, keys: Keys, clock: Clock, *, batch_size: int = 500,
        republish_horizon: dt.timedelta = dt.timedelta(hours=24),
    ) -> None:
        self._db = db
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._batch = batch_size
        self._horizon = republish_horizon
        self._epoch_key = f"{keys.namespace}:stream:{EVENT_STREAM}:epoch"
        self.wake = asyncio.Event()

    async def check_epoch(self, conn: AsyncConnection) -> int:
        """Detect a Redis that lost the stream; mark recent events unpublished. Returns how many."""
        stored = (await conn.execute(sa.select(relay_state.c.epoch).where(relay_state.c.name == EVENT_STREAM))).scalar()
        current: Any = await self._redis.get(self._epoch_key)
        if stored is not None and current is not None and (current.decode() if isinstance(current, bytes) else current) == stored:
            return 0
        now = self._clock.now()
        epoch = secrets.token_hex(16)
        reset = 0
        if stored is not None:  # we published before, and Redis forgot: it lost data
            result = await conn.execute(events.update().where(events.c.published_at >= now - self._horizon).values(published_at=None))
            reset = int(result.rowcount)
            log.warning("relay.stream_lost", republishing=reset, horizon_hours=self._horizon.total_seconds() / 3600)
        await conn.execute(relay_state.delete().where(relay_state.c.name == EVENT_STREAM))
        await conn.execute(relay_state.insert().values(name=EVENT_STREAM, epoch=epoch, update_time=now))
        await self._redis.set(self._epoch_key, epoch)
        return reset

    async def publish_once(self) -> int:
        """Publish one batch of unpublished events; return how many."""
        t = events
        async with self._db.begin() as conn:
            if conn.dialect.name == "postgresql":
                locked = (await conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(hashtext('overture-ingest-relay'))"))).scalar()
                if not locked:
                    return 0
            await self.check_epoch(conn)
            rows = (await conn.execute(
                sa.select(t.c.seq, t.c.tenant, t.c.event_id, t.c.partition, t.c.payload)
                .where(t.c.published_at.is_(None)).order_by(t.c.seq).limit(self._batch)
            )).all()
            if not rows:
                return 0
            pipe = self._redis.pipeline(transaction=False)
            for r in rows:
                fields: dict[Any, Any] = {"tenant": r.tenant, "event_id": r.event_id, "event": r.payload}
                pipe.xadd(self._keys.stream(EVENT_STREAM, r.partition), fields, maxlen=_STREAM_MAXLEN, approximate=True)
            await pipe.execute()
            await conn.execute(t.update().where(t.c.seq.in_([r.seq for r in rows])).values(published_at=self._clock.now()))
        return len(rows)

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until *stopping* is set; sleep until woken when idle."""
        while not stopping.is_set():
            published = await self.publish_once()
            if published:
                log.debug("relay.published", count=published)
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
