"""The relay's take reads only the events it publishes (ADR 0023, ADR 0024):
on a log of 150,000 events that grew after its statistics were taken
(autovacuum is off here), and behind a backlog of 300,000. The statement the
relay runs, prepared on a connection with the relay's settings (which plan it
once, generically, for every cycle), explained as executed with the values
it binds, inside a transaction that is rolled back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from overture_ingest.log import _RELAY_SETTINGS, _TAKE, EVENT_STREAM, _take_args
from overture_runtime.db import SERVER_SETTINGS, migrate

from .plans import nodes

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
_INSERT = """
    INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at,
                               commit_time, source, id_derived, partition, payload, profile_pending)
    SELECT 'acme', 'e' || g, 'page.viewed', 'x', 's' || (g % 300), t, t, t, 'test', false, g % 8, '\\x00'::bytea, false
    FROM generate_series($1::int, $2::int) g, LATERAL (SELECT $3::timestamptz + (g / 10) * interval '1 second' AS t) x
"""
"""Events $1..$2, in one transaction (so with one txid)."""
_NOW = T0 + dt.timedelta(days=1)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection with the relay's settings to a migrated, empty, analyzed log, with the relay's state row."""
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1),
                                 server_settings={**SERVER_SETTINGS, **_RELAY_SETTINGS})
    try:
        await conn.execute("ANALYZE ingest_events")  # the statistics of an empty log
        await conn.execute("INSERT INTO ingest_relay_state (name, epoch, update_time) VALUES ($1, 'e', now())", EVENT_STREAM)
        yield conn
    finally:
        await conn.close()


async def _fill(conn: asyncpg.Connection, events: int, *, per_transaction: int) -> str:
    """*events* more events, *per_transaction* to a transaction; the snapshot after them (one that sees them all)."""
    first = 1 + int(await conn.fetchval("SELECT count(*) FROM ingest_events"))
    for start in range(first, first + events, per_transaction):
        await conn.execute(_INSERT, start, min(start + per_transaction, first + events) - 1, T0)
    return str(await conn.fetchval("SELECT pg_current_snapshot()::text"))


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return f"'{{{','.join(str(int(v)) for v in value)}}}'::bigint[]"
    if isinstance(value, dt.datetime):
        return f"'{value.isoformat()}'::timestamptz"
    assert isinstance(value, str) and "'" not in value
    return f"'{value}'"


async def _explained(conn: asyncpg.Connection, *args: object) -> dict[str, Any]:
    """The executed plan of the take with *args*, prepared as the relay's connection plans it (one generic plan for
    every cycle, under the relay's settings); rolled back."""
    try:
        async with conn.transaction():
            await conn.execute("PREPARE relay_take (timestamptz, bigint, text, text, bigint, bigint, boolean, bigint, bigint, bigint[], "
                               f"bigint, bigint) AS {_TAKE}")
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE relay_take({', '.join(map(_literal, args))})")
            raise _RollBack
    except _RollBack:
        pass
    finally:
        await conn.execute("DEALLOCATE relay_take")
    return json.loads(explained)[0]["Plan"]


async def _explained_take(conn: asyncpg.Connection, lo: str, *, limit: int) -> dict[str, Any]:
    """The executed plan of one take from the position *lo* (a new window), as the relay runs it; rolled back."""
    return await _explained(conn, _NOW, limit, lo, None, None, None, True, *_take_args(lo, None))


def _event_scans(plan: dict[str, Any], *, limit: int) -> list[dict[str, Any]]:
    """The take's two reads of the events (the transactions running when the lower snapshot was taken, and those begun
    after), each a range of the index in order; the only sort merges what they returned (at most a batch each)."""
    scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]
             and (n.get("Relation Name") == "ingest_events" or n.get("Index Name", "").startswith("ingest_events"))]
    assert [n.get("Index Name") for n in scans] == ["ingest_events_unpublished"] * 2, scans
    assert [n["Node Type"] for n in scans] == ["Index Scan"] * 2, scans
    sorts = [n for n in nodes(plan) if n["Node Type"] == "Sort"]
    assert all(sum(int(c["Actual Rows"]) for c in n.get("Plans", [])) <= 2 * limit for n in sorts), sorts
    return scans


async def test_the_take_reads_only_the_events_past_the_relay_position(conn: asyncpg.Connection, database_url: str) -> None:
    """150,000 events in 300 transactions, all published (the position's snapshot sees them; none is marked), then 20 more,
    while a transaction begun before them all is still open elsewhere on the server (the snapshot's xmin is older than
    every event): the take reads the 20 down the index, a handful of buffers, not the 150,000 before them."""
    idle = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with idle.transaction():
            await idle.fetchval("SELECT pg_current_xact_id()")  # holds every snapshot's xmin from here on
            lo = await _fill(conn, 150_000, per_transaction=500)
            await _fill(conn, 20, per_transaction=20)
            plan = await _explained_take(conn, lo, limit=500)
    finally:
        await idle.close()
    scans = _event_scans(plan, limit=500)
    assert sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scans) == 20, scans
    assert not any(n.get("Rows Removed by Filter") for n in scans), scans
    assert sum(int(n["Shared Hit Blocks"]) + int(n["Shared Read Blocks"]) for n in scans) < 20, scans
    assert plan["Actual Rows"] == 20


async def test_a_backlog_is_taken_in_order_not_read_whole(conn: asyncpg.Connection) -> None:
    """300,000 unpublished events (the stream was down) on the statistics of an empty log: a take reads its 500 down the
    index, not all 300,000 to sort them (85 ms a batch, before the relay's settings ruled out that plan)."""
    await _fill(conn, 300_000, per_transaction=10_000)
    plan = await _explained_take(conn, "1:1:", limit=500)
    scans = _event_scans(plan, limit=500)
    assert sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scans) == 500, scans
    assert plan["Actual Rows"] == 500


async def test_a_window_is_continued_from_its_cursor(conn: asyncpg.Connection) -> None:
    """A window of 1,000 events taken 500 at a time: the second take starts at the cursor, reading the next 500 only."""
    lo = await _fill(conn, 10, per_transaction=10)
    await _fill(conn, 1_000, per_transaction=100)
    rows = await conn.fetch(_TAKE, _NOW, 500, lo, None, None, None, False, *_take_args(lo, None))
    hi, last = rows[0]["hi"], rows[-1]
    assert len(rows) == 500 and [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    cursor = (last["txid"], last["seq"])
    plan = await _explained(conn, _NOW, 500, lo, hi, *cursor, False, *_take_args(lo, cursor))
    scans = _event_scans(plan, limit=500)
    assert sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scans) == 500, scans
    assert not any(n.get("Rows Removed by Filter") for n in scans), scans
    rest = await conn.fetch(_TAKE, _NOW, 500, lo, hi, *cursor, False, *_take_args(lo, cursor))
    assert [r["seq"] for r in rows + rest] == list(range(11, 1011))


class _RollBack(Exception):
    pass
