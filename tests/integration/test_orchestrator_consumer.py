"""The stream consumer on a real Redis: the partitions' readers hand their
entries to one starting task, which starts what they brought together (up
to a batch) and acks each partition's entries; a partition stays in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from overture.common.v1 import event_pb2
from overture_orchestrator.consumer import GROUP, STREAM, EventConsumer
from overture_runtime.redis import Keys
from tests.conftest import REDIS_URL, TENANT
from tests.thinpath import eventually


class _Starter:
    """Records each batch it is handed; the first waits until released, so that the other partitions' entries pile up."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(self, entries: Sequence[tuple[str, event_pb2.Event]]) -> None:
        self.batches.append([event.event_id for _, event in entries])
        if len(self.batches) == 1:
            await self.release.wait()


async def _add(redis: aioredis.Redis, keys: Keys, partition: int, event_ids: list[str]) -> None:
    """Append *event_ids* to a partition at once (MULTI), so that its reader reads them together."""
    async with redis.pipeline(transaction=True) as pipe:
        for event_id in event_ids:
            event = event_pb2.Event(event_id=event_id, event_type="order.completed", subject_id=event_id)
            pipe.xadd(keys.stream(STREAM, partition), {"tenant": TENANT, "event_id": event_id, "event": event.SerializeToString()})
        await pipe.execute()


@contextlib.asynccontextmanager
async def _consuming(namespace: str, *, batch: int) -> AsyncIterator[tuple[aioredis.Redis, Keys, _Starter, EventConsumer]]:
    """A consumer of every partition running on a real Redis with a :class:`_Starter`; stopped (the starter released) after."""
    redis = aioredis.Redis.from_url(REDIS_URL)
    keys = Keys(namespace)
    starter = _Starter()
    consumer = EventConsumer(redis=redis, keys=keys, partitions=8, consumer="c1", dead_letters=None,  # type: ignore[arg-type]
                             handle=starter, batch=batch)
    await consumer.ensure_groups()
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    try:
        yield redis, keys, starter, consumer
    finally:
        stopping.set()
        starter.release.set()
        await task
        await redis.aclose()


async def _pending(redis: aioredis.Redis, keys: Keys) -> int:
    return sum([int((await redis.xpending(keys.stream(STREAM, p), GROUP))["pending"]) for p in range(8)])


async def test_entries_of_several_partitions_start_as_one_batch_and_are_acked(redis_namespace: str) -> None:
    batches_before = REGISTRY.get_sample_value("overture_orchestrator_start_entries_count") or 0
    entries_before = REGISTRY.get_sample_value("overture_orchestrator_start_entries_sum") or 0
    async with _consuming(redis_namespace, batch=100) as (redis, keys, starter, consumer):
        await _add(redis, keys, 0, ["a1", "a2"])
        await eventually(lambda: _async(starter.batches or None), what="the first batch")
        # While it is being handled, three other partitions bring entries.
        await _add(redis, keys, 3, ["b1", "b2"])
        await _add(redis, keys, 5, ["c1"])
        await _add(redis, keys, 7, ["d1", "d2", "d3"])
        await eventually(lambda: _async(len(consumer._brought) == 3 or None), what="the three partitions' reads")
        starter.release.set()
        await eventually(lambda: _async(len(starter.batches) == 2 or None), what="the second batch")
        assert starter.batches[0] == ["a1", "a2"]
        assert sorted(starter.batches[1]) == ["b1", "b2", "c1", "d1", "d2", "d3"]  # one batch for the three partitions
        assert starter.batches[1].index("d1") < starter.batches[1].index("d2") < starter.batches[1].index("d3")
        assert await eventually(lambda: _pending_none(redis, keys), what="every entry acked")
        # The batches show in the metrics: two batches, eight entries.
        assert (REGISTRY.get_sample_value("overture_orchestrator_start_entries_count") or 0) - batches_before == 2
        assert (REGISTRY.get_sample_value("overture_orchestrator_start_entries_sum") or 0) - entries_before == 8


