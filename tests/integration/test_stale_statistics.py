"""Hot lookups stay on their index when a table grew after its statistics
were taken (this machine's PostgreSQL runs with autovacuum off, as stale
statistics happen in production after bulk loads and on new tenants)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from overture_runtime.db import SERVER_SETTINGS, Database

_TABLE = """
CREATE TABLE decisions (tenant varchar(64), decision_id varchar(64), rule_set varchar(63), subject_id varchar(256),
                        evaluate_time timestamptz, record bytea, PRIMARY KEY (tenant, decision_id));
CREATE INDEX decisions_window ON decisions (tenant, rule_set, evaluate_time);
CREATE INDEX decisions_subject ON decisions (tenant, subject_id, evaluate_time);
ANALYZE decisions;
"""
_GROW = """
INSERT INTO decisions SELECT 'acme', 'id' || g, 'promo', 's' || (g % 1000), now() - (g || ' seconds')::interval, repeat('x', 200)::bytea
FROM generate_series(1, 100000) g
"""


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.fixture
async def dsn(database_url: str) -> AsyncIterator[str]:
    yield database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _plan_after_growth(dsn: str, settings: dict[str, str]) -> list[tuple[str, str | None, int]]:
    """Prepare the lookup on an empty, analyzed table, run it past PostgreSQL's
    generic-plan threshold, grow the table to 100k rows, then EXPLAIN the same
    prepared statement: (node type, index, buffers) of each plan node."""
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        await conn.execute(_TABLE)
        await conn.execute("PREPARE lookup(text, text) AS SELECT record FROM decisions WHERE tenant = $1 AND decision_id = $2")
        for i in range(10):
            await conn.execute(f"EXECUTE lookup('acme', 'missing-{i}')")
        await conn.execute(_GROW)
        text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE lookup('acme', 'id5000')")
        await conn.execute("DROP TABLE decisions")
    finally:
        await conn.close()
    return [(n["Node Type"], n.get("Index Name"), n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0))
            for n in _nodes(json.loads(text)[0]["Plan"])]


async def test_overture_connections_plan_each_lookup_for_the_table_as_it_is(dsn: str) -> None:
    """With Overture's connection settings, a lookup prepared while the table was empty reads the primary key, a few buffers."""
    nodes = await _plan_after_growth(dsn, dict(SERVER_SETTINGS))
    assert [(kind, index) for kind, index, _ in nodes] == [("Index Scan", "decisions_pkey")]
    assert nodes[0][2] <= 10


async def test_the_default_generic_plan_would_scan_the_grown_table(dsn: str) -> None:
    """The control: with PostgreSQL's default plan cache, the same statement keeps its empty-table plan and scans every row."""
    nodes = await _plan_after_growth(dsn, {})
    assert any(kind == "Seq Scan" for kind, _, _ in nodes)
    assert sum(buffers for _, _, buffers in nodes) > 1000


async def test_every_database_connection_carries_the_settings(database_url: str) -> None:
    """Connections from the shared Database (what every service uses) run with plan_cache_mode = force_custom_plan."""
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        async with db.connect() as conn:
            assert (await conn.execute(sa.text("SHOW plan_cache_mode"))).scalar_one() == "force_custom_plan"
    finally:
        await db.close()
