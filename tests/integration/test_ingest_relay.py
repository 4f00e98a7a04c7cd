"""The relay appends committed events to their partitions in log order, with
one script call per batch, and keeps going on a Redis that lost its scripts
(a restart, ``SCRIPT FLUSH``): on a private redis-server, since the test
flushes it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from overture.common.v1 import event_pb2
from overture_ingest.log import EVENT_STREAM, Relay
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, migrate
from overture_runtime.redis import Keys

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


async def _commit(db: Database, first: int, count: int) -> None:
    async with db.begin() as conn:
        for g in range(first, first + count):
            payload = event_pb2.Event(event_id=f"e{g}", event_type="page.viewed", subject_id=f"s{g % 5}").SerializeToString()
            await conn.exec_driver_sql(
                "INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at, "
                "commit_time, source, id_derived, partition, payload, profile_pending) "
                "VALUES ('acme', $1, 'page.viewed', 'page.viewed', $2, $3, $3, $3, 'test', false, $4, $5, false)",
                (f"e{g}", f"s{g % 5}", T0, g % 3, payload))


async def test_the_relay_appends_in_log_order_and_survives_a_redis_that_lost_its_scripts(
    database_url: str, throwaway_redis: Callable[[], str],
) -> None:
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    db = Database(database_url)
    redis = aioredis.Redis.from_url(throwaway_redis())
    keys = Keys("relaytest")
    relay = Relay(db, redis, keys, ManualClock(T0), batch_size=100)
    try:
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
        async with db.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM ingest_events WHERE published_at IS NULL")).scalar() == 0
    finally:
        await redis.aclose()
        await db.close()
