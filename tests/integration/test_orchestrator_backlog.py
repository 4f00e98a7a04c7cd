"""Backlog shows as metrics: due steps, the oldest one's lateness, dead letters by kind and stream lag."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from overture_orchestrator.backlog import Backlog
from overture_orchestrator.consumer import GROUP
from overture_orchestrator.tables import dead_letters, tokens
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, migrate
from overture_runtime.redis import Keys
from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


async def test_backlog_sample_counts_due_steps_lateness_dead_letters_and_lag(database_url: str, redis_namespace: str) -> None:
    """Three steps due (the oldest 90 s late), two not yet, a dead run and a poison entry, and three unread stream entries."""
    await migrate(database_url, script_location=ROOT / "services/orchestrator/overture_orchestrator/migrations",
                  version_table="orchestrator_alembic_version")
    db = Database(database_url)
    redis = aioredis.Redis.from_url(REDIS_URL)
    keys = Keys(redis_namespace)
    try:
        async with db.begin() as conn:
            await conn.execute(tokens.insert(), [
                dict(tenant="acme", run_id=f"r{i}", token=0, node="wait", state="waiting", due_time=NOW + dt.timedelta(seconds=s),
                     attempts=0, evaluations=0, lease_owner=None) for i, s in enumerate((-90, -5, 0, 30, 3600))])
            await conn.execute(dead_letters.insert(), [
                dict(tenant="acme", entry_id=f"d{i}", kind=kind, ref="x", payload=b"", attempts=5, last_error="e", create_time=NOW)
                for i, kind in enumerate(("run", "event"))])
        stream = keys.stream("events", 0)
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for i in range(3):
            await redis.xadd(stream, {"n": str(i)})
        sample = await Backlog(db=db, redis=redis, keys=keys, partitions=2, clock=ManualClock(NOW)).sample()
    finally:
        await redis.aclose()
        await db.close()
    assert sample == {"due": 3, "lateness_seconds": 90.0, "dead_letters": {"run": 1, "event": 1}, "lag": {0: 3}}  # partition 1 has no stream yet
    assert REGISTRY.get_sample_value("overture_orchestrator_due_steps") == 3
    assert REGISTRY.get_sample_value("overture_orchestrator_dead_letters", {"kind": "event"}) == 1
