"""Goals on real services and the injected clock: the journey's goal event
ends a run as converted from whatever step it waits at, and an exit step
with a goal converts the run that takes it."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.orchestrator.v1 import run_pb2
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
DAY = dt.timedelta(days=1)


async def test_the_goal_event_ends_a_waiting_run_as_converted_from_any_step(world: World) -> None:
    """A paid checkout converts one run waiting at its first delay and another at its second (an unpaid one, outside the goal's filter, does not); neither sends again."""
    await world.publish("goal-checkout")
    early, late = await world.person("goal-early"), await world.person("goal-late")
    await world.ingest(event("cart.abandoned", "goal-late"))
    late_run = await world.waiting_at((await world.run_of("goal-checkout", "goal-late")).run_id, "first-wait")
    await world.advance(DAY)
    await world.waiting_at(late_run.run_id, "second-wait")
    assert [m["Subject"] for m in world.mail_to(late)] == ["You left something behind"]
    await world.ingest(event("cart.abandoned", "goal-early"))
    early_run = await world.waiting_at((await world.run_of("goal-checkout", "goal-early")).run_id, "first-wait")
    await world.ingest(event("checkout.completed", "goal-early", total=0), event("checkout.completed", "goal-late", total=0))
    await world.consumed()  # the unpaid checkouts converted nothing
    assert [(await world.run(r.run_id)).state for r in (early_run, late_run)] == [run_pb2.RUN_STATE_WAITING] * 2
    await world.ingest(event("checkout.completed", "goal-early", "paid-early", total=30),
                       event("checkout.completed", "goal-late", "paid-late", total=45))
    for run, step, paid in ((early_run, "first-wait", "paid-early"), (late_run, "second-wait", "paid-late")):
        done = await world.ended(run.run_id)
        assert (done.state, done.converted, done.goal, done.waiting_steps) == (run_pb2.RUN_STATE_COMPLETED, True, "checkout.completed", [])
        assert (world.step(done, step).edge, world.step(done, step).outcome) == ("goal", f"converted: goal event checkout.completed ({paid})")
    await world.advance(3 * DAY)
    timer = await world.hour_timer()
    await world.advance(dt.timedelta(hours=1))
    await world.ended(timer)
    assert [m["Subject"] for m in world.mail_to(early, late)] == ["You left something behind"]
    stats = await world.stats("goal-checkout")
    assert (stats.entered, stats.completed, stats.converted, stats.active) == (2, 2, 2, 0)
    assert all(s.waiting == 0 for s in stats.steps)


async def test_an_exit_with_a_goal_converts_the_run_and_a_plain_exit_does_not(world: World) -> None:
    """The subject who accepted the upsell exits with the goal, converted; the one who declined exits plainly; the statistics count one conversion."""
    await world.publish("upsell-exit")
    await world.ingest(event("upsell.answered", "upsell-yes", accepted=True), event("upsell.answered", "upsell-no", accepted=False))
    yes = await world.ended((await world.run_of("upsell-exit", "upsell-yes")).run_id)
    no = await world.ended((await world.run_of("upsell-exit", "upsell-no")).run_id)
    assert (yes.state, yes.converted, yes.goal) == (run_pb2.RUN_STATE_COMPLETED, True, "upsell-accepted")
    assert world.path(yes) == [("accepted", "true"), ("won", "")] and world.step(yes, "won").outcome == "exited: goal upsell-accepted"
    assert (no.state, no.converted, no.goal) == (run_pb2.RUN_STATE_COMPLETED, False, "")
    stats = await world.stats("upsell-exit")
    assert (stats.entered, stats.completed, stats.converted) == (2, 2, 1)
