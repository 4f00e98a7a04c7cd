"""The durable event log: committing batches, reading events back, and the
relay that publishes committed events to the Redis stream.

"Accepted" means committed to the database: a batch is acknowledged only
after its transaction commits. The relay publishes in log order and marks
what it published; what is committed and not marked is published again
after a crash, so a consumer may see an event twice (and dedupes by id),
but never misses one.

On PostgreSQL the inserts go through a small asyncpg pool of their own, as
one ``INSERT ... SELECT FROM unnest(...)`` statement each, committed on its
own with the server's (synchronous) commit: one round trip per insert. A
batch of at least ``DIRECT_BATCH`` events is inserted as it is, on its own
connection, so that several batches are written at once; smaller ones are
grouped with their neighbours (group commit) into one insert.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import hiredis
import redis.asyncio as aioredis
import sqlalchemy as sa
import structlog
from redis.exceptions import NoScriptError
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import SERVER_SETTINGS, Database, insert_ignore
from overture_runtime.group_commit import GroupWriter
from overture_runtime.redis import Keys

from .normalize import PROFILE_EVENT_TYPES, NormalizedEvent
from .tables import events, relay_state

__all__ = ["DIRECT_BATCH", "EVENT_STREAM", "EventLog", "Relay", "StoredEvent"]

log = structlog.get_logger("overture.ingest")
EVENT_STREAM = "events"
"""The name of the partitioned event stream."""
_STREAM_MAXLEN = 1_000_000


_TENANTS = sa.text("""
WITH RECURSIVE tenants(tenant) AS (
  SELECT min(tenant) FROM ingest_events
  UNION ALL
  SELECT (SELECT min(e.tenant) FROM ingest_events e WHERE e.tenant > tenants.tenant) FROM tenants WHERE tenants.tenant IS NOT NULL
)
SELECT tenant FROM tenants WHERE tenant IS NOT NULL
""")
"""The tenants with events, one index probe each (a skip scan of ingest_events_window)."""
_RELAY_LOCK = "hashtext('overture-ingest-relay')"
_TAKE_LOCK = (f"SELECT pg_try_advisory_xact_lock({_RELAY_LOCK}), "
              "set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)")
"""One relay publishes at a time, so that a subject's events keep their order.
The same statement leaves the planner, for this transaction, one way to take
the next events: down ingest_events_unpublished in order. On statistics
taken before a backlog it read every unpublished event and sorted them, for
each batch (85 ms a batch behind 300,000; 13 ms in order)."""
# Take the next unpublished events and mark them, in one statement (the
# relay's transaction is rolled back if they cannot be appended to the
# stream). The ids are picked first, as an array, so the update probes the
# primary key for them whatever the planner thinks of the table's size.
#
# They are picked in (txid, seq) order from the relay's floor, not from the
# start of ingest_events_unpublished: each published event leaves a dead
# entry in that index until a VACUUM, and reading them all on every cycle
# grew with the log. The same statement raises the floor: to the oldest
# running transaction's id (pg_snapshot_xmin of the statement's snapshot:
# every lower txid has committed, visible here, or aborted) when it took all
# there was, else to no further than the last txid it took (ADR 0023).
_TAKE_UNPUBLISHED = f"""
WITH state AS (SELECT floor FROM ingest_relay_state WHERE name = '{EVENT_STREAM}'),
picked AS (
  SELECT seq, txid FROM ingest_events
  WHERE published_at IS NULL AND txid >= coalesce((SELECT floor FROM state), 0)
  ORDER BY txid, seq LIMIT $2
),
horizon AS (
  SELECT CASE WHEN (SELECT count(*) FROM picked) < $2 THEN x.xmin ELSE least(x.xmin, (SELECT max(txid) FROM picked)) END AS floor
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) x
),
raised AS (
  UPDATE ingest_relay_state SET floor = horizon.floor FROM horizon, state
  WHERE name = '{EVENT_STREAM}' AND horizon.floor > state.floor
)
UPDATE ingest_events SET published_at = $1 WHERE seq = ANY(ARRAY(SELECT seq FROM picked))
RETURNING seq, txid, tenant, event_id, partition, payload
"""
"""The take, for asyncpg: $1 the publication time, $2 the batch size."""
DIRECT_BATCH = 50
"""Batches at least this large are inserted on their own, not grouped."""
_COLUMNS = ("tenant", "event_id", "event_type", "original_event_type", "subject_id", "occurred_at", "received_at", "commit_time",
            "source", "id_derived", "partition", "payload", "profile_pending")
_TYPES = ("text", "text", "text", "text", "text", "timestamptz", "timestamptz", "timestamptz", "text", "boolean", "integer", "bytea", "boolean")
# published_at and profile_applied_at start NULL (the column defaults).
_UNNEST = (
    f"INSERT INTO ingest_events ({', '.join(_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'${i + 1}::{t}[]' for i, t in enumerate(_TYPES))}) "
    "ON CONFLICT (tenant, event_id) DO NOTHING RETURNING tenant, event_id"
)


@dataclass(frozen=True)
class StoredEvent:
    """One row of the log."""

    event: event_pb2.Event
    original_event_type: str
    partition: int
    commit_time: dt.datetime
    published_at: dt.datetime | None
    profile_applied_at: dt.datetime | None

    @classmethod
    def of_row(cls, row: Any) -> StoredEvent:
        """The event of a row of ``ingest_events``."""
        return cls(
            event=event_pb2.Event.FromString(row.payload), original_event_type=row.original_event_type,
            partition=row.partition, commit_time=row.commit_time, published_at=row.published_at,
            profile_applied_at=row.profile_applied_at,
        )


class EventLog:
    """The tenant-scoped durable log of accepted events.

    Batches from concurrent callers are committed together (group commit):
    one transaction, one round trip, one WAL flush for all of them, and each
    caller is answered only after that commit."""

    def __init__(self, db: Database, clock: Clock, *, connections: int = 4) -> None:
        self._db = db
        self._clock = clock
        # max_delay 0: a group is whatever queued while the previous insert ran.
        self._writer = GroupWriter(self._insert, key=lambda row: (row["tenant"], row["event_id"]), name="events", max_delay=0.0)
        self._dsn = None if db.is_sqlite else db.asyncpg_dsn
        self._connections = connections
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    @property
    def db(self) -> Database:
        """The log's database."""
        return self._db

    def start(self) -> None:
        """Start the group-commit writer."""
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued and stop."""
        await self._writer.close()
        if self._pool is not None:
            await self._pool.close()

    async def commit(self, tenant: str, batch: Sequence[NormalizedEvent]) -> set[str]:
        """Store *batch* durably; return the ids that were new. Returns only
        after the insert committed."""
        if not batch:
            return set()
        now = self._clock.now()
        if self._dsn is not None and len(batch) >= DIRECT_BATCH:
            ids = [n.event.event_id for n in batch]
            inserted = await self._fetch([
                [tenant] * len(batch), ids, [n.event.event_type for n in batch], [n.original_event_type for n in batch],
                [n.event.subject_id for n in batch], [n.occurred_at for n in batch], [n.received_at for n in batch], [now] * len(batch),
                [n.event.source for n in batch], [n.event.id_derived for n in batch], [n.partition for n in batch],
                [n.event.SerializeToString() for n in batch], [n.event.event_type in PROFILE_EVENT_TYPES for n in batch],
            ])
            return {event_id for _, event_id in inserted}
        rows = [
            dict(
                tenant=tenant, event_id=n.event.event_id, event_type=n.event.event_type,
                original_event_type=n.original_event_type, subject_id=n.event.subject_id,
                occurred_at=n.occurred_at, received_at=n.received_at,
                commit_time=now, source=n.event.source, id_derived=n.event.id_derived, partition=n.partition,
                payload=n.event.SerializeToString(), profile_pending=n.event.event_type in PROFILE_EVENT_TYPES,
            )
            for n in batch
        ]
        fresh = await self._writer.write(rows)
        return {str(row["event_id"]) for row, new in zip(rows, fresh, strict=True) if new}

    async def _fetch(self, columns: list[list[Any]]) -> list[tuple[str, str]]:
        """Run the insert over *columns* (in ``_COLUMNS`` order); the (tenant, id) pairs inserted."""
        pool = self._pool
        if pool is None:
            async with self._opening:
                if self._pool is None:
                    assert self._dsn is not None
                    # No reset query on release (a round trip per insert): the
                    # pool runs only the one-statement insert, which leaves no
                    # session state (locks, cursors, listeners, settings).
                    self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._connections, reset=_keep_session,
                                                           server_settings={"application_name": "overture-ingest-log"})
                pool = self._pool
        async with pool.acquire() as conn:
            return [(r[0], r[1]) for r in await conn.fetch(_UNNEST, *columns)]

    async def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        if self._dsn is not None:
            return set(await self._fetch([[row[name] for row in rows] for name in _COLUMNS]))
        async with self._db.begin() as conn:
            statement = insert_ignore(conn, events, index_elements=["tenant", "event_id"]).returning(events.c.tenant, events.c.event_id)
            result = await conn.execute(statement, [{**row, "published_at": None, "profile_applied_at": None} for row in rows])
            return {(r.tenant, r.event_id) for r in result}

    async def get(self, tenant: str, event_id: str) -> StoredEvent | None:
        """One accepted event."""
        t = events
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & (t.c.event_id == event_id)))).first()
        return StoredEvent.of_row(row) if row is not None else None

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
        deleted = 0
        async with self._db.begin() as conn:
            # Tenant by tenant, each one range of ingest_events_window.
            for (tenant,) in (await conn.execute(_TENANTS)).all():
                result = await conn.execute(t.delete().where(
                    (t.c.tenant == tenant) & (t.c.commit_time < cutoff) & t.c.published_at.is_not(None) & ~t.c.profile_pending))
                deleted += int(result.rowcount)
        return deleted

    async def mark_profile_applied(self, tenant: str, event_ids: Sequence[str]) -> None:
        """Record that these events' profile updates were applied."""
        if not event_ids:
            return
        t = events
        async with self._db.begin() as conn:
            await conn.execute(t.update().where((t.c.tenant == tenant) & t.c.event_id.in_(event_ids)).values(
                profile_pending=False, profile_applied_at=self._clock.now()))


