"""The journey library (examples/journeys), part two: keeping customers and
converting trials. Each journey validates, is published to a real cluster
(PostgreSQL, Redis, an SMTP sink), and runs through its main path on the
orchestrator's injected clock; the emails that arrive, and the steps and
edges each run took, are what its header promises."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.rules.v1 import audit_event_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture.rules.v1 import rules_service_pb2 as R
from overture_orchestrator.nodes import split_branch
from overture_orchestrator.tables import inactivity
from tests.integration import journey_library
from tests.integration.journey_library import Open, event, load_journey, path, text_of
from tests.thinpath import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

library, journey = journey_library.library, journey_library.journey  # the module's cluster, and each test's journeys


async def test_win_back_writes_to_a_quiet_customer_then_gives_a_personal_code_when_they_stay_away(journey: Open) -> None:
    """Thirty days without a session start the run; a week more without one stores a personal code and a tag on the profile, and the offer quotes that code."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t = await journey("win-back", start=start)
    cleo = await t.person("cleo", first_name="Cleo")
    session = event("session.started", "cleo", "session-1")
    session.occurred_at.FromDatetime(start)
    await t.send(session)
    orchestrator = t.c.apps["orchestrator"]

    async def armed() -> bool:
        async with orchestrator.db.connect() as conn:
            return bool((await conn.execute(sa.select(sa.func.count()).select_from(inactivity)
                                            .where(inactivity.c.tenant == t.name))).scalar_one())

    await eventually(armed, what="the inactivity timer to be armed")
    t.clock.set(start + dt.timedelta(days=30) - dt.timedelta(seconds=1))
    assert await orchestrator.inactivity.fire_once(orchestrator.starter.start_new) == 0  # not a second early
    t.clock.set(start + dt.timedelta(days=30))
    (miss_you,) = await t.mail_arrives(cleo, 1)
    assert miss_you["Subject"] == "We miss you, Cleo"
    await t.waiting_at("cleo", "wait-for-return")
    t.clock.advance(dt.timedelta(days=7))
    run = await t.ended("cleo")
    profile = (await t.c.profiles.GetProfile(P.GetProfileRequest(subject_id="cleo"), metadata=t.md)).profile
    code = profile.traits["win_back_code"]
    assert code == f"COMEBACK-{run.run_id[-6:].upper()}" and "win-back-offered" in profile.tags
    offer = t.mail(cleo)[1]
    assert offer["Subject"] == "Cleo: 20% off, just for you" and f"Your personal code: {code}" in text_of(offer)
    assert path(run) == [("we-miss-you", "next"), ("wait-for-return", "timeout"), ("give-code", "next"), ("offer", "next")]
    assert not run.converted


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


async def test_vip_offer_is_sent_only_after_a_person_approves_it(journey: Open) -> None:
    """A big order from a high-value customer notifies the VIP desk and waits in the approval queue; the audited approval tags the customer VIP and sends the offer, while a low-value customer or a small order enters nothing."""
    t = await journey("vip-offer")
    fay = await t.person("fay", first_name="Fay", lifetime_value=3400)
    await t.person("gil", lifetime_value=800)
    await t.send(event("order.completed", "gil", "order-gil", order_id="o-76", total=900),
                 event("order.completed", "fay", "order-fay-small", order_id="o-75", total=120),
                 event("order.completed", "fay", "order-fay", order_id="o-77", total=820))
    (desk,) = await t.mail_arrives("vip-desk@example.com", 1)
    assert desk["Subject"] == "VIP offer waiting for approval: Fay" and "Lifetime value: 3,400" in text_of(desk)
    waiting = await t.waiting_at("fay", "approve-offer")
    (approval,) = (await t.c.orchestrator.ListApprovals(O.ListApprovalsRequest(journey="vip-offer"), metadata=t.md)).approvals
    assert approval.run_id == waiting.run_id and approval.approver_role == "approvals.decide"
    assert approval.message == "Offer VIP membership to Fay? Order o-77 of 820.00, lifetime value 3,400."
    assert approval.expire_time.ToDatetime() - approval.request_time.ToDatetime() == dt.timedelta(hours=48)
    assert t.mail(fay) == []
    await t.c.orchestrator.DecideApproval(O.DecideApprovalRequest(run_id=waiting.run_id, step_id="approve-offer", approve=True,
                                                                  reason="a loyal customer"), metadata=t.md)
    (offer,) = await t.mail_arrives(fay, 1)
    assert offer["Subject"] == "Fay, welcome to Acme VIP"
    run = await t.ended("fay")
    assert path(run) == [("tell-vip-desk", "next"), ("approve-offer", "approved"), ("make-vip", "next"), ("offer", "next")]
    assert run.steps[1].outcome == "approved by marketer@vip-offer"
    profile = (await t.c.profiles.GetProfile(P.GetProfileRequest(subject_id="fay"), metadata=t.md)).profile
    assert list(profile.tags) == ["vip"] and list(profile.segments) == ["vip"]
    assert (await t.c.orchestrator.ListRuns(O.ListRunsRequest(journey="vip-offer", subject_id="gil"), metadata=t.md)).runs == []

    async def audited() -> list[Any] | None:
        entries = (await t.c.rules.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000), metadata=t.md)).audit_events
        return [e for e in entries if e.action == audit_event_pb2.AUDIT_ACTION_APPROVAL_DECIDED] or None

    (decided,) = await eventually(audited, what="the approval in the audit log")
    assert decided.actor == "marketer@vip-offer" and decided.reason == "a loyal customer"


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
