"""Benchmark of ingest.

    .venv/bin/python bench/ingest_throughput.py [--seconds 10] [--clients 4]

1. Durable IngestEvents throughput over gRPC with batches of 100 and 1,000
   (acknowledged only after the batch commits). Baseline in the same run:
   raw batched asyncpg inserts of the same rows into a copy of the events
   table (same indexes and unique key), with the same batch sizes and
   concurrency. Goal 4 of issue 11: >= 0.5x the raw inserts, printed with
   met or NOT met. Goal 5: events per CPU-second of the ingest process
   (user + system time from /proc/<pid>/stat), beside the raw client's
   events per CPU-second of this process. Also the PostgreSQL backends'
   CPU per event, ingest's until the relay has put every event on the
   stream (the seconds that took after the last ack are printed), beside
   the raw inserts'; the raw inserts start once the relay has caught up.
2. The Segment door: /v1/batch throughput with the official
   segment-analytics-python client (gzip, batches of 100).
3. Ack latency on the Segment door at a fixed 2,000 events/s (batches of 20
   at 100 requests/s, open loop): p50/p99.

Ingest runs as its own process against real PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import redis.asyncio as aioredis
import segment.analytics as analytics
from common import (  # type: ignore[import-not-found]
    METADATA,
    REDIS_URL,
    TOKEN,
    BackendCpu,
    CpuMeter,
    goal,
    percentiles,
    service_pid,
    services,
    show,
)

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc


def _batch(size: int, tag: str) -> ingest_service_pb2.IngestEventsRequest:
    events = []
    for i in range(size):
        event = event_pb2.Event(event_id=f"{tag}-{i}", event_type="item.viewed", subject_id=f"s{i % 5000}")
        event.attributes.update({"sku": f"SKU-{i % 300}", "price": 19.99, "currency": "EUR"})
        event.occurred_at.FromJsonString("2026-11-23T12:00:00Z")
        events.append(event)
    return ingest_service_pb2.IngestEventsRequest(events=events)


def _fresh_ids(template: bytes, tag: str) -> ingest_service_pb2.IngestEventsRequest:
    """The template batch with new event ids: parsing it and setting one field
    per event costs the client a fraction of building the events again, so
    the client's CPU stays off the shared cores the service is measured on."""
    request = ingest_service_pb2.IngestEventsRequest.FromString(template)
    for i, event in enumerate(request.events):
        event.event_id = f"{tag}-{i}"
    return request


@dataclass
class Stream:
    """The event stream ingest's relay publishes to, and how many events it should hold."""

    redis: aioredis.Redis
    namespace: str
    expected: int = 0

    async def published(self) -> int:
        keys = [key async for key in self.redis.scan_iter(match=f"{self.namespace}:stream:events:{{p*", count=1000)]
        return sum([await self.redis.xlen(key) for key in keys])

    async def caught_up(self, *, within: float = 300) -> None:
        """Wait until every accepted event is on the stream."""
        deadline = time.monotonic() + within
        while await self.published() < self.expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the relay published {await self.published()} of {self.expected} events within {within:.0f} s")
            await asyncio.sleep(0.02)


