"""Parallel branches on real services and the injected clock: a join that
waits for all of its branches goes on once, after the last; a join for the
first branch goes on at once and cancels the others."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.orchestrator.v1 import run_pb2
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
HOUR = dt.timedelta(hours=1)


async def test_a_join_for_all_branches_waits_for_the_last_and_the_step_after_it_runs_once(world: World) -> None:
    """Both branches send (the guide at once, the checklist after an hour on the clock), the run waits at the join meanwhile, and the summary after the join is sent once."""
    await world.publish("parallel-all")
    address = await world.person("par-all")
    await world.ingest(event("onboarding.started", "par-all"))
    run = await world.waiting_at((await world.run_of("parallel-all", "par-all")).run_id, "later", "meet")
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your guide"]
    await world.advance(HOUR)
    done = await world.ended(run.run_id)
    assert done.state == run_pb2.RUN_STATE_COMPLETED and done.waiting_steps == []
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your guide", "Your checklist", "You are all set"]
    assert {s.step_id: s.attempts for s in done.steps if s.step_id in ("guide", "checklist", "summary")} == {
        "guide": 1, "checklist": 1, "summary": 1}
    assert world.step(done, "fork").outcome == "2 branches started"
    stats = await world.stats("parallel-all")
    meet = next(s for s in stats.steps if s.step_id == "meet")
    assert (meet.entered, meet.waiting) == (2, 0)
    assert next(s for s in stats.steps if s.step_id == "summary").completed == 1
    assert (stats.entered, stats.completed, stats.active) == (1, 1, 0)


async def test_a_join_for_the_first_branch_goes_on_with_it_and_cancels_the_others(world: World) -> None:
    """The guide's branch reaches the join first: the summary is sent at once, the run ends, and the checklist branch never sends even after its hour passes."""
    await world.publish("parallel-any")
    address = await world.person("par-any")
    await world.ingest(event("onboarding.rushed", "par-any"))
    done = await world.ended((await world.run_of("parallel-any", "par-any")).run_id)
    timer = await world.hour_timer()  # waits as long as the cancelled branch would have
    assert done.state == run_pb2.RUN_STATE_COMPLETED and done.waiting_steps == []
    assert world.step(done, "meet").outcome == "the first branch arrived; the others are cancelled"
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your guide", "You are all set"]
    await world.advance(HOUR)
    await world.ended(timer)
    after = await world.run(done.run_id)
    assert "checklist" not in [s.step_id for s in after.steps] and after.waiting_steps == []
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your guide", "You are all set"]
    stats = await world.stats("parallel-any")
    assert all(s.waiting == 0 for s in stats.steps) and "checklist" not in [s.step_id for s in stats.steps]
    assert (stats.entered, stats.completed, stats.active) == (1, 1, 0)
