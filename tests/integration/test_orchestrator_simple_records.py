"""Simple outcomes recorded in one statement (``simple_records``) leave the
database exactly as the general transaction (``recording.Recorder``) does:
the same batch is recorded both ways, for two tenants holding the same runs,
and every table it touches is compared. Tokens another claim holds are left
alone by both. Batches with other outcomes take the general path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture_orchestrator.deadletters import DeadLetters
from overture_orchestrator.model import RunState, StepState, TokenState
from overture_orchestrator.recording import Recorder
from overture_orchestrator.runs import RunStore
from overture_orchestrator.simple_records import is_simple, record_simple
from overture_orchestrator.tables import runs, stats, step_attempts, tokens, waits
from overture_orchestrator.work import Attempt, Effects, Outcome, Work
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.db import Database, migrate

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
OWNER = "replica-1#7"


async def _seed(db: Database, tenant: str) -> None:
    """Five runs at step "send" of journey "welcome" v3, leased to OWNER but the last (another claim's); one waits for an event."""
    async with db.begin() as conn:
        await conn.execute(runs.insert(), [
            dict(tenant=tenant, run_id=f"r{i}", journey="welcome", journey_version=3, subject_id=f"s{i}", trigger_event_id=f"e{i}",
                 state="running", current_step="send", create_time=NOW, update_time=NOW, actions=i) for i in range(5)])
        await conn.execute(tokens.insert(), [
            dict(tenant=tenant, run_id=f"r{i}", token=0, node="send", state="ready", due_time=NOW, attempts=0, evaluations=0,
                 lease_owner=OWNER if i < 4 else "replica-2#1", deadline=None, node_since=NOW - dt.timedelta(seconds=1))
            for i in range(5)])
        await conn.execute(waits.insert(), [dict(tenant=tenant, run_id="r2", token=0, subject_id="s2", event_type="email.clicked",
                                                 step_id="send", journey="welcome", journey_version=3)])


def _outcomes(tenant: str) -> list[Outcome]:
    def work(i: int) -> Work:
        return Work(tenant=tenant, run_id=f"r{i}", token=0, journey="welcome", journey_version=3, subject_id=f"s{i}",
                    trigger_event=event_pb2.Event(event_id=f"e{i}"), inline_spec=None, node="send", state=TokenState.READY, attempts=0,
                    evaluations=1, node_since=NOW - dt.timedelta(seconds=1), actions=i)

    sent = Attempt(step_id="send", state=StepState.COMPLETED, start_time=NOW, end_time=NOW, edge="next", arrival=True, latency=1.0,
                   decision_id="d0", delivery_id="dl0", outcome="sent", detail={"input": {"channel": "email", "to": "a***@e***"}})
    done = Attempt(step_id="done", state=StepState.COMPLETED, start_time=NOW, end_time=NOW, arrival=True)
    later = NOW + dt.timedelta(hours=2)
    return [
        # sent, then the run ended
        Outcome(work=work(0), run_state=RunState.COMPLETED, node="done", attempts=[sent, done], effects=Effects(actions=1)),
        # sent, then waits on a delay
        Outcome(work=work(1), run_state=RunState.WAITING, node="pause", token_state=TokenState.WAITING, due_time=later,
                attempts=[sent, Attempt(step_id="pause", state=StepState.WAITING, start_time=NOW, wake_time=later, arrival=True)],
                effects=Effects(actions=1)),
        # its wait for an event timed out: the wait goes, the token retries the step later
        Outcome(work=work(2), run_state=RunState.WAITING, node="send", token_state=TokenState.RETRY, due_time=later,
                attempts=[Attempt(step_id="send", state=StepState.RETRY, start_time=NOW, error="connectors: UNAVAILABLE")]),
        # its journey was paused
        Outcome(work=work(3), run_state=RunState.CANCELLED, node="", effects=None),
        # another claim holds it: nothing of it is recorded
        Outcome(work=work(4), run_state=RunState.COMPLETED, node="done", attempts=[done]),
    ]


async def _tables(db: Database, tenant: str) -> dict[str, Any]:
    """Every row the recording touches, for *tenant*, without the tenant and the attempts' generated ids."""
    found: dict[str, Any] = {}
    async with db.connect() as conn:
        for table, order in ((runs, "run_id"), (tokens, "run_id"), (waits, "run_id"), (step_attempts, "attempt_id"),
                             (stats, "metric")):
            rows = (await conn.execute(sa.select(table).where(table.c.tenant == tenant).order_by(table.c[order]))).mappings().all()
            found[table.name] = [{k: v for k, v in row.items() if k not in ("tenant", "attempt_id")} for row in rows]
    return found


async def test_a_simple_batch_in_one_statement_records_what_the_general_path_records(database_url: str) -> None:
    await migrate(database_url, script_location=ROOT / "services/orchestrator/overture_orchestrator/migrations",
                  version_table="orchestrator_alembic_version")
    db = Database(database_url)
    clock = ManualClock(NOW)
    ids = IdGenerator(clock)
    try:
        for tenant in ("general", "simple"):
            await _seed(db, tenant)
        general, simple = _outcomes("general"), _outcomes("simple")
        assert all(is_simple(o) for o in simple)
        held = await Recorder(db, clock, ids, DeadLetters(db, clock, ids)).record(owner=OWNER, outcomes=general)
        assert await record_simple(db, ids, owner=OWNER, outcomes=simple, now=NOW) == held == 4
        expected, got = await _tables(db, "general"), await _tables(db, "simple")
        for name in expected:
            assert got[name] == expected[name], name
        assert [r["run_id"] for r in got["orchestrator_tokens"]] == ["r1", "r2", "r4"]  # r0 and r3 ended; r4 untouched
        assert got["orchestrator_waits"] == []
        assert {(s["step_id"], s["metric"]): s["count"] for s in got["orchestrator_stats"]}[("send", "sent")] == 2
        # Recording the same batch again finds no token held (their leases were released): nothing changes.
        assert await record_simple(db, ids, owner=OWNER, outcomes=simple, now=NOW) == 0
        assert await _tables(db, "simple") == got
    finally:
        await db.close()


async def test_other_outcomes_take_the_general_path(database_url: str) -> None:
    """A fork, a new wait, a context key, a failed run or a second token are not simple: the store records the batch in a transaction."""
    await migrate(database_url, script_location=ROOT / "services/orchestrator/overture_orchestrator/migrations",
                  version_table="orchestrator_alembic_version")
    plain = _outcomes("t")[0]
    for effects in (Effects(forks=["b"]), Effects(wait=("email.clicked", "w")), Effects(context={"send.response": {}}),
                    Effects(cancel_siblings=True), Effects(arms=["split:a"]), Effects(goal="bought")):
        assert not is_simple(Outcome(work=plain.work, run_state=RunState.RUNNING, node="x", effects=effects))
    assert not is_simple(Outcome(work=plain.work, run_state=RunState.FAILED, node="send", dead_letter="boom"))
    assert is_simple(Outcome(work=plain.work, run_state=RunState.RUNNING, node="x", effects=Effects(actions=2)))

    db = Database(database_url)
    clock = ManualClock(NOW)
    ids = IdGenerator(clock)
    try:
        await _seed(db, "mixed")
        batch = _outcomes("mixed")[:2]
        batch[1].effects = Effects(actions=1, context={"pause.visits": 1})  # not simple: the whole batch goes the general way
        store = RunStore(db, clock, ids, owner="replica-1", dead_letters=DeadLetters(db, clock, ids))
        assert await store.record(owner=OWNER, outcomes=batch) == 2
        async with db.connect() as conn:
            context = (await conn.execute(sa.text("SELECT key FROM orchestrator_run_context WHERE tenant = 'mixed'"))).scalars().all()
        assert context == ["pause.visits"]
    finally:
        await db.close()
