"""The durable event log: committing batches, reading events back, and the
relay that publishes committed events to the Redis stream.

"Accepted" means committed to the database: a batch is acknowledged only
after its transaction commits. The relay publishes in log order and keeps
how far it published (on PostgreSQL a position of snapshots, ADR 0024; on
SQLite a mark per event); what is past the saved position is published
again after a crash, so a consumer may see an event twice (and dedupes by
id), but never misses one.

On PostgreSQL the inserts go through a small asyncpg pool of their own, as
one ``INSERT ... SELECT FROM unnest(...)`` statement each, committed on its
own with the server's (synchronous) commit: one round trip per insert. A
batch of at least ``DIRECT_BATCH`` events is inserted as it is, on its own
connection, so that several batches are written at once; smaller ones are
grouped with their neighbours (group commit) into one insert.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
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
from prometheus_client import Gauge
from redis.exceptions import NoScriptError
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import SERVER_SETTINGS, Database, insert_ignore
from overture_runtime.group_commit import GroupWriter
from overture_runtime.redis import Keys

from .normalize import PROFILE_EVENT_TYPES, NormalizedEvent
from .tables import events, relay_state, relay_ticks

__all__ = ["DIRECT_BATCH", "EVENT_STREAM", "EventLog", "Relay", "Snapshot", "StoredEvent", "stored_events"]

log = structlog.get_logger("overture.ingest")
RELAY_LAG = Gauge("overture_ingest_relay_lag_seconds",
                  "How long after its commit the relay's last batch reached the stream (its last event's commit time to the append); "
                  "0 when the relay found nothing to publish. It grows while the relay is behind.")
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
_LOCK = f"SELECT pg_try_advisory_lock({_RELAY_LOCK})"
"""One relay publishes at a time, so that a subject's events keep their order:
the lock of a session, taken on the relay's own connection and held while it
lives (ADR 0024)."""
_RELAY_SETTINGS = {"enable_bitmapscan": "off", "enable_sort": "off", "enable_seqscan": "off", "plan_cache_mode": "force_generic_plan",
                   "synchronous_commit": "off"}
"""The relay's connection leaves the planner one way to take the next events:
down ingest_events_unpublished in order. On statistics taken before a
backlog it read every waiting event and sorted them, for each batch (85 ms a
batch behind 300,000; 13 ms in order). With one way left, whatever the
statistics, the take is planned once (a generic plan), not on every cycle:
planning it cost PostgreSQL more than running it. A take's commit does not
wait for its WAL to be flushed: a position lost in a crash only publishes
again what consumers deduplicate (the epoch's transaction does wait)."""
# The take (ADR 0024): one statement, autocommitted, on the relay's connection.
# It saves the position the relay reached ($3..$6: everything up to it was
# appended to the stream; a crash before the next take publishes the last
# batch again, which consumers deduplicate), records a tick when asked ($7),
# and reads the next batch: the events that the window's upper snapshot sees
# and its lower one does not, after the cursor, in (txid, seq) order. A new
# window's upper snapshot is the statement's own, so it sees exactly what the
# statement reads; it is returned, with the events or alone.
#
# What the lower snapshot does not see is what was running when it was taken
# (its xip list, $10) and what began after (from its xmax): two ranges of the
# index, each read from its own start ($8/$9, $11/$12), never the events
# committed between its xmin and xmax, which a transaction left open anywhere
# on the server would otherwise make it read again and again.
#
# Nothing is written to the events: no UPDATE, no dead row, no second copy of
# the payload. Events marked published before ADR 0024 are skipped by the
# index's predicate.
_TAKE = f"""
WITH saved AS (
  UPDATE ingest_relay_state SET lo = $3::text, hi = $4::text, cursor_txid = $5::bigint, cursor_seq = $6::bigint, update_time = $1,
    floor = pg_snapshot_xmin($3::text::pg_snapshot)::text::bigint
  WHERE name = '{EVENT_STREAM}'
),
ticked AS (
  INSERT INTO ingest_relay_ticks (name, at, snapshot) SELECT '{EVENT_STREAM}', $1, $3::text WHERE $7
  ON CONFLICT (name, at) DO UPDATE SET snapshot = excluded.snapshot
),
w AS (SELECT coalesce($4::text::pg_snapshot, pg_current_snapshot()) AS hi)
SELECT w.hi::text AS hi, e.seq, e.txid, e.tenant, e.event_id, e.partition, e.payload, e.profile_pending, e.commit_time
FROM w LEFT JOIN LATERAL (
  SELECT * FROM (
    (SELECT seq, txid, tenant, event_id, partition, payload, profile_pending, commit_time FROM ingest_events
     WHERE published_at IS NULL AND txid = ANY($10::bigint[]) AND (txid, seq) > ($8::bigint, $9::bigint)
       AND pg_visible_in_snapshot(txid::text::xid8, w.hi)
     ORDER BY txid, seq LIMIT $2)
    UNION ALL
    (SELECT seq, txid, tenant, event_id, partition, payload, profile_pending, commit_time FROM ingest_events
     WHERE published_at IS NULL AND (txid, seq) > ($11::bigint, $12::bigint) AND txid < pg_snapshot_xmax(w.hi)::text::bigint
       AND pg_visible_in_snapshot(txid::text::xid8, w.hi)
     ORDER BY txid, seq LIMIT $2)
  ) window_events ORDER BY txid, seq LIMIT $2
) e ON true
"""
"""The take, for asyncpg: $1 now, $2 the batch size, $3..$6 the position to
save (lo, hi, cursor), $7 whether to record it as a tick, then what to read
after it (:func:`_take_args`)."""


def _take_args(lo: str, cursor: tuple[int, int] | None) -> tuple[int, int, list[int], int, int]:
    """$8..$12 of :data:`_TAKE`: the (txid, seq) after which to read the
    transactions running when *lo* was taken, their ids, and the (txid, seq)
    after which to read those that began after it."""
    snapshot = Snapshot.parse(lo)
    after = cursor or (0, 0)
    later = max(after, (snapshot.xmax, 0))
    return (*after, sorted(snapshot.xip), *later)


_STATE = f"SELECT epoch, floor, lo, hi, cursor_txid, cursor_seq FROM ingest_relay_state WHERE name = '{EVENT_STREAM}'"
TICK_INTERVAL = dt.timedelta(seconds=1)
"""The relay records its position at most this often."""
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
_SHARED = ("tenant", "received_at", "commit_time")
"""The columns one batch of one tenant, received at one instant, holds once: sent as values, not arrays."""
_SENT = {"occurred_at": ("bigint", "timestamptz 'epoch' + e.occurred_at * interval '1 microsecond'")}
"""Columns sent in another type (as what, and the expression that makes the column): occurred_at as microseconds since the
epoch, which asyncpg encodes at a third of a datetime's cost (exact: the edge keeps it near now, far inside 2^53 us)."""


def _direct_insert() -> str:
    """The insert of one batch of one tenant (:meth:`EventLog.commit`): its
    parameters are the columns in ``_COLUMNS`` order, each a value if it is
    shared, else an array (of its sent type)."""
    values, arrays = [], []
    for i, (column, kind) in enumerate(zip(_COLUMNS, _TYPES, strict=True), start=1):
        if column in _SHARED:
            values.append(f"${i}::{kind}")
            continue
        sent, expression = _SENT.get(column, (kind, f"e.{column}"))
        values.append(expression)
        arrays.append((column, f"${i}::{sent}[]"))
    return (f"INSERT INTO ingest_events ({', '.join(_COLUMNS)}) SELECT {', '.join(values)} "
            f"FROM unnest({', '.join(a for _, a in arrays)}) AS e({', '.join(c for c, _ in arrays)}) "
            "ON CONFLICT (tenant, event_id) DO NOTHING RETURNING event_id")


_DIRECT = _direct_insert()


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL ``pg_snapshot``: which transactions it sees."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """A snapshot of its text form, ``xmin:xmax:xip,...``."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, txid: int) -> bool:
        """Whether transaction *txid* had committed (or aborted) when the snapshot was taken: ``pg_visible_in_snapshot``."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.xip)


def _floor_snapshot(floor: int) -> str:
    """A snapshot that sees every transaction below *floor*, and no other."""
    floor = max(floor, 1)
    return f"{floor}:{floor}:"


@dataclass(frozen=True)
class _Position:
    """How far the relay published (PostgreSQL; ADR 0024): every event whose
    transaction *lo* sees, and, of those *hi* sees and *lo* does not, the
    ones up to *cursor* in (txid, seq) order. *lo* and *hi* are pg_snapshot text."""

    lo: str
    hi: str | None
    cursor: tuple[int, int] | None

    @classmethod
    def saved(cls, *, lo: str | None, floor: int, hi: str | None, cursor_txid: int | None, cursor_seq: int | None) -> _Position:
        """The position of the relay's state row (a floor's, before ADR 0024 wrote one)."""
        cursor = (cursor_txid, cursor_seq) if hi is not None and cursor_txid is not None and cursor_seq is not None else None
        return cls(lo or _floor_snapshot(floor), hi, cursor)

    @functools.cached_property
    def lo_snapshot(self) -> Snapshot:
        return Snapshot.parse(self.lo)

    @functools.cached_property
    def hi_snapshot(self) -> Snapshot | None:
        return Snapshot.parse(self.hi) if self.hi is not None else None

    def covers(self, txid: int, seq: int) -> bool:
        """Whether the event (*txid*, *seq*) was published."""
        if self.lo_snapshot.sees(txid):
            return True
        hi = self.hi_snapshot
        return hi is not None and self.cursor is not None and hi.sees(txid) and (txid, seq) <= self.cursor


@dataclass(frozen=True)
class StoredEvent:
    """One row of the log, and whether the relay published it."""

    event: event_pb2.Event
    original_event_type: str
    partition: int
    commit_time: dt.datetime
    published: bool
    published_at: dt.datetime | None
    """When the relay published the event, to within a tick (PostgreSQL); None while unknown."""
    profile_applied_at: dt.datetime | None

    @classmethod
    def of_row(cls, row: Any, *, published: bool | None = None, published_at: dt.datetime | None = None) -> StoredEvent:
        """The event of a row of ``ingest_events``; published as the row was marked, unless told."""
        return cls(
            event=event_pb2.Event.FromString(row.payload), original_event_type=row.original_event_type,
            partition=row.partition, commit_time=row.commit_time,
            published=row.published_at is not None if published is None else published,
            published_at=row.published_at or published_at, profile_applied_at=row.profile_applied_at,
        )


_POSITION = sa.select(relay_state.c.floor, relay_state.c.lo, relay_state.c.hi, relay_state.c.cursor_txid, relay_state.c.cursor_seq).where(
    relay_state.c.name == EVENT_STREAM)
_TICK_OF = sa.text(f"""
SELECT e.seq, t.at FROM unnest(CAST(:seqs AS bigint[]), CAST(:txids AS bigint[]), CAST(:times AS timestamptz[])) AS e(seq, txid, commit_time)
CROSS JOIN LATERAL (
  SELECT at FROM ingest_relay_ticks
  WHERE name = '{EVENT_STREAM}' AND at >= e.commit_time AND pg_visible_in_snapshot(e.txid::text::xid8, snapshot::pg_snapshot)
  ORDER BY at LIMIT 1
) t
""")
"""The first tick that saw each published event's transaction: its publish time (one range of the ticks' key each)."""


async def _position(conn: AsyncConnection) -> _Position | None:
    """The relay's saved position; None before it first ran, or on SQLite (which marks events instead)."""
    if conn.dialect.name != "postgresql":
        return None
    state = (await conn.execute(_POSITION)).first()
    return _Position.saved(**state._asdict()) if state is not None else None


