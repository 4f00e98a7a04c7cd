"""The relay appends committed events to their partitions in log order, with
one script call per batch; keeps going on a Redis that lost its scripts (a
restart, ``SCRIPT FLUSH``); publishes again, once, what a Redis that lost
the stream no longer holds, even when the cycle that noticed failed; and
takes nothing while another replica holds its lock. On a private
redis-server, since the tests flush it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from overture.common.v1 import event_pb2
from overture_ingest.log import _RELAY_LOCK, EVENT_STREAM, EventLog, Relay
from overture_ingest.tables import events
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, migrate
from overture_runtime.redis import Keys

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


async def _commit(db: Database, first: int, count: int, *, profile: Collection[int] = ()) -> None:
    """Events e<first>.. in one transaction; those numbered in *profile* are profile events whose update is pending."""
    async with db.begin() as conn:
        for g in range(first, first + count):
            payload = event_pb2.Event(event_id=f"e{g}", event_type="page.viewed", subject_id=f"s{g % 5}").SerializeToString()
            await conn.execute(events.insert().values(
                tenant="acme", event_id=f"e{g}", event_type="page.viewed", original_event_type="page.viewed", subject_id=f"s{g % 5}",
                occurred_at=T0, received_at=T0, commit_time=T0, source="test", id_derived=False, partition=g % 3, payload=payload,
                profile_pending=g in profile))


@dataclass
class _Relaying:
    db: Database
    redis: aioredis.Redis
    keys: Keys
    relay: Relay


@pytest.fixture
async def relaying(database_url: str, throwaway_redis: Callable[[], str]) -> AsyncIterator[_Relaying]:
    """A relay (batches of 100) on this test's migrated database and a private redis-server."""
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    db = Database(database_url)
    redis = aioredis.Redis.from_url(throwaway_redis())
    keys = Keys("relaytest")
    relay = Relay(db, redis, keys, ManualClock(T0), batch_size=100)
    try:
        yield _Relaying(db, redis, keys, relay)
    finally:
        await relay.close()
        await redis.aclose()
        await db.close()


async def test_the_relay_appends_in_log_order_and_survives_a_redis_that_lost_its_scripts(relaying: _Relaying) -> None:
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    await _commit(db, 0, 250)
    assert [await relay.publish_once() for _ in range(4)] == [100, 100, 50, 0]
    await redis.script_flush()
    await _commit(db, 250, 30)
    assert await relay.publish_once() == 30
    for partition in range(3):
        entries = await redis.xrange(keys.stream(EVENT_STREAM, partition))
        ids = [fields[b"event_id"].decode() for _, fields in entries]
        assert ids == [f"e{g}" for g in range(280) if g % 3 == partition]  # each partition in log order, each event once
        assert all(fields[b"tenant"] == b"acme" for _, fields in entries)
        assert [event_pb2.Event.FromString(fields[b"event"]).event_id for _, fields in entries] == ids
    assert await relay.publish_once() == 0  # the take that saves the position the last one reached
    assert await EventLog(db, ManualClock(T0)).unpublished() == 0


async def test_the_relay_writes_no_event_and_records_when_it_published(relaying: _Relaying) -> None:
    """ADR 0024: the relay saves a position, not a mark per event. Events are published (GetEvent's state) as far as the
    saved position goes, including part of a window taken in full batches; a tick, at most one a second on the relay's
    clock, records the position, and an event's publish time is the first tick that saw it."""
    db, relay, log_ = relaying.db, relaying.relay, EventLog(relaying.db, ManualClock(T0))
    clock = relay._clock
    assert isinstance(clock, ManualClock)
    await _commit(db, 0, 150)
    assert await relay.publish_once() == 100  # a full batch: its window is published up to a cursor
    assert await log_.unpublished() == 150  # appended, not yet saved
    assert await relay.publish_once() == 50  # saves the cursor, takes the rest of the window
    first, last = await log_.get("acme", "e0"), await log_.get("acme", "e149")
    assert first is not None and first.published and first.published_at is None  # published; no tick has seen it yet
    assert last is not None and not last.published
    assert await log_.unpublished() == 50
    assert REGISTRY.get_sample_value("overture_ingest_relay_lag_seconds") == 0  # the events were committed at T0, published at T0
    clock.advance(dt.timedelta(seconds=1))
    await _commit(db, 150, 1)  # committed at T0: published a second late
    assert await relay.publish_once() == 1
    assert REGISTRY.get_sample_value("overture_ingest_relay_lag_seconds") == 1.0
    assert await relay.publish_once() == 0  # saves the window's end, and ticks
    assert REGISTRY.get_sample_value("overture_ingest_relay_lag_seconds") == 0
    assert await log_.unpublished() == 0
    stored = [await log_.get("acme", f"e{g}") for g in (0, 99, 100, 149)]
    assert all(s is not None and s.published and s.published_at == T0 + dt.timedelta(seconds=1) for s in stored), stored
    async with db.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT count(*) FROM ingest_events WHERE published_at IS NOT NULL")).scalar() == 0
        ticks = (await conn.exec_driver_sql("SELECT at FROM ingest_relay_ticks ORDER BY at")).scalars().all()
    assert ticks == [T0, T0 + dt.timedelta(seconds=1)]  # the first cycle's, then one a second: not one per cycle


