"""Shared fixtures: real PostgreSQL and Redis, scoped so tests run in any order.

Each test that needs a database gets its own scratch PostgreSQL database, and
each gets its own Redis key namespace on the shared Redis; nothing a test
does is visible to another.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from overture_runtime.config import Settings
from overture_runtime.testing import temporary_database

PG_ADMIN = os.environ.get("OVERTURE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("OVERTURE_TEST_REDIS", "redis://127.0.0.1:6379/0")

TENANT = "acme"
ADMIN_TOKEN = "test-admin-token"
READER_TOKEN = "test-reader-token"
OTHER_TENANT_TOKEN = "test-other-tenant-token"
SERVICE_TOKEN = "test-service-token"
TOKENS = [
    {"token": ADMIN_TOKEN, "tenant": TENANT, "roles": ["*"], "principal": "alice@acme"},
    {"token": READER_TOKEN, "tenant": TENANT, "roles": ["rules.read", "events.read", "runs.read", "journeys.read"], "principal": "reader"},
    {"token": OTHER_TENANT_TOKEN, "tenant": "globex", "roles": ["*"], "principal": "bob@globex"},
    {"token": SERVICE_TOKEN, "tenant": "*", "roles": ["*"], "principal": "svc:test"},
]


def admin_metadata(tenant_token: str = ADMIN_TOKEN) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying *tenant_token*."""
    return (("authorization", f"Bearer {tenant_token}"),)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A scratch PostgreSQL database for this test."""
    async with temporary_database(PG_ADMIN) as url:
        yield url


@contextlib.asynccontextmanager
async def scratch_namespace(prefix: str = "test") -> AsyncIterator[str]:
    """A fresh Redis key namespace, its keys deleted afterwards (for fixtures of any scope)."""
    namespace = f"{prefix}{secrets.token_hex(4)}"
    try:
        yield namespace
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


def settings_for(database_url: str, redis_namespace: str, /, **overrides: object) -> Settings:
    """Settings for in-process services on *database_url* and *redis_namespace*, with the test tokens; any of them,
    ``database_url`` too (a SQLite file), can be overridden."""
    values: dict[str, object] = dict(
        database_url=database_url, redis_url=REDIS_URL, redis_namespace=redis_namespace,
        auth_tokens=json.dumps(TOKENS), service_token=SERVICE_TOKEN, environment="test",
        ingest_http_port=-1, stream_partitions=4, shutdown_grace_seconds=1,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def redis_namespace() -> AsyncIterator[str]:
    """A Redis key namespace for this test, deleted afterwards."""
    async with scratch_namespace() as namespace:
        yield namespace


@pytest.fixture
def make_settings(database_url: str, redis_namespace: str) -> Callable[..., Settings]:
    """Build settings for in-process services on this test's database and namespace."""

    def build(**overrides: object) -> Settings:
        return settings_for(database_url, redis_namespace, **overrides)

    return build


@pytest.fixture
def throwaway_redis(tmp_path: Any) -> Iterator[Callable[[], str]]:
    """Start a private redis-server on a free port (for tests that kill or flush it).

    Yields a function that (re)starts it and returns its URL; the server is
    stopped at the end of the test.
    """
    import shutil
    import subprocess
    import time

    from overture_runtime.testing import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        import socket

        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
