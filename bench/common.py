"""Shared set-up of the benchmarks: a scratch database, a Redis namespace,
services as separate processes, and latency statistics."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import redis.asyncio as aioredis

from overture_runtime.testing import Processes, service_processes, temporary_database

PG_ADMIN = os.environ.get("OVERTURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("OVERTURE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TOKEN = "bench-token"
SERVICE_TOKEN = "bench-service-token"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
TOKENS = [
    {"token": TOKEN, "tenant": "bench", "roles": ["*"], "principal": "bench"},
    {"token": SERVICE_TOKEN, "tenant": "*", "roles": ["*"], "principal": "svc:bench"},
]


@contextlib.asynccontextmanager
async def services(names: Sequence[str], *, log_dir: Path, **env: str) -> AsyncIterator[Processes]:
    """Run *names* as separate processes on a scratch database and Redis namespace."""
    namespace = f"bench{secrets.token_hex(3)}"
    async with temporary_database(PG_ADMIN) as url:
        try:
            async with service_processes(env={
                "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "OVERTURE_REDIS_NAMESPACE": namespace,
                "OVERTURE_AUTH_TOKENS": json.dumps(TOKENS), "OVERTURE_SERVICE_TOKEN": SERVICE_TOKEN,
                "OVERTURE_LOG_LEVEL": "warning", **env,
            }, log_dir=log_dir, services=names) as running:
                yield running
        finally:
            client = aioredis.Redis.from_url(REDIS_URL)
            keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of *samples* (seconds), in milliseconds."""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000, "max": ordered[-1] * 1000}


def show(title: str, figures: dict[str, object]) -> None:
    """Print one benchmark's figures."""
    print(f"\n{title}")
    for key, value in figures.items():
        print(f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}")
