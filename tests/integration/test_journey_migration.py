"""MigrateRuns on real PostgreSQL and Redis: live runs move to another version
per step mapping, keep their timers and continue on the new version; runs
whose step has no target, or that are in the middle of a step of another
kind, or that a worker is executing, stay where they are and are reported;
each move is audited, and a repeated request is answered from the first."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture_orchestrator.deadletters import DeadLetters
from overture_orchestrator.model import RunState
from overture_orchestrator.runs import Outcome, RunStore
from overture_orchestrator.tables import run_context, tokens, waits
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_to_dict
from tests.conftest import TENANT
from tests.thinpath import eventually

from .cluster import Cluster
from .lifecycle_support import MD, START, World, audit_entries, delay_journey, lifecycle_cluster, orchestrator_app, publish, waiting_runs
from .test_journey_publish_checks import _refusal

V1 = delay_journey(("wait", "delay"), ("wait-more", "delay"), ("done", "exit"))
V2 = delay_journey(("hold", "delay"), ("finish", "exit"))


@pytest.fixture
async def world(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[World]:
    async with lifecycle_cluster(make_settings, tmp_path) as running:
        yield running


async def _run(c: Cluster, run_id: str) -> run_pb2.Run:
    return (await c.orchestrator.GetRun(O.GetRunRequest(run_id=run_id), metadata=MD)).run


async def _tokens(c: Cluster) -> dict[str, tuple[str, dt.datetime]]:
    async with orchestrator_app(c).db.connect() as conn:
        return {r.run_id: (r.node, r.due_time) for r in (await conn.execute(sa.select(tokens))).all()}


async def _migrate(c: Cluster, mapping: dict[str, str], *, request_id: str = "", to_version: int = 2,
                   reason: str = "fix the copy") -> O.MigrateRunsResponse:
    return await c.orchestrator.MigrateRuns(O.MigrateRunsRequest(
        journey="trial", from_version=1, to_version=to_version, step_mapping=mapping, reason=reason, request_id=request_id), metadata=MD)


async def _two_groups(c: Cluster, clock: ManualClock) -> tuple[list[run_pb2.Run], list[run_pb2.Run]]:
    """Runs of v1 at step wait-more (ann, ben: a day in) and at step wait (cat, dan: just started), then v2 published."""
    await publish(c, "trial", V1)
    ahead = await waiting_runs(c, "trial", ["ann", "ben"])
    clock.advance(dt.timedelta(days=1, seconds=1))

    async def moved_on() -> bool:
        return all(run.current_step == "wait-more" for run in [await _run(c, r.run_id) for r in ahead])

    await eventually(moved_on, what="the first runs to reach wait-more")
    behind = await waiting_runs(c, "trial", ["cat", "dan"])
    await publish(c, "trial", V2)
    return ahead, behind


async def test_runs_move_per_mapping_keep_their_timers_and_continue_on_the_new_version(world: World) -> None:
    """Runs at `wait` move to v2's `hold` with the same wake time and then finish on v2; runs at `wait-more`, which v2 lacks, stay on v1 (STEP_NOT_IN_VERSION) and finish there."""
    c, clock = world
    ahead, behind = await _two_groups(c, clock)
    timers = await _tokens(c)
    done = await _migrate(c, {"wait": "hold"}, to_version=0)
    assert (done.migrated_count, done.to_version) == (2, 2)
    assert sorted((r.run_id, r.reason) for r in done.rejections) == sorted((r.run_id, "STEP_NOT_IN_VERSION") for r in ahead)
    assert "wait-more" in done.rejections[0].description
    after = await _tokens(c)
    for run in behind:
        moved = await _run(c, run.run_id)
        assert (moved.journey_version, moved.current_step, moved.state) == (2, "hold", run_pb2.RUN_STATE_WAITING)
        assert after[run.run_id] == ("hold", timers[run.run_id][1])  # the timer is kept, not restarted
    for run in ahead:
        assert ((await _run(c, run.run_id)).journey_version, after[run.run_id]) == (1, timers[run.run_id])
    v1, v2 = [(await c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name="trial", version=v), metadata=MD)).stats for v in (1, 2)]
    assert (v1.active, {s.step_id: s.waiting for s in v1.steps}) == (2, {"wait": 0, "wait-more": 2})
    assert (v2.active, {s.step_id: s.waiting for s in v2.steps}) == (2, {"hold": 2})
    clock.set(START + dt.timedelta(days=3))

    async def finished() -> list[run_pb2.Run] | None:
        found = [await _run(c, r.run_id) for r in [*ahead, *behind]]
        return found if all(r.state == run_pb2.RUN_STATE_COMPLETED for r in found) else None

    runs = await eventually(finished, what="every run to finish")
    assert [[s.step_id for s in r.steps] for r in runs] == [["wait", "wait-more", "done"]] * 2 + [["wait", "hold", "finish"]] * 2


