"""Accepted means durable: kill -9 the ingest process in the middle of a
load, flush Redis, restart, and every acknowledged event is on the stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture_runtime.clients import wait_until_serving
from overture_runtime.testing import free_port
from tests.conftest import SERVICE_TOKEN, TOKENS, admin_metadata
from tests.thinpath import eventually

pytestmark = pytest.mark.e2e
MD = admin_metadata()


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "overture_cli.main", "serve", "ingest"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def _stream(url: str, namespace: str) -> list[str]:
    client = aioredis.Redis.from_url(url)
    try:
        ids: list[str] = []
        async for key in client.scan_iter(match=f"{namespace}:stream:events:{{p*"):
            for _, fields in await client.xrange(key):
                ids.append(fields[b"event_id"].decode())
        return ids
    finally:
        await client.aclose()


async def test_acknowledged_events_survive_kill_9_and_a_redis_flush(database_url: str, throwaway_redis: object, tmp_path: Path) -> None:
    """After kill -9 mid-load and FLUSHALL, a stream reader finds every acknowledged event (missing = 0) and nothing never sent."""
    redis_url = throwaway_redis()  # type: ignore[operator]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, OVERTURE_REDIS_NAMESPACE="dur", OVERTURE_AUTH_TOKENS=json.dumps(TOKENS),
               OVERTURE_SERVICE_TOKEN=SERVICE_TOKEN, OVERTURE_INGEST_GRPC_PORT=str(port), OVERTURE_INGEST_HTTP_PORT=str(free_port()),
               OVERTURE_INGEST_METRICS_PORT="0", OVERTURE_STREAM_PARTITIONS="4", OVERTURE_RULES_ADDRESS="127.0.0.1:1",
               OVERTURE_ORCHESTRATOR_ADDRESS="127.0.0.1:1")
    address = f"127.0.0.1:{port}"
    log = tmp_path / "ingest.log"
    first = _start(env, log)
    assert await wait_until_serving(address), log.read_text()

    sent: set[str] = set()
    acked: set[str] = set()
    unacked: list[list[event_pb2.Event]] = []
    stop = asyncio.Event()

    async def produce() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            batch_no = 0
            while not stop.is_set():
                batch = [event_pb2.Event(event_id=f"k-{batch_no}-{i}", event_type="item.viewed", subject_id=f"s{i % 13}") for i in range(100)]
                batch_no += 1
                sent.update(e.event_id for e in batch)
                try:
                    reply = await stub.IngestEvents(I.IngestEventsRequest(events=batch), metadata=MD, timeout=5, wait_for_ready=False)
                except grpc.aio.AioRpcError:
                    unacked.append(batch)
                    return
                acked.update(r.event_id for r in reply.results if r.status in (I.EVENT_RESULT_STATUS_ACCEPTED, I.EVENT_RESULT_STATUS_DUPLICATE))

    producer = asyncio.create_task(produce())
    await eventually(lambda: _async(len(acked) >= 2000), what="2,000 acknowledged events")
    first.send_signal(signal.SIGKILL)  # mid-load: the producer is sending the next batch
    await asyncio.to_thread(first.wait)
    stop.set()
    await producer
    flusher = aioredis.Redis.from_url(redis_url)
    await flusher.flushall()
    await flusher.aclose()

    second = _start(env, log)
    try:
        assert await wait_until_serving(address), log.read_text()
        async with grpc.aio.insecure_channel(address) as channel:  # the producer retries what was never acknowledged
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            for batch in unacked:
                reply = await stub.IngestEvents(I.IngestEventsRequest(events=batch), metadata=MD)
                acked.update(r.event_id for r in reply.results)

        async def all_acknowledged_on_stream() -> list[str] | None:
            ids = await _stream(redis_url, "dur")
            return ids if acked <= set(ids) else None

        on_stream = await eventually(all_acknowledged_on_stream, within=60, what="every acknowledged event on the stream")
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.wait, 20)
    missing = acked - set(on_stream)
    phantom = set(on_stream) - sent
    redelivered = len(on_stream) - len(set(on_stream))
    assert len(acked) >= 2000 and missing == set() and phantom == set()
    # Redeliveries happen only where the relay could not know (the flush): a
    # reader that dedupes by event id sees each event once.
    assert len(set(on_stream)) == len(acked) and redelivered >= 0


async def _async(value: object) -> object:
    return value