async def _stream_ids(redis: aioredis.Redis, keys: Keys) -> list[str]:
    ids: list[str] = []
    for partition in range(3):
        ids += [fields[b"event_id"].decode() for _, fields in await redis.xrange(keys.stream(EVENT_STREAM, partition))]
    return sorted(ids, key=lambda i: int(i[1:]))


async def test_a_stream_lost_while_a_cycle_fails_is_published_again(relaying: _Relaying) -> None:
    """Redis loses the stream and the epoch; the cycle that notices marks the recent events unpublished, writes a new epoch,
    and then fails to append: it rolls back. The next cycle must notice again (the new epoch never committed) and publish
    everything; nothing is lost."""
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    await _commit(db, 0, 10)
    assert await relay.publish_once() == 10
    await redis.flushall()  # Redis lost the stream and the epoch
    await _commit(db, 10, 5)
    real_append = relay._append
    failures = iter([RuntimeError("Redis went away again")])

    async def flaky(entries: list[tuple[str, str, str, bytes]], *, epoch: str | None) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        await real_append(entries, epoch=epoch)

    relay._append = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await relay.publish_once()
    assert await relay.publish_once() == 15
    assert await relay.publish_once() == 0
    assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(15)]


async def test_a_stream_lost_while_idle_or_between_cycles_is_published_again(relaying: _Relaying) -> None:
    """Redis loses the stream while the relay has nothing to publish: its next cycle notices and publishes everything again.
    Redis loses it again between a cycle's take and its append: the append script finds no epoch and appends nothing, the
    cycle is rolled back, and the relay publishes everything again (the old events and the new), each once."""
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    await _commit(db, 0, 10)
    assert await relay.publish_once() == 10
    await redis.flushall()
    assert await relay.publish_once() == 10
    assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(10)]
    await _commit(db, 10, 5)
    real_take = relay._connection

    async def flush_first() -> asyncpg.Connection:
        await redis.flushall()  # after the epoch was confirmed, before the take and the append
        return await real_take()

    relay._connection = flush_first  # type: ignore[method-assign]
    published = await relay.publish_once()
    relay._connection = real_take  # type: ignore[method-assign]
    assert published + await relay.publish_once() == 15
    assert await relay.publish_once() == 0
    assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(15)]


async def test_an_event_whose_insert_commits_after_later_ones_were_published_is_published(
        relaying: _Relaying, database_url: str) -> None:
    """A slow insert takes its transaction id first and commits last, after the relay published 250 later events in full and
    partial batches: the relay's floor stays below it, and the next cycle publishes it."""
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    slow = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        insert = slow.transaction()
        await insert.start()
        await slow.execute(
            "INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at, "
            "commit_time, source, id_derived, partition, payload, profile_pending) "
            "VALUES ('acme', 'e999', 'page.viewed', 'page.viewed', 's0', $1, $1, $1, 'test', false, 0, $2, false)",
            T0, event_pb2.Event(event_id="e999").SerializeToString())
        await _commit(db, 0, 250)
        assert [await relay.publish_once() for _ in range(4)] == [100, 100, 50, 0]
        await insert.commit()
        assert await relay.publish_once() == 1
        assert await relay.publish_once() == 0
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(250)] + ["e999"]
    finally:
        await slow.close()


