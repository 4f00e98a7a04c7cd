"""The relay takes the next unpublished events by reading only them, on a log
of 150,000 published events that grew after its statistics were taken
(autovacuum is off here): the statement the relay runs, explained with the
values it binds (the custom plan of ``plan_cache_mode = force_custom_plan``),
inside a transaction that is rolled back."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql

from overture_ingest.log import _TAKE_UNPUBLISHED
from overture_runtime.db import SERVER_SETTINGS, migrate

from .plans import nodes

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


async def test_the_relay_reads_only_the_unpublished_events(database_url: str) -> None:
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1), server_settings=dict(SERVER_SETTINGS))
    try:
        await conn.execute("ANALYZE ingest_events")  # the statistics of an empty log
        await conn.execute("""
            INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at,
                                       commit_time, source, id_derived, partition, payload, published_at, profile_pending)
            SELECT 'acme', 'e' || g, 'page.viewed', 'x', 's' || (g % 300), t, t, t, 'test', false, g % 8, '\\x00'::bytea,
                   CASE WHEN g > 149700 THEN NULL ELSE t END, false
            FROM generate_series(1, 150000) g, LATERAL (SELECT $1::timestamptz + (g / 10) * interval '1 second' AS t) x
        """, T0)
        sql = str(_TAKE_UNPUBLISHED.bindparams(now=T0 + dt.timedelta(days=1), limit=500).compile(
            dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        async with conn.transaction():
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
            still = await conn.fetchval("SELECT count(*) FROM ingest_events WHERE published_at IS NULL")
            assert still == 0  # the 300 were taken and marked
            raise _RollBack
    except _RollBack:
        pass
    finally:
        await conn.close()
    plan: dict[str, Any] = json.loads(explained)[0]["Plan"]
    scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]]
    assert {n.get("Index Name") for n in scans} - {None} == {"ingest_events_unpublished", "ingest_events_pkey"}, scans
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan", "Bitmap Heap Scan") for n in scans), scans
    # each scan returns the 300 unpublished events (to pick them, then to mark them), none of the 149,700 others
    assert all(int(n["Actual Rows"]) * int(n["Actual Loops"]) == 300 for n in scans), scans
    assert not any(n.get("Rows Removed by Filter") or n.get("Rows Removed by Index Recheck") for n in scans), scans
    assert plan["Actual Rows"] == 300


class _RollBack(Exception):
    pass
