"""Backlog as metrics, never as memory: how many steps are due, how late the
oldest one is, how far the consumer is behind each stream partition, and
how many entries wait in the dead-letter queue. Sampled every few seconds
by one loop per replica, with bounded queries (the due-time index, one
count per dead-letter kind, XINFO per partition)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import Gauge
from redis.exceptions import RedisError, ResponseError

from overture_runtime.clock import Clock
from overture_runtime.db import Database
from overture_runtime.redis import Keys

from .consumer import GROUP, STREAM
from .tables import dead_letters, tokens

__all__ = ["Backlog"]

DUE = Gauge("overture_orchestrator_due_steps", "Steps (tokens) due now and not yet claimed.")
LATENESS = Gauge("overture_orchestrator_due_lateness_seconds", "How overdue the oldest unclaimed due step is.")
LAG = Gauge("overture_orchestrator_stream_lag", "Stream entries not yet read by the orchestrator's group, per partition.", ["partition"])
PENDING = Gauge("overture_orchestrator_stream_pending", "Stream entries read but not yet acknowledged, per partition.", ["partition"])
DEAD = Gauge("overture_orchestrator_dead_letters", "Entries in the dead-letter queue, by kind.", ["kind"])


class Backlog:
    """Samples the orchestrator's backlog into Prometheus gauges."""

    def __init__(self, *, db: Database, redis: aioredis.Redis, keys: Keys, partitions: int, clock: Clock, interval: float = 5.0) -> None:
        self._db = db
        self._redis = redis
        self._streams = [keys.stream(STREAM, p) for p in range(partitions)]
        self._clock = clock
        self._interval = interval

    async def sample(self) -> dict[str, Any]:
        """Take one sample; returns it, as the gauges now show it."""
        now = self._clock.now()
        due = tokens.c.due_time <= now
        async with self._db.connect() as conn:
            count, oldest = (await conn.execute(sa.select(sa.func.count(), sa.func.min(tokens.c.due_time)).where(due))).one()
            kinds = dict((await conn.execute(sa.select(dead_letters.c.kind, sa.func.count()).group_by(dead_letters.c.kind))).all())
        lateness = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        DUE.set(count)
        LATENESS.set(lateness)
        for kind in ("run", "event"):
            DEAD.labels(kind).set(kinds.get(kind, 0))
        lags: dict[int, int] = {}
        for partition, stream in enumerate(self._streams):
            try:
                groups: Any = await self._redis.xinfo_groups(stream)
            except (ResponseError, RedisError):
                continue
            group = next((g for g in groups if g.get("name") in (GROUP, GROUP.encode())), None)
            if group is None:
                continue
            lags[partition] = int(group.get("lag") or 0)
            LAG.labels(str(partition)).set(lags[partition])
            PENDING.labels(str(partition)).set(int(group.get("pending") or 0))
        return {"due": count, "lateness_seconds": lateness, "dead_letters": kinds, "lag": lags}

    async def run(self, stopping: asyncio.Event) -> None:
        """Sample until *stopping* is set."""
        while not stopping.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._interval)
            except TimeoutError:
                pass
