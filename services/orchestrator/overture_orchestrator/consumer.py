"""The stream consumer: it only starts runs.

One reader per partition reads up to ``batch`` entries at a time and hands
them to one starting task, which takes what every reader has brought
since its last batch (up to ``batch`` entries, oldest first), hands it to
the starter as one batch (which matches triggers in memory and inserts the
new runs in one statement), and acks each partition's entries. At a few
events per partition a second, the partitions' entries so start together
instead of paying a batch's fixed cost each. A reader waits for its entries
to be handled before it reads again, so a partition stays in order and
what is held in memory is bounded by the partitions. The consumer never
executes a step, so a slow provider never holds up a partition; the
workers do that.

A batch that fails is handled again entry by entry, so that one bad entry
is isolated; an entry that keeps failing stays pending, is claimed again by
:meth:`EventConsumer.reclaim`, and after ``max_deliveries`` goes to the
dead-letter queue (acked, so its partition moves on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import Histogram
from redis.exceptions import ResponseError

from overture.common.v1 import event_pb2
from overture_runtime.redis import Keys

from .deadletters import DeadLetters

__all__ = ["GROUP", "STREAM", "EventConsumer"]

log = structlog.get_logger("overture.orchestrator.consumer")

GROUP = "orchestrator"
STREAM = "events"
Handler = Callable[[Sequence[tuple[str, event_pb2.Event]]], Awaitable[object]]
START_SECONDS = Histogram("overture_orchestrator_start_seconds", "Time to start the runs of one batch of stream entries and ack them.",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
START_ENTRIES = Histogram("overture_orchestrator_start_entries", "Stream entries per batch the consumer starts (every partition's reads since the last).",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
EVENT_AGE = Histogram("overture_orchestrator_event_age_seconds",
                      "From ingest's receipt of an event (its received_at, on the ingest host's clock) to the start of the batch that "
                      "handles it: the relay's publication, the stream and the wait for the starter.",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
Entry = tuple[str, Any, dict[bytes, bytes], int]
"""A stream entry to handle: its stream, id, fields, and how many times it was delivered."""


class EventConsumer:
    """Reads the event stream's partitions and starts runs, in batches."""

    def __init__(
        self, *, redis: aioredis.Redis, keys: Keys, partitions: int, consumer: str, dead_letters: DeadLetters, handle: Handler,
        batch: int = 200, max_deliveries: int = 5,
    ) -> None:
        self._redis = redis
        self._streams = [keys.stream(STREAM, p) for p in range(partitions)]
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._handle = handle
        self._batch = batch
        self._max_deliveries = max_deliveries
        self._brought: list[tuple[list[Entry], asyncio.Future[None]]] = []
        """Readers' batches waiting for the starting task, oldest first."""
        self._arrived = asyncio.Event()

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
        partition (partitions live on different Redis Cluster slots, and one
        busy partition must not hold up reading the others), one starting
        task for what they read."""
        await self.ensure_groups()
        readers = [asyncio.create_task(self._consume(stream, stopping), name=f"consumer:{stream}") for stream in self._streams]
        starting = asyncio.create_task(self._start_brought(), name="consumer:start")
        try:
            await asyncio.gather(*readers)
        finally:
            # One reader failing ends them all (and the starting task): none is
            # left waiting for a starting task that is gone when run() is restarted.
            for task in (*readers, starting):
                task.cancel()
            await asyncio.gather(*readers, starting, return_exceptions=True)

    async def _consume(self, stream: str, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                batches: Any = await self._redis.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=self._batch, block=500)
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    log.warning("consumer.group_lost", stream=stream, detail="recreating the consumer group")
                    await self.ensure_groups()
                    continue
                raise
            for _, messages in batches or []:
                await self._bring([(stream, message_id, fields, 1) for message_id, fields in messages])

    async def _bring(self, entries: list[Entry]) -> None:
        """Hand a reader's *entries* to the starting task; returns once they are handled (raises what handling raised)."""
        handled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._brought.append((entries, handled))
        self._arrived.set()
        await handled

    async def _start_brought(self) -> None:
        """Handle what the readers bring, as few batches as ``batch`` allows."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._brought:
                taken = 1
                size = len(self._brought[0][0])
                while taken < len(self._brought) and size + len(self._brought[taken][0]) <= self._batch:
                    size += len(self._brought[taken][0])
                    taken += 1
                group, self._brought = self._brought[:taken], self._brought[taken:]
                START_ENTRIES.observe(size)
                try:
                    with START_SECONDS.time():
                        await self._process([entry for entries, _ in group for entry in entries])
                except Exception as error:  # noqa: BLE001 - raised in each reader whose entries these were
                    for _, handled in group:
                        if not handled.done():
                            handled.set_exception(error)
                except BaseException:
                    for _, handled in group:
                        handled.cancel()
                    raise
                else:
                    for _, handled in group:
                        if not handled.done():
                            handled.set_result(None)

    async def reclaim(self, stopping: asyncio.Event, *, min_idle_ms: int = 30_000, interval: float = 10.0) -> None:
        """Claim entries left pending by a crashed or failing consumer, until stopping."""
        await self.ensure_groups()
        while not stopping.is_set():
            for stream in self._streams:
                # Filtered here rather than with IDLE, which not every
                # Redis-protocol server (fakeredis under `overture dev`) has.
                try:
                    pending: Any = await self._redis.xpending_range(stream, GROUP, min="-", max="+", count=self._batch)
                except ResponseError as error:
                    if "NOGROUP" in str(error):  # Redis lost the stream; the reader recreates the group
                        continue
                    raise
                stale = {e["message_id"]: int(e["times_delivered"]) for e in pending if e["time_since_delivered"] >= min_idle_ms}
                if not stale:
                    continue
                claimed: Any = await self._redis.xclaim(stream, GROUP, self._consumer, min_idle_ms, list(stale))
                entries = [(stream, message_id, fields, stale.get(message_id, 1) + 1) for message_id, fields in claimed if fields]
                if entries:
                    await self._process(entries)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _process(self, entries: Sequence[Entry]) -> None:
        """Start the runs of *entries* (of any partitions) as one batch, then ack them."""
        readable: list[tuple[str, Any, str, event_pb2.Event, int, bytes]] = []
        done: dict[str, list[Any]] = {}
        now = time.time()
        for stream, message_id, fields, deliveries in entries:
            tenant = _text(fields.get(b"tenant", b""))
            try:
                event = event_pb2.Event.FromString(fields[b"event"])
            except Exception as error:  # noqa: BLE001 - a malformed entry is poison, not a crash
                await self._dead_letters.add_poison(tenant=tenant, stream_entry=_text(message_id), payload=fields.get(b"event", b""),
                                                    attempts=deliveries, error=f"unreadable entry: {type(error).__name__}")
                log.error("consumer.dead_lettered", stream=stream, reason="unreadable entry")
                done.setdefault(stream, []).append(message_id)
                continue
            readable.append((stream, message_id, tenant, event, deliveries, fields[b"event"]))
            if event.received_at.seconds:
                EVENT_AGE.observe(max(0.0, now - event.received_at.seconds - event.received_at.nanos / 1e9))
        try:
            await self._handle([(tenant, event) for _, _, tenant, event, _, _ in readable])
            for stream, message_id, *_ in readable:
                done.setdefault(stream, []).append(message_id)
        except Exception as error:  # noqa: BLE001 - isolate the entry that fails, below
            log.warning("consumer.batch_failed", entries=len(readable), error=type(error).__name__)
            for stream, message_id, tenant, event, deliveries, payload in readable:
                try:
                    await self._handle([(tenant, event)])
                except Exception as single:  # noqa: BLE001 - stays pending and is retried by reclaim, then dead-lettered
                    if deliveries < self._max_deliveries:
                        log.warning("consumer.handle_failed", event_id=event.event_id, deliveries=deliveries, error=type(single).__name__)
                        continue
                    await self._dead_letters.add_poison(tenant=tenant, stream_entry=_text(message_id), payload=payload,
                                                        attempts=deliveries, error=f"{type(single).__name__}: {single}"[:500])
                    log.error("consumer.dead_lettered", stream=stream, deliveries=deliveries, error=type(single).__name__)
                done.setdefault(stream, []).append(message_id)
        if len(done) == 1:
            ((stream, ids),) = done.items()
            await self._redis.xack(stream, GROUP, *ids)
        elif done:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, ids in done.items():
                    pipe.xack(stream, GROUP, *ids)
                await pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
