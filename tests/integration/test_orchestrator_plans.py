"""The orchestrator's hot statements read only the rows they need on tables
that grew after their statistics were taken (autovacuum is off here), once
the services' own ANALYZE of grown tables has run: claiming due tokens among
200,000 waiting ones, once-key lookups, primary-key batches, the waits a
batch of events ends, and recording a batch of outcomes in one statement."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from overture.common.v1 import event_pb2
from overture_orchestrator.model import RunState, StepState, TokenState
from overture_orchestrator.simple_records import record_params, record_statement
from overture_orchestrator.tables import runs, tokens
from overture_orchestrator.waits import waiting_for
from overture_orchestrator.work import Attempt, Effects, Outcome, Work
from overture_runtime.clock import IdGenerator
from overture_runtime.db import Database, analyze_grown, tenant_keys

from .plans import orchestrator_tables

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _buffers(node: dict[str, Any]) -> int:
    """Buffers a plan node touched, its children included (EXPLAIN reports them cumulatively)."""
    return int(node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0))


def _sql(statement: Any) -> str:
    return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


async def _explain(conn: asyncpg.Connection, statement: Any) -> list[dict[str, Any]]:
    text = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_sql(statement)}")
    return list(_nodes(json.loads(text)[0]["Plan"]))


async def test_claiming_and_once_key_lookups_stay_on_their_indexes_as_tables_grow(database_url: str) -> None:
    """With 200,000 waiting tokens and runs inserted after ANALYZE, a claim reads the due-time index and touches a
    few buffers, and a once-key lookup reads its unique index."""
    async with orchestrator_tables(database_url) as (conn, db):
        await conn.execute("ANALYZE orchestrator_tokens; ANALYZE orchestrator_runs; ANALYZE orchestrator_waits")  # of empty tables
        await conn.execute("""
            INSERT INTO orchestrator_runs SELECT 'acme', 'r' || g, 'welcome', 1, 's' || g, 'e' || g, 'waiting', 'wait', now(), now()
            FROM generate_series(1, 200000) g;
            INSERT INTO orchestrator_tokens SELECT 'acme', 'r' || g, 0, 'wait',
                   'waiting', $1::timestamptz + (CASE WHEN g <= 50 THEN -1 ELSE 1 END) * interval '1 hour', 0, 0, NULL
            FROM generate_series(1, 200000) g;
            INSERT INTO orchestrator_waits SELECT 'acme', 'r' || g, 0, 's' || g, CASE WHEN g % 2 = 0 THEN 'email.clicked' ELSE '' END,
                   'wait', 'welcome', 1
            FROM generate_series(1, 200000) g;
        """.replace("$1::timestamptz", f"'{NOW.isoformat()}'::timestamptz"))
        # What every service's "maintenance" loop does: the tables grew past twice
        # their size at their last ANALYZE, so their statistics are renewed.
        assert await analyze_grown(db, prefix="orchestrator") == ["orchestrator_runs", "orchestrator_tokens", "orchestrator_waits"]
        assert await analyze_grown(db, prefix="orchestrator") == []
        t = tokens
        claim = (sa.select(t.c.tenant, t.c.run_id, t.c.token).where(t.c.due_time <= NOW).order_by(t.c.due_time).limit(100)
                 .with_for_update(skip_locked=True))
        nodes = await _explain(conn, claim)
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]]
        assert scans == [("Index Scan", "orchestrator_tokens_due")], scans
        assert _buffers(nodes[0]) < 300  # the 50 due rows and their index pages; a scan would read ~2,000
        assert nodes[0]["Actual Rows"] == 50

        async with db.connect() as pg:  # the statements as the services build them for PostgreSQL (keys as one array)
            once = sa.select(runs.c.run_id).where(tenant_keys(pg, runs.c.tenant, runs.c.trigger_event_id, [("acme", "e7"), ("acme", "e9")]))
            held = sa.select(tokens.c.run_id).where(tenant_keys(pg, tokens.c.tenant, tokens.c.run_id, [("acme", f"r{i}") for i in range(100)]))
            statement, params = waiting_for(pg, "acme", ["order.completed", "email.clicked", ""], [f"s{i}" for i in range(1, 101)])
            ended = statement.params(**params)
        nodes = await _explain(conn, once)
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]]
        assert all(kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan") for kind, _ in scans), scans
        assert _buffers(nodes[0]) < 50

        nodes = await _explain(conn, held)
        assert "Seq Scan" not in {n["Node Type"] for n in nodes}
        assert {n.get("Index Name") for n in nodes if n.get("Index Name")} == {"orchestrator_tokens_pkey"}
        assert _buffers(nodes[0]) < 500  # 100 primary-key probes

        await _explain_record(db)

        nodes = await _explain(conn, ended)
        assert "Seq Scan" not in {n["Node Type"] for n in nodes}
        assert {n.get("Index Name") for n in nodes if n.get("Index Name")} == {"orchestrator_waits_event"}
        assert nodes[0]["Actual Rows"] == 100  # each subject waits for one of the types
        assert _buffers(nodes[0]) < 1500  # 3 types x 100 subjects probed


async def _explain_record(db: Database) -> None:
    """The one-statement record of 100 outcomes (runs r51..r150, leased to the claim) reads and writes by primary key:
    no table is scanned. Run in a transaction that is rolled back."""
    owner = "replica#1"
    keys = [f"r{i}" for i in range(51, 151)]
    outcomes = [Outcome(
        work=Work(tenant="acme", run_id=k, token=0, journey="welcome", journey_version=1, subject_id="s", trigger_event=event_pb2.Event(),
                  inline_spec=None, node="wait", state=TokenState.READY, attempts=0, evaluations=0),
        run_state=RunState.COMPLETED, node="done", effects=Effects(actions=1),
        attempts=[Attempt(step_id="wait", state=StepState.COMPLETED, start_time=NOW, end_time=NOW, edge="next", arrival=True)])
        for k in keys]
    explain = record_statement("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ")
    async with db.begin() as conn:
        await conn.execute(tokens.update().where(tokens.c.run_id.in_(keys)).values(lease_owner=owner))
        plan = (await conn.execute(explain, record_params(IdGenerator(), owner=owner, outcomes=outcomes, now=NOW))).scalar()
        await conn.rollback()
    document = plan if isinstance(plan, list) else json.loads(plan)
    nodes = list(_nodes(document[0]["Plan"]))
    scans = {(n["Node Type"], n.get("Relation Name")) for n in nodes if "Scan" in n["Node Type"] and n.get("Relation Name")}
    assert not [s for s in scans if s[0] == "Seq Scan"], scans
    assert {relation for _, relation in scans} >= {"orchestrator_tokens", "orchestrator_runs"}
    assert nodes[0]["Actual Rows"] == 1  # SELECT count(*) FROM kept
    assert _buffers(nodes[0]) < 5000  # 100 runs: a few key probes each, where a scan of 200,000 rows reads ~4,000 pages per table