async def test_a_batch_takes_whole_reads_up_to_its_size(redis_namespace: str) -> None:
    """Reads are taken whole and oldest first while they fit in ``batch`` entries; the rest make the next batch."""
    async with _consuming(redis_namespace, batch=3) as (redis, keys, starter, consumer):
        await _add(redis, keys, 0, ["a1"])
        await eventually(lambda: _async(starter.batches or None), what="the first batch")
        await _add(redis, keys, 1, ["b1", "b2"])
        await eventually(lambda: _async(len(consumer._brought) == 1 or None), what="partition 1's read")
        await _add(redis, keys, 2, ["c1", "c2"])
        await eventually(lambda: _async(len(consumer._brought) == 2 or None), what="partition 2's read")
        starter.release.set()
        await eventually(lambda: _async(len(starter.batches) == 3 or None), what="the other batches")
        assert starter.batches[1:] == [["b1", "b2"], ["c1", "c2"]]  # 2 + 2 entries would pass the batch of 3
        assert await eventually(lambda: _pending_none(redis, keys), what="every entry acked")


async def _async(value: object) -> object:
    return value


async def _pending_none(redis: aioredis.Redis, keys: Keys) -> bool | None:
    return True if await _pending(redis, keys) == 0 else None


async def test_a_reader_that_fails_ends_every_reader_and_the_starting_task(redis_namespace: str) -> None:
    """When handling raises (here: the dead-letter queue cannot be written), run() raises and leaves no reader behind
    waiting for a starting task that is gone, so that a restarted run() reads each partition once."""
    redis = aioredis.Redis.from_url(REDIS_URL)
    keys = Keys(redis_namespace)

    async def failing(entries: Sequence[tuple[str, event_pb2.Event]]) -> None:
        raise RuntimeError("the starter is broken")

    consumer = EventConsumer(redis=redis, keys=keys, partitions=8, consumer="c1", dead_letters=None,  # type: ignore[arg-type]
                             handle=failing, batch=10, max_deliveries=1)
    try:
        await consumer.ensure_groups()
        await _add(redis, keys, 2, ["x1"])
        try:
            await asyncio.wait_for(consumer.run(asyncio.Event()), timeout=20)
        except AttributeError:
            pass  # the dead-letter queue (None here) could not take the poison entry
        else:
            raise AssertionError("run() should have raised")
        await asyncio.sleep(0)
        left = [name for t in asyncio.all_tasks() if not t.done()
                and (name := getattr(t.get_coro(), "__qualname__", "")).startswith("EventConsumer.")]
        assert left == []
    finally:
        await redis.aclose()


async def test_the_age_of_each_event_at_its_start_is_measured_from_its_receipt(redis_namespace: str) -> None:
    """Events that ingest received two seconds ago show in the event-age histogram at two seconds or more; an
    event without a receipt time is not counted."""
    count_before = REGISTRY.get_sample_value("overture_orchestrator_event_age_seconds_count") or 0
    sum_before = REGISTRY.get_sample_value("overture_orchestrator_event_age_seconds_sum") or 0
    async with _consuming(redis_namespace, batch=100) as (redis, keys, starter, _):
        starter.release.set()
        received = time.time() - 2
        async with redis.pipeline(transaction=True) as pipe:
            for event_id in ("aged-1", "aged-2", "unstamped"):
                event = event_pb2.Event(event_id=event_id, event_type="order.completed", subject_id="aged")
                if event_id != "unstamped":
                    event.received_at.FromNanoseconds(int(received * 1e9))
                pipe.xadd(keys.stream(STREAM, 1), {"tenant": TENANT, "event_id": event_id, "event": event.SerializeToString()})
            await pipe.execute()
        await eventually(lambda: _async(sum(len(b) for b in starter.batches) == 3 or None), what="the three events handled")
    assert (REGISTRY.get_sample_value("overture_orchestrator_event_age_seconds_count") or 0) - count_before == 2
    aged = (REGISTRY.get_sample_value("overture_orchestrator_event_age_seconds_sum") or 0) - sum_before
    assert 4 <= aged < 60
