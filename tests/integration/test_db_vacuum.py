"""A service's maintenance loop vacuums its tables once a tenth of their rows
changed (autovacuum is off here): 60,000 runs' tokens claimed and ended
leave their dead entries in the due-time index, and a claim that finds
nothing due walks them all until the vacuum; after it, a few buffers."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg

from overture_runtime.db import vacuum_churned

from .plans import orchestrator_tables

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
_DUE = "SELECT tenant, run_id, token FROM orchestrator_tokens WHERE due_time <= $1 ORDER BY due_time LIMIT 100 FOR UPDATE SKIP LOCKED"


async def _claim_buffers(conn: asyncpg.Connection, now: dt.datetime) -> int:
    """Buffers a claim's choice of due tokens reads, when none are due."""
    async with conn.transaction():
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_DUE}", now))[0]["Plan"]
    assert plan["Actual Rows"] == 0
    return int(plan["Shared Hit Blocks"]) + int(plan.get("Shared Read Blocks", 0))


async def test_tables_that_churned_are_vacuumed_and_their_scans_stay_short(database_url: str) -> None:
    async with orchestrator_tables(database_url) as (conn, db):
        await conn.execute("ANALYZE orchestrator_tokens")
        now = NOW
        for batch in range(60):  # runs start (a token due now), are claimed (due after the lease), and end (deleted)
            await conn.execute("""
                INSERT INTO orchestrator_tokens (tenant, run_id, token, node, state, due_time, attempts, evaluations)
                SELECT 'acme', 'r' || $1::int || '-' || g, 0, 'send', 'ready', $2, 0, 0 FROM generate_series(1, 1000) g
            """, batch, now)
            await conn.execute("UPDATE orchestrator_tokens SET due_time = $1::timestamptz + interval '30 seconds', lease_owner = 'w' "
                               "WHERE due_time <= $1", now)
            await conn.execute("DELETE FROM orchestrator_tokens WHERE lease_owner = 'w'")
            now += dt.timedelta(seconds=1)
        await conn.execute("SELECT pg_stat_force_next_flush()")  # the dead rows' count, into the statistics collector now
        before = await _claim_buffers(conn, now)

        assert await vacuum_churned(db, prefix="orchestrator") == ["orchestrator_tokens"]  # not the tables that did not churn
        assert await vacuum_churned(db, prefix="orchestrator") == []  # nothing changed since
        after = await _claim_buffers(conn, now)
        assert before > 100 and after < 10, (before, after)
