"""Consuming the event stream: each event starts at most one run per
matching journey version and subject.

Events are read through a consumer group, one stream per partition, and
acknowledged only after they are handled. An event whose handling fails
stays pending and is claimed again; after ``max_deliveries`` it goes to the
dead-letter table with its last error, so that it never blocks the rest of
its partition. If Redis loses the group (a flush or a restart without
persistence), it is created again, and the ingest relay republishes from
the durable log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
import structlog
from redis.exceptions import ResponseError

from overture.common.v1 import event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.redis import Keys

from .tables import dead_letters

__all__ = ["GROUP", "STREAM", "EventConsumer"]

log = structlog.get_logger("overture.orchestrator")
GROUP = "orchestrator"
STREAM = "events"


class EventConsumer:
    """Reads every partition of the event stream through one consumer group."""

    def __init__(
        self, *, redis: aioredis.Redis, keys: Keys, partitions: int, consumer: str, db: Database, clock: Clock, ids: IdGenerator,
        handle: Callable[[str, event_pb2.Event], Awaitable[None]], max_deliveries: int = 5,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._streams = [keys.stream(STREAM, p) for p in range(partitions)]
        self._consumer = consumer
        self._db = db
        self._clock = clock
        self._ids = ids
        self._handle = handle
        self._max_deliveries = max_deliveries

    async def ensure_groups(self) -> None:
        """Create the consumer group on every partition, if missing."""
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume every partition until *stopping* is set: one reader per
        partition, since partitions live on different Redis Cluster slots and
        one slow partition must not hold up the others."""
        await self.ensure_groups()
        await asyncio.gather(*(self._consume(stream, stopping) for stream in self._streams))

    async def _consume(self, stream: str, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                batches: Any = await self._redis.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=100, block=500)
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    log.warning("consumer.group_lost", stream=stream, detail="recreating the consumer group")
                    await self.ensure_groups()
                    continue
                raise
            for _, messages in batches or []:
                for message_id, fields in messages:
                    await self._process(stream, message_id, fields, deliveries=1)

    async def reclaim(self, stopping: asyncio.Event, *, min_idle_ms: int = 30_000, interval: float = 10.0) -> None:
        """Claim events left pending by a crashed or failing consumer, until stopping."""
        while not stopping.is_set():
            for stream in self._streams:
                try:
                    # Filtered here rather than with IDLE, which not every
                    # Redis-protocol server (fakeredis under `overture dev`) has.
                    pending: Any = await self._redis.xpending_range(stream, GROUP, min="-", max="+", count=100)
                except ResponseError as error:
                    if "NOGROUP" in str(error):
                        continue
                    raise
                for entry in pending:
                    if entry["time_since_delivered"] < min_idle_ms:
                        continue
                    claimed: Any = await self._redis.xclaim(stream, GROUP, self._consumer, min_idle_ms, [entry["message_id"]])
                    for message_id, fields in claimed:
                        if fields:
                            await self._process(stream, message_id, fields, deliveries=int(entry["times_delivered"]) + 1)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _process(self, stream: str, message_id: Any, fields: dict[bytes, bytes], *, deliveries: int) -> None:
        tenant = _text(fields.get(b"tenant", b""))
        try:
            event = event_pb2.Event.FromString(fields[b"event"])
        except Exception as error:  # noqa: BLE001 - a malformed entry is poison, not a crash
            await self._poison(stream, message_id, tenant, fields.get(b"event", b""), f"unreadable entry: {type(error).__name__}", deliveries)
            return
        try:
            await self._handle(tenant, event)
        except Exception as error:  # noqa: BLE001 - stays pending and is retried by reclaim
            if deliveries >= self._max_deliveries:
                await self._poison(stream, message_id, tenant, fields[b"event"], f"{type(error).__name__}: {error}"[:500], deliveries)
            else:
                log.warning("consumer.handle_failed", event_id=event.event_id, deliveries=deliveries, error=type(error).__name__)
            return
        await self._redis.xack(stream, GROUP, message_id)

    async def _poison(self, stream: str, message_id: Any, tenant: str, payload: bytes, error: str, deliveries: int) -> None:
        log.error("consumer.dead_lettered", stream=stream, deliveries=deliveries, error=error[:200])
        async with self._db.begin() as conn:
            await conn.execute(sa.insert(dead_letters).values(
                tenant=tenant or "-", entry_id=self._ids.new(), kind="event", ref=_text(message_id), payload=payload,
                attempts=deliveries, last_error=error, create_time=self._clock.now()))
        await self._redis.xack(stream, GROUP, message_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
