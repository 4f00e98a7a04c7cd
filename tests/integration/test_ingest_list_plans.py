"""ListEvents reads only a page's rows of the event log, on a log of 150,000
events that grew after its statistics were taken (autovacuum is off here),
once the service's own ANALYZE of grown tables has run: a page of a window,
a page after a cursor deep in it, another tenant's, and pages of one or two
event types."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg

from overture_ingest.windows import window_query
from overture_runtime.db import SERVER_SETTINGS, Database, analyze_grown, migrate

from .plans import explain, nodes

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _heap_rows(plan: dict[str, Any]) -> int:
    """Rows the plan's scans of the log returned (each one read from the table)."""
    return sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in nodes(plan) if "Scan" in n["Node Type"])


async def test_a_page_of_a_window_reads_its_own_rows_whatever_the_filter(database_url: str) -> None:
    """Each page walks a window index from its cursor and reads its own rows: a type that is one event in a thousand is
    found without reading the others' rows, and two types read at most a page of each."""
    await migrate(database_url, script_location=ROOT / "services/ingest/overture_ingest/migrations", version_table="ingest_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1), server_settings=dict(SERVER_SETTINGS))
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        await conn.execute("ANALYZE ingest_events")  # the statistics of an empty log
        # 150,000 events, committed ten at a time a second apart, two tenants, a rare type every 1,000th and 300 subjects.
        await conn.execute("""
            INSERT INTO ingest_events (tenant, event_id, event_type, original_event_type, subject_id, occurred_at, received_at,
                                       commit_time, source, id_derived, partition, payload, published_at, profile_pending)
            SELECT CASE WHEN g % 5 = 0 THEN 'globex' ELSE 'acme' END, 'e' || g,
                   CASE WHEN g % 1000 = 1 THEN 'order.refunded' ELSE 'page.viewed' END,
                   'x', 's' || (g % 300), t, t, t, 'test', false, 0, '\\x00'::bytea, t, false
            FROM generate_series(1, 150000) g, LATERAL (SELECT $1::timestamptz + (g / 10) * interval '1 second' AS t) x
        """, T0)
        assert await analyze_grown(db, prefix="ingest") == ["ingest_events"]
        start, end = T0, T0 + dt.timedelta(days=3)
        after = (T0 + dt.timedelta(seconds=5000), 50005)  # inside a commit
        cases = [
            (window_query(tenant="acme", start=start, end=end, limit=101), 101, 1),
            (window_query(tenant="acme", start=start, end=end, after=(T0 + dt.timedelta(seconds=10000), 100003), limit=101), 101, 1),
            (window_query(tenant="globex", start=start, end=end, limit=101), 101, 1),
            (window_query(tenant="acme", start=start, end=end, event_types=["order.refunded"], after=after, limit=101), 99, 1),
            (window_query(tenant="acme", start=start, end=end, event_types=["order.refunded", "user.deleted"], limit=101), 101, 2),
            (window_query(tenant="acme", start=start, end=end, event_types=["order.refunded", "page.viewed"], after=after, limit=101), 101, 2),
        ]
        for query, expected, types in cases:
            plan = await explain(conn, query)
            scans = {(n["Node Type"], n.get("Index Name")) for n in nodes(plan) if "Scan" in n["Node Type"]}
            assert {name for _, name in scans} <= {"ingest_events_window", "ingest_events_type_window"}, scans
            assert all(kind == "Index Scan" for kind, _ in scans), scans
            assert plan["Actual Rows"] == expected
            # The rows read: the page's, and with two types at most a page of each.
            assert _heap_rows(plan) <= expected * types, (_heap_rows(plan), plan)
            assert all(not n.get("Rows Removed by Filter") for n in nodes(plan)), plan  # the cursor bounds the range
    finally:
        await conn.close()
        await db.close()
