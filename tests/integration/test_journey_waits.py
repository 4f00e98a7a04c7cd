"""Waits on real services and the injected clock: wait-for-event ends by the
event (through its filter, the event then readable by later templates) or
by its timeout, and counts no event from before it started; wait-until
ends when a profile event through ingest makes its condition hold, or by
its timeout."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.orchestrator.v1 import run_pb2
from overture_runtime.protojson import struct_to_dict
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world


async def test_a_wait_for_event_ends_by_a_matching_event_whose_data_a_later_template_reads(world: World) -> None:
    """An order under the filter's minimum leaves the run waiting; the next order ends the wait by the `event` edge, and the thank-you email names that order."""
    await world.publish("order-thanks")
    address = await world.person("wait-buyer")
    await world.ingest(event("cart.created", "wait-buyer"))
    run = await world.waiting_at((await world.run_of("order-thanks", "wait-buyer")).run_id, "order")
    await world.ingest(event("order.placed", "wait-buyer", "order-small", order_id="A-1", total=5),
                       event("order.placed", "wait-buyer", "order-big", order_id="B-2", total=25))
    done = await world.ended(run.run_id)
    assert world.path(done) == [("order", "event"), ("thanks", "next")]
    assert struct_to_dict(world.step(done, "order").output) == {"event_id": "order-big", "event_type": "order.placed"}
    assert struct_to_dict(done.context)["order"]["event"]["attributes"] == {"order_id": "B-2", "total": 25}
    (mail,) = world.mail_to(address)
    assert mail["Subject"] == "Thanks for order B-2" and "your order of 25" in mail.get_content()


async def test_one_event_ends_a_wait_and_starts_a_run_of_another_journey(world: World) -> None:
    """The consumer resumes the waits an event ends while it starts the runs the event triggers: an order both
    ends a waiting run (the thank-you email) and starts a run of a journey it triggers (its own email)."""
    await world.publish("order-thanks")
    routing = world.spec("order-routing")
    routing.trigger.event.event_type = "order.placed"
    routing.trigger.event.filter = 'attributes.order_id == "D-4"'  # this test's order only: the world is shared
    await world.publish("order-placed-routing", routing)
    address = await world.person("wait-and-start")
    await world.ingest(event("cart.created", "wait-and-start"))
    waiting = await world.waiting_at((await world.run_of("order-thanks", "wait-and-start")).run_id, "order")
    await world.ingest(event("order.placed", "wait-and-start", "order-both", order_id="D-4", total=40))
    done = await world.ended(waiting.run_id)
    assert world.path(done) == [("order", "event"), ("thanks", "next")]
    started = await world.ended((await world.run_of("order-placed-routing", "wait-and-start")).run_id)
    assert world.path(started)[-1] == ("send-thanks", "next")
    mails = await world.mail_settles([address], 2)
    assert sorted(m["Subject"] for m in mails) == ["Thanks", "Thanks for order D-4"]


async def test_a_wait_for_event_takes_its_timeout_edge_when_the_clock_passes_it(world: World) -> None:
    """With no order in three days, the wait wakes at its timeout on the clock and leaves by `timeout` to the nudge."""
    await world.publish("order-thanks")
    address = await world.person("wait-idle")
    await world.ingest(event("cart.created", "wait-idle"))
    run = await world.waiting_at((await world.run_of("order-thanks", "wait-idle")).run_id, "order")
    started = world.step(run, "order").start_time.ToDatetime(tzinfo=dt.UTC)
    assert world.step(run, "order").wake_time.ToDatetime(tzinfo=dt.UTC) == started + dt.timedelta(days=3)
    await world.advance(dt.timedelta(days=3))
    done = await world.ended(run.run_id)
    assert world.path(done) == [("order", "timeout"), ("nudge", "next")]
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your cart misses you"]


async def test_an_event_from_before_the_wait_started_does_not_end_it(world: World) -> None:
    """An order placed just before the cart that starts the run does not count for the run's wait: it times out."""
    await world.publish("order-thanks")
    address = await world.person("wait-early")
    await world.ingest(event("order.placed", "wait-early", "order-before", order_id="C-3", total=40), event("cart.created", "wait-early"))
    run = await world.waiting_at((await world.run_of("order-thanks", "wait-early")).run_id, "order")
    await world.advance(dt.timedelta(days=3))
    done = await world.ended(run.run_id)
    assert world.path(done) == [("order", "timeout"), ("nudge", "next")]
    assert not done.HasField("context")
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your cart misses you"]


async def test_a_wait_until_resumes_when_a_profile_event_through_ingest_makes_its_condition_hold(world: World) -> None:
    """A profile change that leaves the condition false keeps the run waiting (re-checked); an identify making the subject pro, or entering the VIP segment, ends the wait by `true`."""
    await world.publish("upgrade-wait")
    pro = await world.person("until-pro", plan="basic")
    vip = await world.person("until-vip", plan="basic")
    await world.ingest(event("trial.ending", "until-pro"), event("trial.ending", "until-vip"))
    pro_run = await world.waiting_at((await world.run_of("upgrade-wait", "until-pro")).run_id, "until-upgraded")
    vip_run = await world.waiting_at((await world.run_of("upgrade-wait", "until-vip")).run_id, "until-upgraded")
    await world.ingest(event("identify", "until-pro", traits={"company": "Acme"}))  # a change, but not the one awaited
    rechecked = await world.until(pro_run.run_id, lambda r: World.step(r, "until-upgraded").attempts >= 2
                                  and r.state == run_pb2.RUN_STATE_WAITING, "the wait to re-check and go on waiting")
    assert rechecked.waiting_steps == ["until-upgraded"]
    deadline = world.step(pro_run, "until-upgraded").start_time.ToDatetime(tzinfo=dt.UTC) + dt.timedelta(days=2)
    assert world.step(rechecked, "until-upgraded").wake_time.ToDatetime(tzinfo=dt.UTC) <= deadline
    await world.ingest(event("identify", "until-pro", traits={"plan": "pro"}), event("segment.entered", "until-vip", segment="vip"))
    for run_id in (pro_run.run_id, vip_run.run_id):
        assert world.path(await world.ended(run_id)) == [("until-upgraded", "true"), ("send-welcome", "next")]
    assert [m["Subject"] for m in world.mail_to(pro, vip)] == ["Welcome aboard", "Welcome aboard"]


async def test_a_wait_until_times_out_when_its_condition_never_holds(world: World) -> None:
    """A subject who never upgrades is re-checked on the clock and leaves by `timeout` once the two days have passed."""
    await world.publish("upgrade-wait")
    address = await world.person("until-never", plan="basic")
    await world.ingest(event("trial.ending", "until-never"))
    run = await world.waiting_at((await world.run_of("upgrade-wait", "until-never")).run_id, "until-upgraded")
    await world.advance(dt.timedelta(hours=1, seconds=1))  # the hourly re-check: still waiting
    await world.until(run.run_id, lambda r: World.step(r, "until-upgraded").attempts >= 2 and r.state == run_pb2.RUN_STATE_WAITING,
                      "the hourly re-check")
    await world.advance(dt.timedelta(days=2))
    done = await world.ended(run.run_id)
    assert world.path(done) == [("until-upgraded", "timeout"), ("send-late", "next")]
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your trial has ended"]
