"""The event log's inserts on real PostgreSQL: a batch's own statement (50
events or more, one tenant, one receipt time: shared values sent once,
occurred_at as microseconds), the grouped insert, and a batch received at
several instants store the same columns for the same events."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture_ingest.log import DIRECT_BATCH, EventLog
from overture_ingest.normalize import NormalizedEvent, normalize
from overture_ingest.tables import events
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, migrate

ROOT = Path(__file__).resolve().parents[2]
RECEIVED = dt.datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)
NANOS = (0, 1, 999, 1000, 123_456_789, 999_999_999)


def _batch(tag: str, count: int, *, received: dt.datetime = RECEIVED) -> list[NormalizedEvent]:
    """*count* events: occurred at assorted instants (nanos that truncate, a second before, 71 hours ahead, 364 days back)
    or not at all."""
    out = []
    for i in range(count):
        event = event_pb2.Event(event_id=f"{tag}-{i}", event_type="page.viewed", subject_id=f"s{i % 7}")
        if i % 5:
            when = received + [dt.timedelta(seconds=-1), dt.timedelta(hours=71), -dt.timedelta(days=364), dt.timedelta(0)][i % 4]
            event.occurred_at.FromDatetime(when)
            event.occurred_at.nanos = NANOS[i % len(NANOS)]
        result = normalize("acme", event, received_at=received, source="grpc", partitions=4)
        assert isinstance(result, NormalizedEvent)
        out.append(result)
    return out


async def test_every_insert_stores_the_instants_the_payload_holds(database_url: str) -> None:
    """Direct, grouped and mixed-receipt inserts store occurred_at and received_at as the stored event has them (to the
    microsecond), the commit time, and the tenant; a repeated batch inserts nothing."""
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    db = Database(database_url)
    log = EventLog(db, ManualClock(RECEIVED + dt.timedelta(seconds=1)))
    log.start()
    try:
        direct = _batch("direct", DIRECT_BATCH + 10)
        grouped = _batch("grouped", DIRECT_BATCH - 10)
        mixed = _batch("mixed", DIRECT_BATCH, received=RECEIVED) + _batch("mixed-later", 10, received=RECEIVED + dt.timedelta(seconds=3))
        for batch in (direct, grouped, mixed):
            assert await log.commit("acme", batch) == {n.event.event_id for n in batch}
        assert await log.commit("acme", direct) == set()
        async with db.connect() as conn:
            rows = (await conn.execute(sa.select(events.c.tenant, events.c.event_id, events.c.occurred_at, events.c.received_at,
                                                 events.c.commit_time, events.c.payload))).all()
    finally:
        await log.close()
        await db.close()
    assert len(rows) == len(direct) + len(grouped) + len(mixed)
    for row in rows:
        stored = event_pb2.Event.FromString(row.payload)
        assert row.tenant == "acme"
        assert row.occurred_at == stored.occurred_at.ToDatetime(tzinfo=dt.UTC), row.event_id
        assert row.received_at == stored.received_at.ToDatetime(tzinfo=dt.UTC), row.event_id
        assert row.commit_time == RECEIVED + dt.timedelta(seconds=1)