async def stored_events(conn: AsyncConnection, rows: Sequence[Any]) -> list[StoredEvent]:
    """The events of rows of ``ingest_events`` (every column), each with
    whether and when the relay published it: on PostgreSQL, by the relay's
    position and its ticks (ADR 0024); events marked before, and on SQLite,
    by their mark."""
    position = await _position(conn) if rows else None
    if position is None:
        return [StoredEvent.of_row(row) for row in rows]
    covered = [row.published_at is None and position.covers(row.txid, row.seq) for row in rows]
    times: dict[int, dt.datetime] = {}
    if any(covered):
        found = [row for row, c in zip(rows, covered, strict=True) if c]
        times = {seq: at for seq, at in (await conn.execute(_TICK_OF, {
            "seqs": [r.seq for r in found], "txids": [r.txid for r in found], "times": [r.commit_time for r in found]})).all()}
    return [StoredEvent.of_row(row, published=c or row.published_at is not None, published_at=times.get(row.seq))
            for row, c in zip(rows, covered, strict=True)]


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
        received = batch[0].received_at
        if self._dsn is not None and len(batch) >= DIRECT_BATCH and all(n.received_at == received for n in batch):
            events_ = [n.event for n in batch]
            inserted = await self._fetch(_DIRECT, [
                tenant, [e.event_id for e in events_], [e.event_type for e in events_], [n.original_event_type for n in batch],
                [e.subject_id for e in events_], [n.occurred_us for n in batch], received, now,
                [e.source for e in events_], [e.id_derived for e in events_], [n.partition for n in batch],
                [e.SerializeToString() for e in events_], [e.event_type in PROFILE_EVENT_TYPES for e in events_],
            ])
            return {row[0] for row in inserted}
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

    async def _fetch(self, statement: str, columns: list[Any]) -> list[asyncpg.Record]:
        """Run *statement*, an insert over *columns* (in ``_COLUMNS`` order); the rows it returned."""
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
            return await conn.fetch(statement, *columns)  # type: ignore[no-any-return]

    async def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        if self._dsn is not None:
            return {(r[0], r[1]) for r in await self._fetch(_UNNEST, [[row[name] for row in rows] for name in _COLUMNS])}
        async with self._db.begin() as conn:
            statement = insert_ignore(conn, events, index_elements=["tenant", "event_id"]).returning(events.c.tenant, events.c.event_id)
            result = await conn.execute(statement, [{**row, "published_at": None, "profile_applied_at": None} for row in rows])
            return {(r.tenant, r.event_id) for r in result}

    async def get(self, tenant: str, event_id: str) -> StoredEvent | None:
        """One accepted event."""
        t = events
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & (t.c.event_id == event_id)))).first()
            return (await stored_events(conn, [row]))[0] if row is not None else None

    async def unpublished(self) -> int:
        """How many committed events the relay has not published (as far as its saved position says)."""
        t = events
        async with self._db.connect() as conn:
            position = await _position(conn)
            if position is None:
                return int((await conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.published_at.is_(None)))).scalar_one())
            # Only the events of transactions the lower snapshot does not see can be unpublished.
            lo = position.lo_snapshot
            rows = (await conn.execute(sa.select(t.c.txid, t.c.seq).where(
                t.c.published_at.is_(None) & ((t.c.txid >= lo.xmax) | t.c.txid.in_(sorted(lo.xip)))))).all()
        return sum(1 for row in rows if not position.covers(row.txid, row.seq))

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
            position = await _position(conn)
            published: sa.ColumnElement[bool] = t.c.published_at.is_not(None)
            if position is not None:  # the events of every transaction the relay's lower snapshot sees (ADR 0024)
                published |= sa.text("pg_visible_in_snapshot(txid::text::xid8, CAST(:lo AS pg_snapshot))").bindparams(lo=position.lo)
            # Tenant by tenant, each one range of ingest_events_window.
            for (tenant,) in (await conn.execute(_TENANTS)).all():
                result = await conn.execute(t.delete().where(
                    (t.c.tenant == tenant) & (t.c.commit_time < cutoff) & published & ~t.c.profile_pending))
                deleted += int(result.rowcount)
            await conn.execute(relay_ticks.delete().where((relay_ticks.c.name == EVENT_STREAM) & (relay_ticks.c.at < cutoff)))
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


