"""Delays on real services and the injected clock: until a local time in
the subject's own time zone, until a date a profile trait holds less an
offset (and the `missing` edge without one), until a time."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from overture.orchestrator.v1 import run_pb2
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
SECOND = dt.timedelta(seconds=1)


def _next(now: dt.datetime, weekday: int, hour: int) -> dt.datetime:
    """The first UTC *weekday* (0 = Monday) at *hour*:00 after *now*."""
    day = now.date() + dt.timedelta(days=(weekday - now.weekday()) % 7)
    candidate = dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)
    return candidate if candidate > now else candidate + dt.timedelta(days=7)


def _wake(run: run_pb2.Run, step_id: str) -> dt.datetime:
    return World.step(run, step_id).wake_time.ToDatetime(tzinfo=dt.UTC)


async def test_a_delay_until_a_local_time_waits_for_that_time_in_each_subjects_zone(world: World) -> None:
    """On a Saturday, a delay until 09:00 on weekdays waits for Monday 09:00 in New York for one subject and in Tokyo for another, and sends each at its own time."""
    await world.publish("local-morning")
    await world.advance_to(saturday := _next(world.clock.now(), 5, 12))
    ny = await world.person("local-ny", timezone="America/New_York")
    tokyo = await world.person("local-tokyo", timezone="Asia/Tokyo")
    await world.ingest(event("trial.started", "local-ny"), event("trial.started", "local-tokyo"))
    ny_run = await world.waiting_at((await world.run_of("local-morning", "local-ny")).run_id, "morning")
    tokyo_run = await world.waiting_at((await world.run_of("local-morning", "local-tokyo")).run_id, "morning")
    monday = saturday.date() + dt.timedelta(days=2)
    ny_nine = dt.datetime.combine(monday, dt.time(9), tzinfo=ZoneInfo("America/New_York")).astimezone(dt.UTC)
    tokyo_nine = dt.datetime.combine(monday, dt.time(9), tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(dt.UTC)
    assert (_wake(ny_run, "morning"), _wake(tokyo_run, "morning")) == (ny_nine, tokyo_nine)
    assert tokyo_nine < ny_nine
    await world.advance_to(ny_nine - SECOND)  # Tokyo's morning has come, New York's not quite
    done = await world.ended(tokyo_run.run_id)
    assert world.path(done) == [("morning", "next"), ("send-tip", "next")]
    assert [m["Subject"] for m in world.mail_to(tokyo)] == ["Good morning"]
    assert (await world.run(ny_run.run_id)).waiting_steps == ["morning"] and world.mail_to(ny) == []
    await world.advance(SECOND)
    assert (await world.ended(ny_run.run_id)).state == run_pb2.RUN_STATE_COMPLETED
    assert [m["Subject"] for m in world.mail_to(ny)] == ["Good morning"]


async def test_a_delay_until_a_trait_date_less_an_offset_waits_for_it_and_takes_missing_without_one(world: World) -> None:
    """A reminder seven days before `renewal_date` (a date, read as midnight in the subject's zone) waits until then; a subject without the trait leaves by `missing`."""
    await world.publish("renewal-reminder")
    renews = world.clock.now().date() + dt.timedelta(days=10)
    dated = await world.person("renew-dated", timezone="Europe/Berlin", renewal_date=renews.isoformat())
    undated = await world.person("renew-undated", timezone="Europe/Berlin")
    await world.ingest(event("subscription.started", "renew-dated"), event("subscription.started", "renew-undated"))
    asked = await world.ended((await world.run_of("renewal-reminder", "renew-undated")).run_id)
    assert world.path(asked) == [("week-before", "missing"), ("ask-date", "next")]
    assert world.step(asked, "week-before").state == run_pb2.STEP_RUN_STATE_SKIPPED
    assert [m["Subject"] for m in world.mail_to(undated)] == ["When do you renew?"]
    waiting = await world.waiting_at((await world.run_of("renewal-reminder", "renew-dated")).run_id, "week-before")
    expected = dt.datetime.combine(renews, dt.time(), tzinfo=ZoneInfo("Europe/Berlin")).astimezone(dt.UTC) - dt.timedelta(days=7)
    assert _wake(waiting, "week-before") == expected
    await world.advance_to(expected)
    reminded = await world.ended(waiting.run_id)
    assert world.path(reminded) == [("week-before", "next"), ("remind", "next")]
    (mail,) = world.mail_to(dated)
    assert mail["Subject"] == "Your renewal is in a week" and renews.isoformat() in mail.get_content()


async def test_a_delay_until_a_time_waits_exactly_until_it_and_one_already_past_does_not_wait(world: World) -> None:
    """A delay until a time wakes at that time and then sends; published again with a time already past, a new run goes straight on."""
    spec = world.spec("launch-day")
    launch = world.clock.now().replace(microsecond=0) + dt.timedelta(hours=3)
    spec.steps[0].delay.until.FromDatetime(launch)
    await world.publish("launch-day", spec)
    early = await world.person("launch-early")
    await world.ingest(event("waitlist.joined", "launch-early"))
    waiting = await world.waiting_at((await world.run_of("launch-day", "launch-early")).run_id, "until-launch")
    assert _wake(waiting, "until-launch") == launch
    await world.advance_to(launch)
    assert world.path(await world.ended(waiting.run_id)) == [("until-launch", "next"), ("announce", "next")]
    assert [m["Subject"] for m in world.mail_to(early)] == ["We are live"]
    spec.steps[0].delay.until.FromDatetime(launch - dt.timedelta(hours=1))  # a time now past
    await world.publish("launch-day", spec)
    late = await world.person("launch-late")
    await world.ingest(event("waitlist.joined", "launch-late"))
    run = await world.ended((await world.run_of("launch-day", "launch-late")).run_id)
    assert run.journey_version == 2 and world.step(run, "until-launch").outcome == "the time had already come"
    assert [m["Subject"] for m in world.mail_to(late)] == ["We are live"]
