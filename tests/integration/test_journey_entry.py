"""Entry on real services and the injected clock: the trigger's two
conditions, once-ever and once-per-window policies with their skipped
entries counted, simultaneous triggers starting one run, the segment-entered
and inactivity triggers, and a trigger for an erased subject skipped and
counted without an error."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import profile_service_pb2 as P
from tests.conftest import TENANT
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, World, event, journey_world
from tests.integration.rules_support import reason_of
from tests.thinpath import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
DAY = dt.timedelta(days=1)


async def test_a_trigger_needs_both_its_event_filter_and_its_profile_condition(world: World) -> None:
    """Of three subjects whose sale event arrives, only the VIP in the EU enters: the VIP in the US fails the filter, the EU non-VIP the profile condition."""
    await world.publish("vip-sale")
    addresses = {s: await world.person(s) for s in ("sale-vip-eu", "sale-vip-us", "sale-plain-eu")}
    await world.ingest(event("segment.entered", "sale-vip-eu", segment="vip"), event("segment.entered", "sale-vip-us", segment="vip"))
    await world.ingest(event("sale.started", "sale-vip-eu", region="eu"), event("sale.started", "sale-vip-us", region="us"),
                       event("sale.started", "sale-plain-eu", region="eu"))
    entered = await world.ended((await world.run_of("vip-sale", "sale-vip-eu")).run_id)
    await world.consumed()
    assert [r.subject_id for r in await world.runs("vip-sale")] == ["sale-vip-eu"]
    assert entered.steps[0].outcome == "sent" and [m["To"] for m in world.mail_to(*addresses.values())] == [addresses["sale-vip-eu"]]
    stats = await world.stats("vip-sale")
    assert (stats.entered, stats.skipped_entries) == (1, 0)  # a trigger that does not match is not an entry


async def test_a_once_ever_policy_keeps_a_subject_out_after_its_first_run_across_versions_and_counts_it(world: World) -> None:
    """A second verification, and a third after a new version is published, start no run; each is counted as a skipped entry."""
    await world.publish("welcome-once")
    address = await world.person("once-ann")
    await world.ingest(event("account.verified", "once-ann", "verified-1"))
    await world.ended((await world.run_of("welcome-once", "once-ann")).run_id)
    await world.ingest(event("account.verified", "once-ann", "verified-2"))
    await world.consumed()
    spec = world.spec("welcome-once")
    spec.templates["welcome"].subject = "Welcome aboard"
    assert (await world.publish("welcome-once", spec)).version == 2
    await world.ingest(event("account.verified", "once-ann", "verified-3"))
    await world.consumed()
    assert [r.trigger_event_id for r in await world.runs("welcome-once", "once-ann")] == ["verified-1"]
    assert [m["Subject"] for m in world.mail_to(address)] == ["Welcome"]
    stats = await world.stats("welcome-once")
    assert (stats.entered, stats.completed, stats.skipped_entries) == (1, 1, 2)


async def test_a_once_per_window_policy_lets_a_subject_in_again_only_after_the_window(world: World) -> None:
    """A second read the next day is a skipped entry; a read eight days after the first starts a new run."""
    await world.publish("weekly-digest")
    address = await world.person("digest-bo")
    await world.ingest(event("article.read", "digest-bo", "read-1"))
    await world.ended((await world.run_of("weekly-digest", "digest-bo")).run_id)
    await world.advance(DAY)
    await world.ingest(event("article.read", "digest-bo", "read-2"))
    await world.consumed()
    assert len(await world.runs("weekly-digest", "digest-bo")) == 1
    await world.advance(7 * DAY)
    await world.ingest(event("article.read", "digest-bo", "read-3"))

    async def second() -> list[run_pb2.Run] | None:
        runs = await world.runs("weekly-digest", "digest-bo")
        return runs if len(runs) == 2 and all(r.state == run_pb2.RUN_STATE_COMPLETED for r in runs) else None

    runs = await eventually(second, what="the run after the window")
    assert sorted(r.trigger_event_id for r in runs) == ["read-1", "read-3"]
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your weekly digest"] * 2
    stats = await world.stats("weekly-digest")
    assert (stats.entered, stats.skipped_entries) == (2, 1)


async def test_simultaneous_triggers_for_one_subject_start_one_run(world: World) -> None:
    """Three promotion clicks of one subject in one batch of the stream start one run and send one email."""
    await world.publish("promo-click")
    address = await world.person("promo-cy")
    clicks = [(TENANT, event("promo.clicked", "promo-cy", f"click-{i}")) for i in range(3)]
    started = await world.c.apps["orchestrator"].starter.on_events(clicks)
    assert started == 1
    (run,) = await world.runs("promo-click", "promo-cy")
    await world.ended(run.run_id)
    assert [m["Subject"] for m in world.mail_to(address)] == ["Thanks for your interest"]
    assert (await world.stats("promo-click")).entered == 1


async def test_a_schedule_enters_its_segments_subjects_meeting_its_condition_in_pages_at_each_firing_in_its_zone(world: World) -> None:
    """Every Monday at 09:00 Paris time (not a second before), the 500 active members of a 520-member segment enter, read in pages, under one trigger event per firing; outsiders and inactive members never do."""
    await world.publish("monday-digest")
    scheduler = world.c.apps["orchestrator"].scheduler
    await scheduler.reconcile()  # as its loop does every few seconds
    members = [f"digest-{i:03d}" for i in range(520)]
    active = {s for i, s in enumerate(members) if i % 26}  # 500, on both pages of members
    profiles = [event("segment.entered", s, segment="digest-readers") for s in members]
    profiles += [event("identify", s, traits={"active": s in active}) for s in members]
    profiles += [event("identify", f"outsider-{i}", traits={"active": True}) for i in range(5)]
    for start in range(0, len(profiles), 500):
        await world.ingest(*profiles[start:start + 500])
    paris = ZoneInfo("Europe/Paris")
    local = world.clock.now().astimezone(paris)
    monday = local.date() + dt.timedelta(days=(7 - local.weekday()) % 7)
    first = dt.datetime.combine(monday, dt.time(9), tzinfo=paris).astimezone(dt.UTC)
    if first <= world.clock.now():
        first = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(9), tzinfo=paris).astimezone(dt.UTC)
    await world.advance_to(first - dt.timedelta(seconds=1))
    assert await scheduler.fire_once(world.c.apps["orchestrator"].starter.start_new) == 0
    second = dt.datetime.combine(first.astimezone(paris).date() + dt.timedelta(days=7), dt.time(9), tzinfo=paris).astimezone(dt.UTC)
    for firing, count in ((first, 500), (second, 1000)):
        await world.advance_to(firing)

        async def entered(count: int = count) -> list[run_pb2.Run] | None:
            runs = await world.runs("monday-digest")
            return runs if len(runs) >= count and all(r.state == run_pb2.RUN_STATE_COMPLETED for r in runs) else None

        runs = await eventually(entered, within=60, what=f"the {count} runs of the firings so far")
        assert len(runs) == count
        this = [r for r in runs if r.trigger_event_id == f"schedule:monday-digest:{int(firing.timestamp())}"]
        assert sorted(r.subject_id for r in this) == sorted(active)
    assert (await world.stats("monday-digest")).entered == 1000


async def test_a_segment_entered_trigger_starts_a_run_when_the_subject_enters_that_segment(world: World) -> None:
    """Entering the VIP segment through ingest starts the welcome; entering another segment starts nothing."""
    await world.publish("vip-entered")
    vip, other = await world.person("seg-vip"), await world.person("seg-other")
    await world.ingest(event("segment.entered", "seg-vip", segment="vip"), event("segment.entered", "seg-other", segment="newsletter"))
    run = await world.ended((await world.run_of("vip-entered", "seg-vip")).run_id)
    await world.consumed()
    assert run.state == run_pb2.RUN_STATE_COMPLETED and [r.subject_id for r in await world.runs("vip-entered")] == ["seg-vip"]
    assert [m["Subject"] for m in world.mail_to(vip)] == ["Welcome to VIP"] and world.mail_to(other) == []


async def test_an_inactivity_trigger_is_rearmed_by_a_newer_event_and_fires_once_after_the_period(world: World) -> None:
    """A session twenty days after the first moves the 30-day timer: nothing starts on day 31, the win-back starts on day 50, and never again without a new session."""
    await world.publish("win-back")
    address = await world.person("idle-di")
    inactivity = world.c.apps["orchestrator"].inactivity
    start = world.c.apps["orchestrator"].starter.start_new
    first = world.clock.now()
    await world.ingest(event("session.started", "idle-di"))
    await world.consumed()
    await world.advance(20 * DAY)
    await world.ingest(event("session.started", "idle-di"))
    await world.consumed()
    await world.advance_to(first + 31 * DAY)
    assert await inactivity.fire_once(start) == 0 and await world.runs("win-back", "idle-di") == []
    await world.advance_to(first + 50 * DAY)
    run = await world.ended((await world.run_of("win-back", "idle-di")).run_id)
    assert run.state == run_pb2.RUN_STATE_COMPLETED and run.trigger_event_id.startswith("inactive:win-back:idle-di:")
    assert [m["Subject"] for m in world.mail_to(address)] == ["We miss you"]
    await world.advance(60 * DAY)
    assert await inactivity.fire_once(start) == 0
    assert len(await world.runs("win-back", "idle-di")) == 1 and len(world.mail_to(address)) == 1


async def test_a_trigger_for_an_erased_subject_is_skipped_and_counted_not_an_error(world: World) -> None:
    """After EraseProfile, a sign-up sends nothing: the plain journey's run ends skipped (not failed, not dead-lettered), the conditional one starts none; both count a skipped entry."""
    await world.publish("newsletter")
    await world.publish("newsletter-known")
    address = await world.person("erased-ed", customer=True)
    await world.c.profiles.EraseProfile(P.EraseProfileRequest(subject_id="erased-ed", reason="right to be forgotten"), metadata=MD)
    await world.ingest(event("newsletter.joined", "erased-ed"))
    run = await world.ended((await world.run_of("newsletter", "erased-ed")).run_id)
    await world.consumed()
    assert run.state == run_pb2.RUN_STATE_COMPLETED and run.steps[0].outcome == "skipped: the subject's profile was erased"
    assert await world.runs("newsletter-known", "erased-ed") == [] and world.mail_to(address) == []
    dead = await world.c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(journey="newsletter"), metadata=MD)
    assert list(dead.runs) == []
    plain, conditional = await world.stats("newsletter"), await world.stats("newsletter-known")
    assert (plain.skipped_entries, plain.failed, plain.active) == (1, 0, 0)
    assert (conditional.entered, conditional.skipped_entries) == (0, 1)