async def grpc_throughput(address: str, cpu: CpuMeter, pg: BackendCpu, stream: Stream, *, batch: int, seconds: float,
                          clients: int) -> dict[str, object]:
    # One channel (one connection) per client, as the raw baseline has one
    # connection per client; with OVERTURE_WORKERS they spread over the workers.
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) for _ in range(clients)]
    try:
        stubs = [ingest_service_pb2_grpc.IngestServiceStub(channel) for channel in channels]
        for stub in stubs:
            await stub.IngestEvents(_batch(batch, f"warm{batch}-{id(stub)}"), metadata=METADATA)
            stream.expected += batch
        await stream.caught_up()
        template = _batch(batch, "template").SerializeToString()
        accepted = 0
        latencies: list[float] = []
        end = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal accepted
            k = 0
            while time.perf_counter() < end:
                request = _fresh_ids(template, f"b{batch}-c{n}-{k}")
                k += 1
                started = time.perf_counter()
                reply = await stubs[n].IngestEvents(request, metadata=METADATA, timeout=60)
                latencies.append(time.perf_counter() - started)
                accepted += sum(r.status == ingest_service_pb2.EVENT_RESULT_STATUS_ACCEPTED for r in reply.results)

        await pg.start()
        started = time.perf_counter()
        with cpu.measure():
            await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        stream.expected += accepted
        await stream.caught_up()
        behind = time.perf_counter() - started - elapsed
        await pg.stop()
    finally:
        for channel in channels:
            await channel.close()
    return {"events/s": accepted / elapsed, "batch": batch, "clients": clients,
            **{f"batch ack {k} (ms)": v for k, v in percentiles(latencies).items()},
            "ingest CPU (s)": cpu.seconds, "events per CPU-second": cpu.per_cpu_second(accepted),
            "all published, s after the last ack": behind,
            "PostgreSQL CPU per event, until published (us)": 1e6 * pg.seconds / accepted if accepted else 0.0}


async def raw_asyncpg(dsn: str, pg: BackendCpu, *, batch: int, seconds: float, clients: int) -> tuple[float, float, float]:
    """The same rows, inserted in batches with asyncpg directly: the floor the pipeline is compared to."""
    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_raw_events")
        await conn.execute("CREATE TABLE bench_raw_events (LIKE ingest_events INCLUDING ALL)")
    template = _batch(batch, "raw").events
    now = dt.datetime.now(dt.UTC)
    inserted = 0
    end = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal inserted
        k = 0
        while time.perf_counter() < end:
            rows = [("bench", f"raw-{n}-{k}-{i}", e.event_type, e.event_type, e.subject_id, now, now, now, "grpc", False, i % 8,
                     e.SerializeToString(), None, False, None) for i, e in enumerate(template)]
            k += 1
            async with pool.acquire() as conn:
                result = await conn.fetch(
                    "INSERT INTO bench_raw_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at, "
                    "commit_time, source, id_derived, partition, payload, published_at, profile_pending, profile_applied_at) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[], "
                    "$8::timestamptz[], $9::text[], $10::boolean[], $11::int[], $12::bytea[], $13::timestamptz[], $14::boolean[], "
                    "$15::timestamptz[]) ON CONFLICT (tenant, event_id) DO NOTHING RETURNING event_id",
                    *[list(col) for col in zip(*rows, strict=True)])
                inserted += len(result)

    await pg.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await pg.stop()
    await pool.close()
    return inserted / elapsed, inserted / cpu, 1e6 * pg.seconds / inserted


def segment_throughput(http: str, cpu: CpuMeter, events: int) -> dict[str, object]:
    errors: list[Exception] = []
    client = analytics.Client(write_key=TOKEN, host=http, gzip=True, upload_size=100, max_queue_size=events + 10,
                              on_error=lambda error, _: errors.append(error))
    started = time.perf_counter()
    with cpu.measure():
        for i in range(events):
            client.track(f"user-{i % 1000}", "Product Viewed", {"sku": f"SKU-{i % 300}", "price": 19.99})
        client.flush()
        client.join()
    elapsed = time.perf_counter() - started
    return {"events": events, "events/s": events / elapsed, "errors": len(errors), "ingest CPU (s)": cpu.seconds,
            "events per CPU-second": cpu.per_cpu_second(events - len(errors))}


