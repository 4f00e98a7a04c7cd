"""MigrateRuns pages through a journey's live runs on the runs' journey and
state index, reading about a page of rows whatever the journey's history,
on a table that grew to 200,000 runs after its statistics were taken."""

from __future__ import annotations

import datetime as dt

from overture_orchestrator.migrator import live_runs_page
from overture_runtime.db import analyze_grown

from .plans import explain, nodes, orchestrator_tables

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


async def test_a_migration_page_reads_its_live_runs_by_index_among_200000(database_url: str) -> None:
    """With 150,000 completed runs, 30,000 live runs on version 1 and 20,000 on version 2 inserted after ANALYZE, a page of 200
    live version-1 runs is two index ranges of orchestrator_runs_journey_state touching a few hundred buffers."""
    async with orchestrator_tables(database_url) as (conn, db):
        await conn.execute("ANALYZE orchestrator_runs")  # statistics of an empty table
        await conn.execute(f"""
            INSERT INTO orchestrator_runs (tenant, run_id, journey, journey_version, subject_id, trigger_event_id, state, current_step,
                                           create_time, update_time)
            SELECT 'acme', 'r' || lpad(g::text, 7, '0'), 'welcome', CASE WHEN g % 10 = 3 OR g % 10 = 7 THEN 2 ELSE 1 END,
                   's' || g, 'e' || g, CASE WHEN g % 4 = 0 THEN 'waiting' WHEN g % 4 = 1 AND g % 10 IN (1, 9) THEN 'running'
                   ELSE 'completed' END, 'wait', '{NOW.isoformat()}'::timestamptz, '{NOW.isoformat()}'::timestamptz
            FROM generate_series(1, 200000) g
        """)
        assert await analyze_grown(db, prefix="orchestrator") == ["orchestrator_runs"]
        plan = await explain(conn, live_runs_page("acme", "welcome", 1, after="r0100000", limit=200))
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes(plan) if "Scan" in n["Node Type"]]
        assert scans and all(index == "orchestrator_runs_journey_state" for _, index in scans), scans
        assert plan["Actual Rows"] == 200
        touched = int(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))
        assert touched < 100, touched  # 30 here: a page of rows and their index pages; a scan of the table reads ~2,500
