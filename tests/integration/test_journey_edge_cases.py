"""The edge cases of the product notes, on real services and the injected
clock: a failure mid-chain retried from the failed step, journeys looping
through their own deliveries paused at the causation depth limit, a delayed
step of a paused journey cancelled with its reason and counted, and profile
data changing mid-run while the run keeps its trigger's snapshot."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture.rules.v1 import profile_service_pb2 as P
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, World, event
from tests.thinpath import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
HOUR = dt.timedelta(hours=1)


async def test_a_failure_mid_chain_is_retried_from_the_failed_step_without_repeating_the_steps_before_it(world: World) -> None:
    """The survey step fails for want of an address after the confirmation went out; once the address is set, RetryRun sends the survey and not the confirmation again."""
    await world.publish("shipped-survey")
    address = await world.person("chain-flo", consent=True)
    await world.ingest(event("order.shipped", "chain-flo"))
    failed = await world.ended((await world.run_of("shipped-survey", "chain-flo")).run_id)
    assert (failed.state, failed.current_step) == (run_pb2.RUN_STATE_FAILED, "survey")
    assert "survey_email" in world.step(failed, "survey").error
    dead = await world.c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(journey="shipped-survey"), metadata=MD)
    assert [r.run_id for r in dead.runs] == [failed.run_id]
    upsert = P.UpsertProfileRequest(subject_id="chain-flo")
    upsert.traits.update({"survey_email": "flo.surveys@example.com"})
    await world.c.profiles.UpsertProfile(upsert, metadata=MD)
    await world.c.orchestrator.RetryRun(O.RetryRunRequest(run_id=failed.run_id, reason="survey address added"), metadata=MD)
    done = await world.ended(failed.run_id)
    assert done.state == run_pb2.RUN_STATE_COMPLETED
    assert [(s.step_id, s.attempts, s.outcome) for s in done.steps] == [("confirm", 1, "sent"), ("survey", 2, "sent")]
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your order is on its way"]
    assert [m["Subject"] for m in world.mail_to("flo.surveys@example.com")] == ["How did we do?"]
    (retried,) = await world.audit(A.AUDIT_ACTION_RUN_RETRIED, f"run/{failed.run_id}")
    assert retried.reason == "survey address added"
    stats = await world.stats("shipped-survey")
    assert (stats.entered, stats.completed, stats.failed, stats.dead_lettered, stats.active) == (1, 1, 1, 0, 0)


async def test_a_journey_looping_through_its_own_deliveries_is_paused_at_the_causation_depth_limit(world: World) -> None:
    """Each delivered echo triggers the journey again, one causation hop deeper; at the journey's limit of 3 it is paused, audited, and starts no fourth run."""
    await world.publish("delivery-echo")
    address = await world.person("echo-gus")
    run_id = await world.trigger("delivery-echo", "echo-gus")
    for depth in range(3):
        run = await world.ended(run_id)
        assert run.state == run_pb2.RUN_STATE_COMPLETED and run.steps[0].outcome == "sent"
        await world.c.orchestrator.ReportDeliveryStatus(O.ReportDeliveryStatusRequest(
            idempotency_key=f"{run_id}:echo", delivery_id=run.steps[0].delivery_id, status=M.DELIVERY_STATUS_DELIVERED), metadata=MD)
        if depth < 2:

            async def next_run(after: str = run_id) -> str | None:
                runs = [r.run_id for r in await world.runs("delivery-echo", "echo-gus") if r.run_id != after and r.run_id > after]
                return runs[0] if runs else None

            run_id = await eventually(next_run, what=f"the echo of depth {depth + 1}")

    async def paused() -> J.Journey | None:
        journey = (await world.c.orchestrator.GetJourney(O.GetJourneyRequest(name="delivery-echo"), metadata=MD)).journey
        return journey if journey.state == J.JOURNEY_STATE_PAUSED else None

    await eventually(paused, what="the journey to pause")
    await world.consumed()
    runs = await world.runs("delivery-echo", "echo-gus")
    assert len(runs) == 3 and len(world.mail_to(address)) == 3
    (entry,) = await world.audit(A.AUDIT_ACTION_JOURNEY_PAUSED, "journey/delivery-echo")
    assert entry.actor == "system:orchestrator" and "causation depth 3" in entry.reason


async def test_a_delayed_step_of_a_paused_journey_is_cancelled_with_the_reason_and_counted(world: World) -> None:
    """Pausing a journey cancels a run waiting on its delay with the pause's reason; the timer never sends, resuming does not revive it, and the counters say cancelled."""
    await world.publish("demo-reminder")
    address = await world.person("paused-hal")
    await world.ingest(event("demo.booked", "paused-hal"))
    run = await world.waiting_at((await world.run_of("demo-reminder", "paused-hal")).run_id, "next-day")
    await world.c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="demo-reminder", reason="copy review"), metadata=MD)
    cancelled = await world.run(run.run_id)
    assert (cancelled.state, cancelled.cancel_reason, cancelled.waiting_steps) == (run_pb2.RUN_STATE_CANCELLED, "journey paused: copy review", [])
    await world.advance(23 * HOUR)
    timer = await world.hour_timer()  # due with the cancelled delay
    await world.advance(HOUR)
    await world.ended(timer)
    await world.c.orchestrator.ResumeJourney(O.ResumeJourneyRequest(name="demo-reminder", reason="copy approved"), metadata=MD)
    assert (await world.run(run.run_id)).state == run_pb2.RUN_STATE_CANCELLED and world.mail_to(address) == []
    stats = await world.stats("demo-reminder")
    assert (stats.entered, stats.cancelled, stats.active) == (1, 1, 0)
    assert next(s for s in stats.steps if s.step_id == "next-day").waiting == 0


async def test_profile_data_changing_mid_run_leaves_the_runs_trigger_snapshot_as_it_was(world: World) -> None:
    """A new plan event and a renamed profile during the run's delay: its email still names the plan of the event that started it, and greets the subject by the name the profile has when it sends."""
    await world.publish("plan-snapshot")
    address = await world.person("snap-ida", first_name="Ida")
    await world.ingest(event("plan.chosen", "snap-ida", "chose-pro", plan="pro"))
    run = await world.waiting_at((await world.run_of("plan-snapshot", "snap-ida")).run_id, "hour")
    await world.ingest(event("identify", "snap-ida", traits={"first_name": "Idabelle", "plan": "basic"}),
                       event("plan.chosen", "snap-ida", "chose-basic", plan="basic"))
    await world.consumed()
    await world.advance(HOUR)
    done = await world.ended(run.run_id)
    assert done.trigger_event_id == "chose-pro" and done.state == run_pb2.RUN_STATE_COMPLETED
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your pro plan, Idabelle"]
    assert [r.trigger_event_id for r in await world.runs("plan-snapshot", "snap-ida")] == ["chose-pro"]  # the other was not let in
