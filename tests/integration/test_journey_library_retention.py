"""The journey library (examples/journeys), part two: keeping customers and
converting trials. Each journey validates, is published to a real cluster
(PostgreSQL, Redis, an SMTP sink), and runs through its main path on the
orchestrator's injected clock; the emails that arrive, and the steps and
edges each run took, are what its header promises."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture_orchestrator.nodes import split_branch
from tests.integration.journey_library import Library, Open, event, library_cluster, load_journey, opened_journeys, path, text_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def library(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Library]:
    """One cluster for the module; each test has its own tenant."""
    async with library_cluster(tmp_path_factory.mktemp("mail")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def journey(library: Library) -> AsyncIterator[Open]:
    """Opens library journeys for the test (see :func:`opened_journeys`)."""
    async with opened_journeys(library) as open_journey:
        yield open_journey


async def test_renewal_reminder_warns_a_week_before_a_lapse_and_again_the_day_before(journey: Open) -> None:
    """Seven days before renewal_date (midnight in the subscriber's zone) a lapsing plan gets its notice and a renewing one its renewal notice, both transactional without consent; the lapsing one gets a last chance the day before."""
    t = await journey("renewal-reminder", start=dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC))
    plan = dict(plan="pro", renewal_date="2026-04-30", subscription_status="active", timezone="America/New_York")
    dan = await t.person("dan", consent=False, first_name="Dan", auto_renew=False, **plan)
    eve = await t.person("eve", consent=False, first_name="Eve", auto_renew=True, renewal_amount=490, currency="USD", **plan)
    await t.send(event("subscription.renewal_scheduled", "dan", "renewal-dan"), event("subscription.renewal_scheduled", "eve", "renewal-eve"))
    week_before = dt.datetime(2026, 4, 23, 4, tzinfo=dt.UTC)  # midnight of April 30 in New York (EDT), minus 7 days
    for subject in ("dan", "eve"):
        waiting = await t.waiting_at(subject, "week-before")
        assert waiting.steps[0].wake_time.ToDatetime(tzinfo=dt.UTC) == week_before
    t.clock.set(week_before)
    (renewal,) = await t.mail_arrives(eve, 1)
    assert renewal["Subject"] == "Your Pro plan renews on 2026-04-30" and "we will charge 490.00 USD" in text_of(renewal)
    (lapse,) = await t.mail_arrives(dan, 1)
    assert lapse["Subject"] == "Your Pro plan ends on 2026-04-30" and lapse["List-Unsubscribe"] is None  # transactional
    eve_run = await t.ended("eve")
    assert path(eve_run) == [("week-before", "next"), ("still-active", "true"), ("auto-renews", "true"), ("renewal-notice", "next")]
    waiting = await t.waiting_at("dan", "day-before")
    assert waiting.steps[-1].wake_time.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 4, 29, 4, tzinfo=dt.UTC)
    t.clock.set(dt.datetime(2026, 4, 29, 4, tzinfo=dt.UTC))
    await t.mail_arrives(dan, 2)
    dan_run = await t.ended("dan")
    assert t.mail(dan)[1]["Subject"] == "Your plan ends tomorrow" and len(t.mail(eve)) == 1
    assert path(dan_run) == [("week-before", "next"), ("still-active", "true"), ("auto-renews", "false"), ("lapse-notice", "next"),
                             ("day-before", "next"), ("still-lapsing", "true"), ("last-chance", "next")]


async def test_ab_subject_test_gives_each_arm_its_subject_line_and_the_holdout_nothing_and_counts_conversions(journey: Open) -> None:
    """Three days into a trial each arm gets its own subject line and the holdout nothing; upgrades end the runs converted, counted per arm, the holdout's included."""
    t = await journey("ab-subject-test")
    spec = load_journey("ab-subject-test")
    split = next(s for s in spec.steps if s.id == "subject-test")
    people: dict[str, str] = {}
    for i in range(1000):
        arm = split_branch(split, journey="ab-subject-test", subject_id=f"trial-{i}").name
        people.setdefault(arm, f"trial-{i}")
        if len(people) == 3:
            break
    addresses = {arm: await t.person(subject, first_name=arm.title()) for arm, subject in people.items()}
    await t.send(*(event("trial.started", subject, f"trial-started-{subject}", trial_days=14) for subject in people.values()))
    for subject in people.values():
        await t.waiting_at(subject, "day-three")
    t.clock.advance(dt.timedelta(days=3))
    for subject in people.values():
        await t.waiting_at(subject, "until-trial-ends")
    assert [m["Subject"] for m in t.mail(addresses["a"])] == ["A, see everything Pro can do for your team"]
    assert [m["Subject"] for m in t.mail(addresses["b"])] == ["11 days left in your trial"]
    assert t.mail(addresses["holdout"]) == []
    holdout = await t.run(people["holdout"])
    assert holdout.holdout and list(holdout.arms) == ["subject-test:holdout"]
    assert path(holdout) == [("day-three", "next"), ("subject-test", "holdout"), ("until-trial-ends", "")]
    await t.send(*(event("subscription.started", people[arm], f"upgrade-{arm}", plan="pro") for arm in ("a", "holdout")))
    for arm in ("a", "holdout"):
        assert (await t.ended(people[arm])).converted
    stats = (await t.c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name="ab-subject-test"), metadata=t.md)).stats
    assert {(a.arm, a.holdout, a.entered, a.converted) for a in stats.arms} == {("a", False, 1, 1), ("b", False, 1, 0), ("holdout", True, 1, 1)}
    assert (stats.entered, stats.converted) == (3, 2)