async def test_on_sqlite_the_relay_publishes_and_publishes_again_what_redis_lost(
        tmp_path: Path, throwaway_redis: Callable[[], str]) -> None:
    """``overture dev``'s relay (SQLite: no lock, the epoch checked in each cycle's transaction)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ingest.db'}"
    await migrate(url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    db = Database(url)
    redis = aioredis.Redis.from_url(throwaway_redis())
    keys = Keys("relaytest")
    relay = Relay(db, redis, keys, ManualClock(T0), batch_size=100)
    try:
        await _commit(db, 0, 5)
        assert [await relay.publish_once() for _ in range(2)] == [5, 0]
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(5)]
        await redis.flushall()
        assert [await relay.publish_once() for _ in range(2)] == [5, 0]
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(5)]
    finally:
        await redis.aclose()
        await db.close()


async def test_a_relay_takes_nothing_while_another_replica_holds_the_lock(relaying: _Relaying, database_url: str) -> None:
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await _commit(db, 0, 20)
        async with other.transaction():
            assert await other.fetchval(f"SELECT pg_try_advisory_xact_lock({_RELAY_LOCK})")
            assert await relay.publish_once() == 0
            assert await _stream_ids(redis, keys) == []
        assert await relay.publish_once() == 20  # the other replica let go
    finally:
        await other.close()


async def test_a_replica_that_takes_over_goes_on_from_the_saved_position(relaying: _Relaying) -> None:
    """Two replicas: the second takes nothing while the first holds the relay's lock. The first stops cleanly (saving where
    it got to) and the second goes on from there, each event once; then the second is killed between a batch and the next
    take, and the first, starting again, publishes that last batch again (consumers deduplicate by id), and nothing else."""
    db, redis, keys, first = relaying.db, relaying.redis, relaying.keys, relaying.relay
    second = Relay(db, redis, keys, ManualClock(T0), batch_size=100)
    try:
        await _commit(db, 0, 150)
        assert await first.publish_once() == 100
        assert await second.publish_once() == 0  # the first holds the lock
        await first.close()
        assert [await second.publish_once() for _ in range(2)] == [50, 0]
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(150)]
        await _commit(db, 150, 30)
        assert await second.publish_once() == 30
        assert second._conn is not None
        second._conn.terminate()  # killed: its position after the 30 was never saved
        taken = 0
        for _ in range(200):  # until PostgreSQL notices the dead session and lets its lock go
            if taken := await first.publish_once():
                break
            await asyncio.sleep(0.05)
        assert [taken, await first.publish_once()] == [30, 0]
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(150)] + sorted(2 * [f"e{g}" for g in range(150, 180)],
                                                                                         key=lambda i: int(i[1:]))
    finally:
        await second.close()


@pytest.mark.parametrize("sqlite", [False, True], ids=["postgresql", "sqlite"])
async def test_a_profile_event_being_applied_holds_back_what_follows_it(
        relaying: _Relaying, tmp_path: Path, throwaway_redis: Callable[[], str], sqlite: bool) -> None:
    """A batch's identify is committed with the batch and applied to the profile after: the relay publishes what comes
    before it, and holds it and what follows until the update is applied (a run started by the batch's other events
    reads the profile it makes), or until the update's call deadline passed (the retry loop applies it later)."""
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    if sqlite:
        url = f"sqlite+aiosqlite:///{tmp_path / 'ingest.db'}"
        await migrate(url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
        db, redis = Database(url), aioredis.Redis.from_url(throwaway_redis())
        relay = Relay(db, redis, keys, ManualClock(T0), batch_size=100)
    clock = relay._clock
    assert isinstance(clock, ManualClock)
    async def drain() -> int:
        published = 0
        for _ in range(10):
            if not (n := await relay.publish_once()):
                return published
            published += n
        raise AssertionError("the relay kept publishing")

    try:
        await _commit(db, 0, 5, profile={2})
        assert await drain() == 2
        assert await _stream_ids(redis, keys) == ["e0", "e1"]
        async with db.begin() as conn:  # the update applied (EventLog.mark_profile_applied)
            await conn.execute(events.update().where(events.c.event_id == "e2").values(profile_pending=False))
        await _commit(db, 5, 3, profile={6})
        assert await drain() == 4
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(6)]
        clock.advance(dt.timedelta(seconds=5, microseconds=1))  # e6's update call is past its deadline
        assert await drain() == 2
        assert await _stream_ids(redis, keys) == [f"e{g}" for g in range(8)]
    finally:
        if sqlite:
            await relay.close()
            await redis.aclose()
            await db.close()


async def test_events_marked_before_the_position_existed_are_not_published_again(relaying: _Relaying) -> None:
    """A log the relay of ADR 0023 left: events it marked published, a floor, no position. The first cycle starts from the
    floor's snapshot and publishes only the events not marked; the marked ones keep their publish time."""
    db, redis, keys, relay = relaying.db, relaying.redis, relaying.keys, relaying.relay
    assert await relay.publish_once() == 0  # the state row and epoch, as the old relay left them
    await relay.close()  # stopped for the upgrade; started again, it reads the state row
    await _commit(db, 0, 6)
    marked_at = T0 - dt.timedelta(minutes=1)
    async with db.begin() as conn:
        await conn.execute(events.update().where(events.c.event_id.in_(["e0", "e2", "e4"])).values(published_at=marked_at))
        await conn.exec_driver_sql("UPDATE ingest_relay_state SET lo = NULL, hi = NULL, cursor_txid = NULL, cursor_seq = NULL, floor = 1")
    assert [await relay.publish_once() for _ in range(2)] == [3, 0]
    assert await _stream_ids(redis, keys) == ["e1", "e3", "e5"]
    log_ = EventLog(db, ManualClock(T0))
    marked = await log_.get("acme", "e2")
    assert marked is not None and marked.published and marked.published_at == marked_at
    assert await log_.unpublished() == 0