async def segment_latency(http: str, *, events_per_second: int, per_request: int, seconds: float) -> dict[str, object]:
    rate = events_per_second / per_request
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = 0
    auth = httpx.BasicAuth(TOKEN, "")
    async with httpx.AsyncClient(base_url=http, auth=auth, timeout=10, limits=httpx.Limits(max_connections=200)) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(i: int) -> None:
            nonlocal failures
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            body = {"batch": [{"type": "track", "userId": f"u{(i * per_request + j) % 1000}", "event": "Product Viewed",
                               "messageId": str(uuid.uuid4()), "properties": {"price": 19.99}} for j in range(per_request)]}
            try:
                response = await client.post("/v1/batch", content=gzip.compress(json.dumps(body).encode()),
                                             headers={"content-encoding": "gzip", "content-type": "application/json"})
                failures += response.status_code != 200
            except httpx.TransportError:  # e.g. a keep-alive connection the server closed as it was reused: counted, not fatal
                failures += 1
            latencies.append(loop.time() - scheduled)

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = loop.time() - start
    result: dict[str, object] = {"target events/s": events_per_second, "achieved events/s": total * per_request / elapsed,
                                 "requests": total, "failures": failures}
    result.update({f"ack {k} (ms)": v for k, v in percentiles(latencies).items()})
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="OVERTURE_EVENT_LOOP of the ingest service")
    parser.add_argument("--workers", type=int, default=1, help="OVERTURE_WORKERS of the ingest service")
    args = parser.parse_args()
    print(f"event loop {args.loop}; {args.workers} worker process(es)")
    with tempfile.TemporaryDirectory() as logs:
        async with services(["ingest"], log_dir=Path(logs), OVERTURE_INGEST_RATE_PER_SECOND="0", OVERTURE_EVENT_LOOP=args.loop,
                            OVERTURE_WORKERS=str(args.workers),
                            OVERTURE_RULES_ADDRESS="127.0.0.1:1", OVERTURE_ORCHESTRATOR_ADDRESS="127.0.0.1:1") as running:
            address = running["ingest"]
            http = f"http://127.0.0.1:{running.http_port}"
            dsn = running.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
            cpu = CpuMeter(service_pid("ingest"))
            pg = BackendCpu(dsn)
            redis = aioredis.Redis.from_url(REDIS_URL)
            stream = Stream(redis, running.env["OVERTURE_REDIS_NAMESPACE"])
            summary = []
            for batch in (100, 1000):
                figures = await grpc_throughput(address, cpu, pg, stream, batch=batch, seconds=args.seconds, clients=args.clients)
                raw, raw_cpu, raw_pg = await raw_asyncpg(dsn, pg, batch=batch, seconds=args.seconds, clients=args.clients)
                ratio = float(figures["events/s"]) / raw  # type: ignore[arg-type]
                figures["raw asyncpg inserts events/s"] = raw
                figures["raw asyncpg client events per CPU-second"] = raw_cpu
                figures["raw asyncpg PostgreSQL CPU per event (us)"] = raw_pg
                figures["ratio (ingest / raw)"] = ratio
                figures["goal >= 0.5x raw"] = goal(ratio >= 0.5)
                show(f"IngestEvents over gRPC, durable, batches of {batch}", figures)
                summary.append((f"4. IngestEvents, batches of {batch}", f"{figures['events/s']:.0f} events/s", f"raw asyncpg {raw:.0f}/s",
                                f"{ratio:.2f}x (>= 0.5)", goal(ratio >= 0.5)))
                summary.append((f"5. events per ingest CPU-second ({batch})", f"{figures['events per CPU-second']:.0f}",
                                f"raw client {raw_cpu:.0f}", "-", "printed"))
                summary.append((f"   PostgreSQL CPU per event ({batch})", f"{figures['PostgreSQL CPU per event, until published (us)']:.1f} us",
                                f"raw inserts {raw_pg:.1f} us", "-", "printed"))
            show("Segment /v1/batch with segment-analytics-python (gzip, batches of 100)",
                 await asyncio.to_thread(segment_throughput, http, cpu, 20_000))
            show("Segment /v1/batch ack latency at 2,000 events/s (batches of 20, open loop)",
                 await segment_latency(http, events_per_second=2000, per_request=20, seconds=args.seconds))
            await redis.aclose()
    print("\nGoals (issue 11)")
    for row in summary:
        print(f"  {row[0]:<40} {row[1]:<20} {row[2]:<28} {row[3]:<16} {row[4]}")


if __name__ == "__main__":
    asyncio.run(main())
