"""An update-profile step changes the profile the steps after it read: a
send right after it, executed in the same batch, renders the new values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from overture.common.v1 import messaging_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


def _journey() -> J.JourneySpec:
    spec = J.JourneySpec(description="qualify a lead, then send the code it was given", rule_set="marketing-email")
    spec.trigger.event.event_type = "lead.qualified"
    qualify = spec.steps.add(id="qualify", next="send-code")
    qualify.update_profile.traits.update({"coupon": "LEAD-{{ event.attributes.code }}"})
    qualify.update_profile.increment["lead_score"] = 15
    qualify.update_profile.add_tags.append("qualified")
    spec.steps.add(id="send-code", send=J.SendStep(channel=messaging_pb2.CHANNEL_EMAIL, template="code"))
    spec.templates["code"].CopyFrom(J.MessageTemplate(
        subject="Your code {{ profile.traits.coupon }}",
        text_body="Score {{ profile.traits.lead_score | int }}, tags {{ profile.tags | join(',') }}."))
    return spec


async def test_a_send_right_after_an_update_profile_step_renders_the_updated_profile(make_settings: Callable[..., Settings],
                                                                                  tmp_path: Path) -> None:
    """A trait set, a number incremented and a tag added by an update-profile step are in the email the next step sends in the same batch."""
    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="lead-code", spec=_journey(), reason="test"), metadata=MD)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "ivy", traits={"email": "ivy@example.com", "lead_score": 10}),
            _event("consent.granted", "ivy", channel="email", purpose="marketing"),
            _event("lead.qualified", "ivy", "qualified-ivy", code="X1"),
        ]), metadata=MD)

        async def ended() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(journey="lead-code", subject_id="ivy"), metadata=MD)).runs
            return runs[0] if runs and runs[0].state in (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED) else None

        run = await eventually(ended, what="the run to end")
        assert run.state == run_pb2.RUN_STATE_COMPLETED, [s.error for s in run.steps]
        assert [(s.step_id, s.outcome) for s in run.steps] == [("qualify", "profile updated"), ("send-code", "sent")]
        (message,) = c.mail.messages
        assert message["Subject"] == "Your code LEAD-X1"
        assert message.get_content().strip() == "Score 25, tags qualified."
