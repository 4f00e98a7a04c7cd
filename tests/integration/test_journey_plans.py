"""The journey engine's per-batch lookups read only the rows they need on
tables that grew after their statistics were taken (autovacuum is off here):
the waits an event batch may end, a subject's live runs for goals, a claim's
run context, and the last entries an entry policy reads, among 100,000 rows
each, each subject with one live run among twenty."""

from __future__ import annotations

import sqlalchemy as sa

from overture_orchestrator.tables import run_context, runs, waits
from overture_runtime.db import analyze_grown

from .plans import buffers, explain, nodes, orchestrator_tables

ROWS = 100_000


def _scans(plan: dict[str, object]) -> list[tuple[str, str | None]]:
    return [(str(n["Node Type"]), n.get("Index Name")) for n in nodes(plan) if "Scan" in str(n["Node Type"])]  # type: ignore[misc]


async def test_each_batch_lookup_of_the_journey_engine_stays_on_its_index(database_url: str) -> None:
    """Waits by (event type, subject), live runs by subject, context by run and last entries by (journey, subject)
    each use their index and touch a few buffers, where a scan would read thousands."""
    async with orchestrator_tables(database_url) as (conn, db):
        await conn.execute("ANALYZE orchestrator_runs; ANALYZE orchestrator_waits; ANALYZE orchestrator_run_context")
        await conn.execute(f"""
            INSERT INTO orchestrator_runs (tenant, run_id, journey, journey_version, subject_id, trigger_event_id, state, current_step,
                                           create_time, update_time)
            SELECT 'acme', 'r' || g, 'j' || (g % 3), 1, 's' || (g / 20), 'e' || g,
                   CASE WHEN g % 20 = 0 THEN 'waiting' ELSE 'completed' END, 'wait', now(), now()
            FROM generate_series(1, {ROWS}) g;
            INSERT INTO orchestrator_waits SELECT 'acme', 'r' || g, 0, 's' || (g % 50000), 'order.completed', 'wait', 'j' || (g % 20), 1
            FROM generate_series(1, {ROWS}) g;
            INSERT INTO orchestrator_run_context SELECT 'acme', 'r' || g, 'wait.event', '{{"event_id": "x"}}'::jsonb
            FROM generate_series(1, {ROWS}) g;
        """)
        assert set(await analyze_grown(db, prefix="orchestrator")) >= {"orchestrator_runs", "orchestrator_waits", "orchestrator_run_context"}
        subjects = [f"s{i}" for i in range(100, 150)]

        w = waits
        plan = await explain(conn, sa.select(w).where((w.c.tenant == "acme") & w.c.event_type.in_(["order.completed", ""])
                                                      & w.c.subject_id.in_(subjects)))
        assert all(index == "orchestrator_waits_event" for _, index in _scans(plan)), _scans(plan)
        assert buffers(plan) < 600 and plan["Actual Rows"] == len(subjects) * ROWS // 50_000

        r = runs
        plan = await explain(conn, sa.select(r.c.run_id, r.c.journey).where(
            (r.c.tenant == "acme") & r.c.subject_id.in_(subjects) & r.c.state.in_(["waiting", "running"]) & r.c.journey.in_(["j0", "j1", "j2"])))
        assert all(index == "orchestrator_runs_live_subject" for _, index in _scans(plan)), _scans(plan)
        assert buffers(plan) < 300 and plan["Actual Rows"] == len(subjects)

        c = run_context
        plan = await explain(conn, sa.select(c).where((c.c.tenant == "acme") & c.c.run_id.in_([f"r{i}" for i in range(1000, 1100)])))
        assert all(index == "orchestrator_run_context_pkey" for _, index in _scans(plan)), _scans(plan)
        assert buffers(plan) < 600 and plan["Actual Rows"] == 100

        plan = await explain(conn, sa.select(r.c.journey, r.c.subject_id, sa.func.max(r.c.create_time)).where(
            (r.c.tenant == "acme") & r.c.journey.in_(["j0", "j1"]) & r.c.subject_id.in_(subjects)).group_by(r.c.journey, r.c.subject_id))
        assert all(index == "orchestrator_runs_once_per_event" for _, index in _scans(plan)), _scans(plan)
        assert buffers(plan) < 1000
