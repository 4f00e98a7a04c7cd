"""Bounded loops on real services and the injected clock: a loop head's
max_visits ends the run with `loop bound reached`, and a run that would
take more actions than its journey allows fails."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.connectors.v1 import connector_service_pb2 as C
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import profile_service_pb2 as P
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
DAY = dt.timedelta(days=1)


async def test_a_loop_sends_on_each_visit_and_its_bound_ends_the_run(world: World) -> None:
    """A daily nudge with max_visits 3 sends three nudges a day apart on the clock, each its own message (a late status report for the first is taken); the fourth visit ends the run, completed, with `loop bound reached`."""
    await world.publish("daily-nudge")
    address = await world.person("loop-jo")
    await world.ingest(event("quiz.started", "loop-jo"))
    run = await world.waiting_at((await world.run_of("daily-nudge", "loop-jo")).run_id, "day")
    for visit in (2, 3):
        await world.advance(DAY)
        run = await world.until(run.run_id, lambda r, v=visit: World.step(r, "nudge").attempts == v and r.waiting_steps == ["day"],
                                f"nudge number {visit}")
    assert [m["Subject"] for m in world.mail_to(address)] == ["Finish your quiz"] * 3
    keys = [f"{run.run_id}:nudge", f"{run.run_id}:nudge#2", f"{run.run_id}:nudge#3"]  # one message per time round the loop
    deliveries = [(await world.c.connectors.GetDeliveryStatus(C.GetDeliveryStatusRequest(idempotency_key=k), metadata=MD)).delivery
                  for k in keys]
    assert len({d.delivery_id for d in deliveries}) == 3 and world.step(run, "nudge").delivery_id == deliveries[2].delivery_id
    await world.c.orchestrator.ReportDeliveryStatus(O.ReportDeliveryStatusRequest(  # the first time's status, reported late
        idempotency_key=keys[0], delivery_id=deliveries[0].delivery_id, status=M.DELIVERY_STATUS_DELIVERED), metadata=MD)
    await world.advance(DAY)
    done = await world.ended(run.run_id)
    assert done.state == run_pb2.RUN_STATE_COMPLETED
    assert world.step(done, "nudge").outcome == "loop bound reached: step 'nudge' visited 3 times"
    assert len(world.mail_to(address)) == 3
    stats = await world.stats("daily-nudge")
    nudge = next(s for s in stats.steps if s.step_id == "nudge")
    assert (nudge.entered, stats.completed, stats.failed) == (4, 1, 0)


async def test_a_run_past_its_journeys_action_limit_fails_and_is_dead_lettered(world: World) -> None:
    """A run that took two actions, moved by RetryRun to a version allowing two (settings.max_actions), fails at its next action without sending it, and is dead-lettered again."""
    await world.publish("action-limit")
    address = await world.person("limit-kim")
    await world.ingest(event("lead.engaged", "limit-kim"))
    failed = await world.ended((await world.run_of("action-limit", "limit-kim")).run_id)
    assert (failed.state, failed.current_step) == (run_pb2.RUN_STATE_FAILED, "partner")
    assert [m["Subject"] for m in world.mail_to(address)] == ["Thanks for engaging", "One more thing"]
    spec = world.spec("action-limit")
    del spec.steps[:2]  # the version the run moves to has only the failed step
    spec.settings.max_actions = 2
    assert (await world.publish("action-limit", spec)).version == 2
    upsert = P.UpsertProfileRequest(subject_id="limit-kim")
    upsert.traits.update({"partner_email": "partner@example.com"})
    await world.c.profiles.UpsertProfile(upsert, metadata=MD)
    await world.c.orchestrator.RetryRun(O.RetryRunRequest(run_id=failed.run_id, reason="partner address added",
                                                          journey_version_policy=O.JOURNEY_VERSION_POLICY_LATEST), metadata=MD)
    again = await world.until(failed.run_id, lambda r: r.state == run_pb2.RUN_STATE_FAILED and World.step(r, "partner").attempts == 2,
                              "the retried run to fail at its limit")
    assert again.journey_version == 2 and "reached its limit of 2 actions" in world.step(again, "partner").error
    assert world.mail_to("partner@example.com") == []
    dead = await world.c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(journey="action-limit"), metadata=MD)
    assert [r.run_id for r in dead.runs] == [failed.run_id]
    stats = await world.stats("action-limit")
    assert (stats.entered, stats.failed, stats.dead_lettered) == (1, 2, 1)