def _observe_lag(last_commit: dt.datetime | None, clock: Clock) -> None:
    """:data:`RELAY_LAG` after a cycle whose batch's last event committed at *last_commit* (None: it published nothing)."""
    RELAY_LAG.set(max(0.0, (clock.now() - last_commit).total_seconds()) if last_commit is not None else 0)


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
        profile_hold: dt.timedelta = dt.timedelta(seconds=5),
    ) -> None:
        self._db = db
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._batch = batch_size
        self._gather = gather
        self._horizon = republish_horizon
        self._profile_hold = profile_hold
        """How long a profile event whose update is pending holds back publication (the update's call deadline)."""
        self._epoch_key = f"{keys.namespace}:stream:{EVENT_STREAM}:epoch"
        self.wake = asyncio.Event()
        self._epoch: str | None = None
        """The epoch last seen in PostgreSQL (committed) and Redis alike."""
        self._conn: asyncpg.Connection | None = None
        self._locked = False
        """Whether the relay's connection holds the relay's lock."""
        self._position = _Position(_floor_snapshot(0), None, None)
        """What was appended to the stream (PostgreSQL): saved by the next take."""
        self._ticked: str | None = None
        self._tick_time: dt.datetime | None = None

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
        """On SQLite: detect a Redis that lost the stream, and mark recent events
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
                    return await self._publish_postgres()
                except _StreamLost:
                    self._epoch = None  # nothing was appended: check the epoch (republishing), then publish
            return 0
        except BaseException:
            self._epoch = None  # what the epoch check wrote may be rolled back: check again next time
            raise

    async def _connection(self) -> asyncpg.Connection:
        """The relay's own connection, opened again when it was lost."""
        if self._conn is None or self._conn.is_closed():
            self._locked = False
            self._conn = await asyncpg.connect(self._db.asyncpg_dsn, server_settings={
                **SERVER_SETTINGS, **_RELAY_SETTINGS, "application_name": "overture-ingest-relay"})
        return self._conn

    async def close(self) -> None:
        """Save the relay's position, and close its connection (which lets go
        of its lock): the replica that takes over goes on from there."""
        if self._conn is not None:
            if self._locked and self._epoch is not None and not self._conn.is_closed():
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self._take(self._conn, batch=0)
            await self._conn.close()
            self._conn = None
            self._locked = False

    async def _load(self, conn: asyncpg.Connection) -> None:
        """Under the relay's lock, read its position and epoch, in a
        transaction of their own; when Redis no longer holds the epoch (it
        lost the stream), start again from the last tick before the republish
        horizon, with a new epoch in both."""
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")  # an epoch lost in a crash would republish the horizon
            stored = await conn.fetchrow(_STATE)
            current = await self._redis_epoch()
            if stored is not None and current is not None and current == stored["epoch"]:
                self._position = _Position.saved(**{k: v for k, v in stored.items() if k != "epoch"})
                self._epoch = current
                return
            now = self._clock.now()
            epoch = secrets.token_hex(16)
            lo = _floor_snapshot(0)
            if stored is not None:  # we published before, and Redis forgot: it lost data
                since = now - self._horizon
                lo = await conn.fetchval("SELECT snapshot FROM ingest_relay_ticks WHERE name = $1 AND at <= $2 ORDER BY at DESC LIMIT 1",
                                         EVENT_STREAM, since) or lo
                # Events marked published before ADR 0024, within the horizon (none, a day after the upgrade).
                await conn.execute("UPDATE ingest_events SET published_at = NULL WHERE published_at >= $1", since)
                log.warning("relay.stream_lost", republishing_from=lo.split(":", 1)[0], horizon_hours=self._horizon.total_seconds() / 3600)
            await conn.execute("DELETE FROM ingest_relay_state WHERE name = $1", EVENT_STREAM)
            await conn.execute("INSERT INTO ingest_relay_state (name, epoch, floor, update_time, lo) VALUES ($1, $2, $3, $4, $5)",
                               EVENT_STREAM, epoch, Snapshot.parse(lo).xmin, now, lo)
            await self._redis.set(self._epoch_key, epoch)
        self._position = _Position(lo, None, None)
        self._epoch = epoch

    def _held(self, pending: Sequence[tuple[bool, dt.datetime]]) -> int:
        """How many of the events whose (profile_pending, commit_time) are
        *pending*, in publication order, may be published now. A
        profile event whose update is being applied holds back itself and what
        follows it, until the update is applied or its call's deadline has
        passed (the retry loop applies it then): the runs that its batch's
        other events start read the profile it makes."""
        holding = self._clock.now() - self._profile_hold
        return next((i for i, (waiting, committed) in enumerate(pending) if waiting and committed > holding), len(pending))

    async def _take(self, conn: asyncpg.Connection, *, batch: int) -> list[asyncpg.Record]:
        """Save the position, ticking when a second passed and it moved, and
        read up to *batch* events after it (:data:`_TAKE`)."""
        position, now = self._position, self._clock.now()
        tick = position.lo != self._ticked and (self._tick_time is None or now - self._tick_time >= TICK_INTERVAL)
        rows: list[asyncpg.Record] = await conn.fetch(_TAKE, now, batch, position.lo, position.hi, *(position.cursor or (None, None)),
                                                      tick, *_take_args(position.lo, position.cursor))
        if tick:
            self._ticked, self._tick_time = position.lo, now
        return rows

    async def _publish_postgres(self) -> int:
        conn = await self._connection()
        try:
            if not self._locked:
                if not await conn.fetchval(_LOCK):
                    return 0  # another replica publishes
                self._locked = True
                self._epoch = None  # the holder before may have moved the position: read it
            if self._epoch is None:
                await self._load(conn)
            position = self._position
            rows = await self._take(conn, batch=self._batch)
            hi = rows[0]["hi"]
            taken = [r for r in rows if r["seq"] is not None]
            publishable = self._held([(r["profile_pending"], r["commit_time"]) for r in taken])
            holding = publishable < len(taken)
            taken = taken[:publishable]
            if not taken:
                _observe_lag(None, self._clock)
                if holding:  # the window stays open where it was
                    self._position = _Position(position.lo, hi, position.cursor or (0, 0))
                    return 0
                self._position = _Position(hi, None, None)  # the window is published; saved by the next take
                if not await self._epoch_holds(self._epoch):  # idle: notice a Redis that lost the stream all the same
                    raise _StreamLost
                return 0
            stream = self._keys.stream
            await self._append([(stream(EVENT_STREAM, r["partition"]), r["tenant"], r["event_id"], r["payload"]) for r in taken],
                               epoch=self._epoch)
            last = taken[-1]
            _observe_lag(last["commit_time"], self._clock)
            self._position = (_Position(position.lo, hi, (last["txid"], last["seq"])) if len(rows) == self._batch or holding
                              else _Position(hi, None, None))
            return len(taken)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            conn.terminate()  # a connection in an unknown state is not reused (the next cycle opens another, and locks again)
            self._conn = None
            self._locked = False
            raise

    async def _publish_sqlite(self) -> int:
        t = events
        async with self._db.begin() as conn:
            epoch = await self.check_epoch(conn)
            rows = (await conn.execute(
                sa.select(t.c.seq, t.c.tenant, t.c.event_id, t.c.partition, t.c.payload, t.c.profile_pending, t.c.commit_time)
                .where(t.c.published_at.is_(None)).order_by(t.c.txid, t.c.seq).limit(self._batch)
            )).all()
            rows = rows[:self._held([(r.profile_pending, r.commit_time) for r in rows])]
            if rows:
                await conn.execute(t.update().where(t.c.seq.in_([r.seq for r in rows])).values(published_at=self._clock.now()))
                await self._append([(self._keys.stream(EVENT_STREAM, r.partition), r.tenant, r.event_id, r.payload) for r in rows],
                                   epoch=epoch)  # what check_epoch just found or wrote, in this transaction
        self._epoch = epoch
        _observe_lag(rows[-1].commit_time if rows else None, self._clock)
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