async def test_trigger_keeps_to_the_entry_policy_and_concurrency_and_simultaneous_calls_start_one_run(world: World) -> None:
    """Manual Trigger skips the trigger's conditions but not the journey's entry rules: ten simultaneous calls (different
    request ids) for a journey without concurrent runs start one run, the others are FAILED_PRECONDITION
    ALREADY_IN_JOURNEY, and a repeat of the first request id returns its run; once the run ended, a new call starts
    another. A once-ever journey refuses a second Trigger with ENTRY_POLICY. Every refusal is a skipped entry."""
    await world.publish("hour-timer")
    await world.publish("welcome-once")
    address = await world.person("trig-dee")

    async def counts(journey: str) -> tuple[int, int]:
        # The module's journeys are shared with its other tests: count this test's share.
        stats = await world.stats(journey)
        return stats.entered, stats.skipped_entries

    timer_before, once_before = await counts("hour-timer"), await counts("welcome-once")
    outcomes = await asyncio.gather(*(world.trigger("hour-timer", "trig-dee", request_id=f"tap-{i}") for i in range(10)),
                                    return_exceptions=True)
    started = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(started) == 1, outcomes
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.FAILED_PRECONDITION
               and reason_of(e) == "ALREADY_IN_JOURNEY" for e in refused), refused
    first = outcomes.index(started[0])
    assert await world.trigger("hour-timer", "trig-dee", request_id=f"tap-{first}") == started[0]
    await world.advance(dt.timedelta(hours=1))
    await world.ended(started[0])
    again = await world.trigger("hour-timer", "trig-dee", request_id="tap-later")
    assert again != started[0]
    entered, skipped = await counts("hour-timer")
    assert (entered - timer_before[0], skipped - timer_before[1]) == (2, 9)

    once = await world.trigger("welcome-once", "trig-dee", request_id="once-1")
    await world.ended(once)
    with pytest.raises(grpc.aio.AioRpcError) as refusal:
        await world.trigger("welcome-once", "trig-dee", request_id="once-2")
    assert refusal.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(refusal.value) == "ENTRY_POLICY"
    assert "once ever" in (refusal.value.details() or "")
    assert await world.trigger("welcome-once", "trig-dee", request_id="once-1") == once
    assert [m["Subject"] for m in world.mail_to(address)] == ["Welcome"]
    entered, skipped = await counts("welcome-once")
    assert (entered - once_before[0], skipped - once_before[1]) == (1, 1)


async def test_many_simultaneous_triggers_cannot_take_the_whole_connection_pool(tmp_path: Path) -> None:
    """Each Trigger holds a pooled connection for its entry lock while its checks take others: with a pool of two connections,
    twelve simultaneous Triggers for twelve subjects all start their run (lock holders are bounded below the pool), where
    unbounded holders would each keep one connection and wait for a second until the pool times out."""
    async with journey_world(tmp_path / "mail", db_pool_size=2, db_max_overflow=0) as small:
        await small.publish("hour-timer")
        started = await asyncio.wait_for(asyncio.gather(*(small.trigger("hour-timer", f"pool-{i}") for i in range(12))), timeout=120)
        assert len(set(started)) == 12
        assert (await small.stats("hour-timer")).entered == 12
