"""Actions besides sends, on real services: a notification to a team goes
out without the subject's consent, and an update-profile step changes the
profile through the rules service, once per run and step, before the next
step reads it."""

from __future__ import annotations

import pytest

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.rules.v1 import profile_service_pb2 as P
from overture.rules.v1 import rules_service_pb2 as R
from overture_runtime.protojson import struct_to_dict
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world


async def test_a_notification_reaches_the_team_without_the_subjects_consent(world: World) -> None:
    """For a subject without marketing consent, the sales team's task email goes out (decided by no guardrail) while the subject's own welcome is denied by consent."""
    await world.publish("vip-alert")
    subject = await world.person("notify-lu", consent=False)
    await world.ingest(event("vip.signed_up", "notify-lu", plan="gold"))
    run = await world.ended((await world.run_of("vip-alert", "notify-lu")).run_id)
    assert world.path(run) == [("tell-sales", "next"), ("welcome", "next")]
    assert world.step(run, "tell-sales").outcome == "sent" and not world.step(run, "tell-sales").decision_id
    assert "consent" in world.step(run, "welcome").outcome and world.mail_to(subject) == []
    (alert,) = world.mail_to("sales@acme.test")
    assert alert["Subject"] == "New VIP: notify-lu" and "they chose gold" in alert.get_content()
    decisions = (await world.c.rules.ListDecisions(R.ListDecisionsRequest(subject_id="notify-lu"), metadata=MD)).decisions
    assert [d.allowed for d in decisions] == [False]  # only the subject's own message was decided



async def test_a_bounce_of_a_team_notification_is_recorded_but_suppresses_no_one(world: World) -> None:
    """A BOUNCED report for a notify step's delivery is accepted and noted on the step, but the subject is put on no suppression list."""
    await world.publish("vip-alert")
    await world.person("notify-bo", consent=False)
    await world.ingest(event("vip.signed_up", "notify-bo", plan="gold"))
    run = await world.ended((await world.run_of("vip-alert", "notify-bo")).run_id)
    step = world.step(run, "tell-sales")
    await world.c.orchestrator.ReportDeliveryStatus(O.ReportDeliveryStatusRequest(
        idempotency_key=f"{run.run_id}:tell-sales", delivery_id=step.delivery_id, status=messaging_pb2.DELIVERY_STATUS_BOUNCED,
        detail="550 no such team mailbox"), metadata=MD)
    noted = (await world.c.orchestrator.GetRun(O.GetRunRequest(run_id=run.run_id), metadata=MD)).run
    assert world.step(noted, "tell-sales").outcome.startswith("delivery bounced")
    profile = (await world.c.profiles.GetProfile(P.GetProfileRequest(subject_id="notify-bo"), metadata=MD)).profile
    assert list(profile.suppression_lists) == []

async def test_an_update_profile_step_changes_the_profile_once_and_the_next_step_reads_the_change(world: World) -> None:
    """Attending a webinar sets a trait from the event, removes one, adds 10 to the lead score, tags and enters a segment; the condition after it sees the warm lead, and a repeat of the change under the step's key changes nothing."""
    await world.publish("webinar-scoring")
    address = await world.person("score-mo", lead_score=5, cold=True)
    await world.ingest(event("webinar.attended", "score-mo", title="Journeys 101"))
    run = await world.ended((await world.run_of("webinar-scoring", "score-mo")).run_id)
    assert world.path(run) == [("score", "next"), ("is-warm", "true"), ("recap", "next")]
    (mail,) = world.mail_to(address)
    assert mail["Subject"] == "Recap: Journeys 101" and "Your score is 15." in mail.get_content()
    profile = (await world.c.profiles.GetProfile(P.GetProfileRequest(subject_id="score-mo"), metadata=MD)).profile
    traits = struct_to_dict(profile.traits)
    assert (traits["lead_score"], traits["last_webinar"], "cold" in traits) == (15, "Journeys 101", False)
    assert "webinar" in profile.tags and "warm-leads" in profile.segments
    repeat = P.UpdateProfileRequest(subject_id="score-mo", request_id=f"{run.run_id}:score", unset_traits=["cold"], increment={"lead_score": 10},
                                    add_tags=["webinar"], enter_segments=["warm-leads"])
    repeat.set_traits.update({"last_webinar": "Journeys 101"})
    await world.c.profiles.UpdateProfile(repeat, metadata=MD)  # what a batch executed again after a crash would send
    again = (await world.c.profiles.GetProfile(P.GetProfileRequest(subject_id="score-mo"), metadata=MD)).profile
    assert struct_to_dict(again.traits)["lead_score"] == 15
