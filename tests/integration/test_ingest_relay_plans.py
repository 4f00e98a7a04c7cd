"""The relay takes the next unpublished events by reading only them: on a log
of 150,000 published events that grew after its statistics were taken
(autovacuum is off here), and on a log whose 150,000 events the relay itself
published, which leaves a dead entry per event in the index of unpublished
events until a VACUUM. The statement the relay runs, after its lock statement,
explained with the values it binds (the custom plan of ``plan_cache_mode =
force_custom_plan``), inside a transaction that is rolled back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from overture_ingest.log import _TAKE_LOCK, _TAKE_UNPUBLISHED, EVENT_STREAM
from overture_runtime.db import SERVER_SETTINGS, migrate

from .plans import nodes

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
_INSERT = """
    INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at,
                               commit_time, source, id_derived, partition, payload, published_at, profile_pending)
    SELECT 'acme', 'e' || g, 'page.viewed', 'x', 's' || (g % 300), t, t, t, 'test', false, g % 8, '\\x00'::bytea,
           CASE WHEN g > $3 THEN NULL ELSE t END, false
    FROM generate_series($1::int, $2::int) g, LATERAL (SELECT $4::timestamptz + (g / 10) * interval '1 second' AS t) x
"""


_NOW = T0 + dt.timedelta(days=1)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a migrated, empty, analyzed log, with the relay's state row."""
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1), server_settings=dict(SERVER_SETTINGS))
    try:
        await conn.execute("ANALYZE ingest_events")  # the statistics of an empty log
        await conn.execute("INSERT INTO ingest_relay_state (name, epoch, update_time) VALUES ($1, 'e', now())", EVENT_STREAM)
        yield conn
    finally:
        await conn.close()


async def _explained_take(conn: asyncpg.Connection) -> tuple[dict[str, Any], int]:
    """The executed plan of one take, after the relay's lock statement as the relay runs it, and how many events are
    unpublished after it; rolled back."""
    try:
        async with conn.transaction():
            assert await conn.fetchval(_TAKE_LOCK)
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_TAKE_UNPUBLISHED}", _NOW, 500)
            still = await conn.fetchval("SELECT count(*) FROM ingest_events WHERE published_at IS NULL")
            raise _RollBack
    except _RollBack:
        pass
    return json.loads(explained)[0]["Plan"], int(still)


def _event_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]
             and (n.get("Relation Name") == "ingest_events" or n.get("Index Name", "").startswith("ingest_events"))]
    assert {n.get("Index Name") for n in scans} - {None} == {"ingest_events_unpublished", "ingest_events_pkey"}, scans
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan", "Bitmap Heap Scan") for n in scans), scans
    return scans


async def test_the_relay_reads_only_the_unpublished_events(conn: asyncpg.Connection) -> None:
    await conn.execute(_INSERT, 1, 150_000, 149_700, T0)
    plan, still = await _explained_take(conn)
    assert still == 0  # the 300 were taken and marked
    scans = _event_scans(plan)
    # each scan returns the 300 unpublished events (to pick them, then to mark them), none of the 149,700 others
    assert all(int(n["Actual Rows"]) * int(n["Actual Loops"]) == 300 for n in scans), scans
    assert not any(n.get("Rows Removed by Filter") or n.get("Rows Removed by Index Recheck") for n in scans), scans
    assert plan["Actual Rows"] == 300


async def test_the_events_the_relay_published_are_not_read_again(conn: asyncpg.Connection) -> None:
    """150,000 events in 300 transactions, published by the relay's own statement 500 at a time, no VACUUM: a take that
    finds the next 20 reads about as many buffers as one on a fresh log, not the 150,000 dead index entries (before the
    floor, 2,555 buffers and 8.6 ms for a take that found nothing, growing with every event published)."""
    for first in range(1, 150_001, 500):
        await conn.execute(_INSERT, first, first + 499, 0, T0)
    for _ in range(301):
        async with conn.transaction():
            assert await conn.fetchval(_TAKE_LOCK)
            await conn.execute(_TAKE_UNPUBLISHED, _NOW, 500)
    assert await conn.fetchval("SELECT count(*) FROM ingest_events WHERE published_at IS NULL") == 0
    await conn.execute(_INSERT, 150_001, 150_020, 0, T0)
    plan, still = await _explained_take(conn)
    assert still == 0 and plan["Actual Rows"] == 20
    scans = _event_scans(plan)
    assert all(int(n["Actual Rows"]) * int(n["Actual Loops"]) == 20 for n in scans), scans
    unpublished = [n for n in scans if n.get("Index Name") == "ingest_events_unpublished"]
    assert unpublished and all(int(n["Shared Hit Blocks"]) + int(n["Shared Read Blocks"]) < 20 for n in unpublished), unpublished


async def test_a_backlog_is_taken_in_order_not_read_whole(conn: asyncpg.Connection) -> None:
    """300,000 unpublished events (the stream was down), on the statistics of an empty log: a take reads its 500 down the
    index, not all 300,000 to sort them (85 ms a batch, before the relay's lock statement ruled out that plan)."""
    await conn.execute(_INSERT, 1, 300_000, 0, T0)
    plan, still = await _explained_take(conn)
    assert still == 299_500 and plan["Actual Rows"] == 500
    scans = _event_scans(plan)
    assert all(int(n["Actual Rows"]) * int(n["Actual Loops"]) == 500 for n in scans), scans
    assert not any(n["Node Type"] == "Sort" for n in nodes(plan)), plan


class _RollBack(Exception):
    pass