async def test_a_waiting_token_moves_only_to_a_step_of_its_kind(world: World) -> None:
    """A run waiting on a delay is not moved to an exit step (STEP_KIND_CHANGED), and its rows are untouched."""
    c, _ = world
    await publish(c, "trial", V1)
    (run,) = await waiting_runs(c, "trial", ["ann"])
    await publish(c, "trial", V2)
    before = await _tokens(c)
    done = await _migrate(c, {"wait": "finish"})
    assert done.migrated_count == 0
    assert [(r.run_id, r.reason) for r in done.rejections] == [(run.run_id, "STEP_KIND_CHANGED")]
    assert await _tokens(c) == before and (await _run(c, run.run_id)).journey_version == 1


async def test_each_moved_run_is_audited_and_a_repeated_request_is_answered_from_the_first(world: World) -> None:
    """Every moved run gets a RUN_MIGRATED entry with the actor, reason and steps; the same request_id again returns the first answer and records nothing; reusing it for another request is refused."""
    c, clock = world
    _, behind = await _two_groups(c, clock)
    first = await _migrate(c, {"wait": "hold"}, request_id="mig-1")
    again = await _migrate(c, {"wait": "hold"}, request_id="mig-1")
    assert again == first and first.migrated_count == 2
    entries = await audit_entries(c, A.AUDIT_ACTION_RUN_MIGRATED)
    assert sorted(e.target for e in entries) == sorted(f"run/{r.run_id}" for r in behind)
    assert {(e.actor, e.reason) for e in entries} == {("alice@acme", "fix the copy")}
    assert struct_to_dict(entries[0].details) == {"journey": "trial", "from_version": "1", "to_version": "2", "steps": "wait->hold"}
    code, _, reason = await _refusal(_migrate(c, {"wait": "hold"}, request_id="mig-1", reason="something else"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_a_run_a_worker_holds_is_not_moved_and_the_workers_outcome_lands_on_its_own_version(world: World) -> None:
    """A run whose token a worker has claimed is reported RUN_BUSY and left alone; the worker then records its outcome on v1; a token claimed after a migration comes with the new version and step."""
    c, _ = world
    await publish(c, "trial", V1)
    held, free = await waiting_runs(c, "trial", ["ann", "ben"])
    await publish(c, "trial", V2)
    app = orchestrator_app(c)
    # Another replica a day later claims ann's due timer and is executing it.
    later = ManualClock(START + dt.timedelta(days=1, minutes=1))
    ids = IdGenerator(later)
    worker = RunStore(app.db, later, ids, owner="replica-2", dead_letters=DeadLetters(app.db, later, ids))
    async with app.db.begin() as conn:  # only ann's token is due for it
        await conn.execute(tokens.update().where(tokens.c.run_id == free.run_id).values(due_time=START + dt.timedelta(days=9)))
    (work,) = await worker.claim(owner="replica-2:batch-1", limit=10)
    assert (work.run_id, work.journey_version, work.node) == (held.run_id, 1, "wait")

    done = await _migrate(c, {"wait": "hold"})
    assert done.migrated_count == 1
    assert [(r.run_id, r.reason) for r in done.rejections] == [(held.run_id, "RUN_BUSY")]
    assert (await _run(c, held.run_id)).journey_version == 1
    # The worker's outcome, computed on v1, is recorded on the run it claimed, which is still on v1.
    recorded = await worker.record(owner="replica-2:batch-1", outcomes=[Outcome(work=work, run_state=RunState.COMPLETED, node="")])
    assert recorded == 1 and (await _run(c, held.run_id)).state == run_pb2.RUN_STATE_COMPLETED
    # ben's run moved; a claim of its timer now executes v2's step.
    (moved,) = await RunStore(app.db, ManualClock(START + dt.timedelta(days=10)), ids, owner="replica-2",
                              dead_letters=DeadLetters(app.db, later, ids)).claim(owner="replica-2:batch-2", limit=10)
    assert (moved.run_id, moved.journey_version, moved.node) == (free.run_id, 2, "hold")


def _waiting_for_open(wait_id: str, end_id: str, event_type: str) -> J.JourneySpec:
    spec = delay_journey((end_id, "exit"))
    step = J.Step(id=wait_id)
    step.wait_for_event.event_type = event_type
    step.wait_for_event.timeout.FromTimedelta(dt.timedelta(days=1))
    step.wait_for_event.on_event_step = step.wait_for_event.on_timeout_step = end_id
    spec.steps.insert(0, step)
    return spec


async def test_what_a_waiting_run_registered_and_kept_follows_its_renamed_step(world: World) -> None:
    """A run waiting for an event moves with its wait registration (new step, version and event type) and its context keys of mapped steps move to their new ids."""
    c, _ = world
    await publish(c, "trial", _waiting_for_open("wait-open", "done", "email.opened"))
    (run,) = await waiting_runs(c, "trial", ["ann"])
    await publish(c, "trial", _waiting_for_open("await-click", "finish", "email.clicked"))
    app = orchestrator_app(c)
    async with app.db.begin() as conn:  # what earlier steps would have kept: one of a mapped step, one already under its new id
        await conn.execute(run_context.insert(), [
            dict(tenant=TENANT, run_id=run.run_id, key=key, value={"n": n})
            for key, n in (("wait-open.visits", 1), ("wait-open.event", 2), ("await-click.event", 3), ("other.response", 4))])
    done = await _migrate(c, {"wait-open": "await-click"})
    assert (done.migrated_count, list(done.rejections)) == (1, [])
    async with app.db.connect() as conn:
        wait = (await conn.execute(sa.select(waits))).one()
        kept = dict((await conn.execute(sa.select(run_context.c.key, run_context.c.value))).all())
    assert (wait.step_id, wait.journey_version, wait.event_type) == ("await-click", 2, "email.clicked")
    assert kept == {"await-click.visits": {"n": 1}, "wait-open.event": {"n": 2}, "await-click.event": {"n": 3}, "other.response": {"n": 4}}


async def test_nothing_moves_when_the_request_is_impossible(world: World) -> None:
    """An unknown target step, an unknown source step, the same version twice and a version that does not exist are refused before any run moves."""
    c, _ = world
    await publish(c, "trial", V1)
    (run,) = await waiting_runs(c, "trial", ["ann"])
    await publish(c, "trial", V2)
    code, violations, _ = await _refusal(_migrate(c, {"wait": "nowhere", "gone": "hold"}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "version 2 has no step 'nowhere'" in violations["step_mapping[wait]"]
    assert "version 1 has no step 'gone'" in violations["step_mapping[gone]"]
    code, violations, _ = await _refusal(_migrate(c, {}, to_version=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "to_version" in violations
    code, _, reason = await _refusal(_migrate(c, {}, to_version=7))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND")
    assert (await _run(c, run.run_id)).journey_version == 1