_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = #KEYS
for i = 2, n do
  local at = 2 + (i - 2) * 3
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], '*', 'tenant', ARGV[at + 1], 'event_id', ARGV[at + 2], 'event', ARGV[at + 3])
end
return n - 1
"""
"""If Redis still holds the relay's epoch (KEYS[1], ARGV[1]), XADD each entry
(KEYS: its stream; ARGV: the trim length, then tenant, id and payload per
entry), in order; -1 when it does not: Redis lost the stream."""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """asyncpg's pool reset, for a pool whose statements leave no session state."""


class _StreamLost(Exception):
    """Redis no longer holds the relay's epoch: the batch is not appended."""


class Relay:
    """Publishes committed events to the partitioned stream, in log order.

    On PostgreSQL, an advisory lock makes one relay replica the publisher at
    a time, so that a subject's events keep their order across replicas.
    Each cycle there is one transaction on the relay's own asyncpg
    connection (the lock, the take, the commit) and one script call to
    Redis, which appends the batch only if Redis still holds the epoch.

    Redis may lose the stream (a flush, a restart without persistence). The
    relay keeps a random epoch marker both in PostgreSQL and in Redis; when
    Redis no longer holds it, every event published within the republish
    horizon is published again. Consumers deduplicate by event id.
    """

    def __init__(
        self, db: Database, redis: aioredis.Redis, keys: Keys, clock: Clock, *, batch_size: int = 500,
        republish_horizon: dt.timedelta = dt.timedelta(hours=24), gather: float = 0.01,
    ) -> None:
        self._db = db
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._batch = batch_size
        self._gather = gather
        self._horizon = republish_horizon
        self._epoch_key = f"{keys.namespace}:stream:{EVENT_STREAM}:epoch"
        self.wake = asyncio.Event()
        self._epoch: str | None = None
        """The epoch last seen in PostgreSQL (committed) and Redis alike."""
        self._conn: asyncpg.Connection | None = None

    async def _redis_epoch(self) -> str | None:
        """The epoch Redis holds, None when it has none (it lost it, or never had one)."""
        current: Any = await self._redis.get(self._epoch_key)
        return current.decode() if isinstance(current, bytes) else current

    async def _epoch_holds(self, epoch: str | None) -> bool:
        """Whether Redis still holds *epoch*, the one this relay saw in
        PostgreSQL too. PostgreSQL's epoch changes only with Redis's (by the
        relay that holds the lock), so then neither changed, and nothing was lost."""
        current = await self._redis_epoch()
        return current is not None and current == epoch

    async def check_epoch(self, conn: AsyncConnection) -> str:
        """Detect a Redis that lost the stream, and mark recent events
        unpublished; return the epoch found, or written, in PostgreSQL and Redis
        alike (the relay's once *conn*'s transaction commits)."""
        current = await self._redis_epoch()
        stored = (await conn.execute(sa.select(relay_state.c.epoch).where(relay_state.c.name == EVENT_STREAM))).scalar()
        if stored is not None and current is not None and current == stored:
            return current
        now = self._clock.now()
        epoch = secrets.token_hex(16)
        if stored is not None:  # we published before, and Redis forgot: it lost data
            result = await conn.execute(events.update().where(events.c.published_at >= now - self._horizon).values(published_at=None))
            log.warning("relay.stream_lost", republishing=int(result.rowcount), horizon_hours=self._horizon.total_seconds() / 3600)
        # A new row: its floor is 0, so the events just reset are read again.
        await conn.execute(relay_state.delete().where(relay_state.c.name == EVENT_STREAM))
        await conn.execute(relay_state.insert().values(name=EVENT_STREAM, epoch=epoch, update_time=now))
        await self._redis.set(self._epoch_key, epoch)
        return epoch

    async def publish_once(self) -> int:
        """Publish one batch of unpublished events; return how many."""
        try:
            for _ in range(2):
                try:
                    if self._db.is_sqlite:
                        return await self._publish_sqlite()
                    if self._epoch is None and not await self._confirm_epoch():
                        return 0  # another replica holds the lock
                    return await self._publish_postgres()
                except _StreamLost:
                    self._epoch = None  # nothing was appended or marked: check the epoch (republishing), then publish
            return 0
        except BaseException:
            self._epoch = None  # what check_epoch wrote may be rolled back: check again next time
            raise

    async def _confirm_epoch(self) -> bool:
        """Under the relay's lock, check the epoch in a transaction of its own
        (:meth:`check_epoch`); False when another replica holds the lock."""
        async with self._db.begin() as conn:
            if not (await conn.exec_driver_sql(_TAKE_LOCK)).scalar():
                return False
            epoch = await self.check_epoch(conn)
        self._epoch = epoch
        return True

    async def _connection(self) -> asyncpg.Connection:
        """The relay's own connection, opened again when it was lost."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._db.asyncpg_dsn, server_settings={
                **SERVER_SETTINGS, "application_name": "overture-ingest-relay"})
        return self._conn

    async def close(self) -> None:
        """Close the relay's connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _publish_postgres(self) -> int:
        conn = await self._connection()
        try:
            async with conn.transaction():
                # The lock first, in its own statement: the statement that
                # takes the events then has a snapshot from after the last
                # holder's commit (READ COMMITTED), so it sees what that relay
                # published or reset.
                if not await conn.fetchval(_TAKE_LOCK):
                    return 0
                rows = await conn.fetch(_TAKE_UNPUBLISHED, self._clock.now(), self._batch)
                if not rows:
                    if not await self._epoch_holds(self._epoch):  # idle: notice a Redis that lost the stream all the same
                        raise _StreamLost
                    return 0
                rows.sort(key=lambda r: (r[1], r[0]))  # (txid, seq)
                # Appended before the transaction commits: if this fails, the
                # events stay unpublished; if the commit fails after it, they
                # are appended again, and consumers deduplicate by event id.
                stream = self._keys.stream
                await self._append([(stream(EVENT_STREAM, r[4]), r[2], r[3], r[5]) for r in rows], epoch=self._epoch)
                return len(rows)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            conn.terminate()  # a connection in an unknown state is not reused (the next cycle opens another)
            self._conn = None
            raise

    async def _publish_sqlite(self) -> int:
        t = events
        async with self._db.begin() as conn:
            epoch = await self.check_epoch(conn)
            rows = (await conn.execute(
                sa.select(t.c.seq, t.c.tenant, t.c.event_id, t.c.partition, t.c.payload)
                .where(t.c.published_at.is_(None)).order_by(t.c.txid, t.c.seq).limit(self._batch)
            )).all()
            if rows:
                await conn.execute(t.update().where(t.c.seq.in_([r.seq for r in rows])).values(published_at=self._clock.now()))
                await self._append([(self._keys.stream(EVENT_STREAM, r.partition), r.tenant, r.event_id, r.payload) for r in rows],
                                   epoch=epoch)  # what check_epoch just found or wrote, in this transaction
        self._epoch = epoch
        return len(rows)

    async def _append(self, entries: list[tuple[str, str, str, bytes]], *, epoch: str | None) -> None:
        """XADD each (stream, tenant, event id, payload), in order, in one round
        trip, if Redis still holds *epoch* (else raise
        :class:`_StreamLost`): one script call (:data:`_APPEND`) packed by
        hiredis on a pooled connection, with one reply where a pipeline reads
        one per entry. A Redis Cluster client, whose partitions live on
        several nodes, checks the epoch, then sends a pipeline of XADDs."""
        redis = self._redis
        pool = getattr(redis, "connection_pool", None)
        if not isinstance(redis, aioredis.Redis) or pool is None:
            if not await self._epoch_holds(epoch):
                raise _StreamLost
            pipe = redis.pipeline(transaction=False)
            for stream, tenant, event_id, payload in entries:
                pipe.execute_command("XADD", stream, "MAXLEN", "~", _STREAM_MAXLEN, "*",  # type: ignore[no-untyped-call]
                                     "tenant", tenant, "event_id", event_id, "event", payload)
            await pipe.execute()
            return
        args: list[Any] = [epoch or "", _STREAM_MAXLEN]
        for _, tenant, event_id, payload in entries:
            args += (tenant, event_id, payload)
        command = hiredis.pack_command(("EVALSHA", _APPEND_SHA, len(entries) + 1, self._epoch_key, *(e[0] for e in entries), *args))
        conn = await pool.get_connection()
        try:
            for attempt in range(2):
                await conn.send_packed_command(command)
                try:
                    appended = await conn.read_response()
                    break
                except NoScriptError:  # a Redis that restarted or flushed its scripts
                    if attempt:
                        raise
                    load: tuple[Any, ...] = ("SCRIPT", "LOAD", _APPEND)
                    await conn.send_packed_command(hiredis.pack_command(load))
                    await conn.read_response()
        except BaseException:
            await conn.disconnect()  # a reply may be left unread: never reuse the connection
            raise
        finally:
            await pool.release(conn)
        if appended == -1:
            raise _StreamLost

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until *stopping* is set; sleep until woken when idle.

        After a short batch the relay lets events gather for ``gather``
        seconds before the next one: one transaction per small ingest batch
        cost a third of ingest's CPU at 100 HTTP requests/s. That adds at most
        this much to publication, and nothing to acknowledgement."""
        while not stopping.is_set():
            published = await self.publish_once()
            if published:
                log.debug("relay.published", count=published)
                if published < self._batch:
                    await asyncio.sleep(self._gather)
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
