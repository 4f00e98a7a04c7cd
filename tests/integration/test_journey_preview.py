"""PreviewJourney on real services: every step kind walked with the engine's
semantics in simulated time, each send rendered and decided by the rules
service in dry-run mode, on the stored profile or one the caller gives, and
no side effect at all (no run, no decision record, no reservation, no
profile change, no message)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import profile_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture.rules.v1 import rules_service_pb2 as R
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, START, World

from .rules_support import field_violations

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
EMAIL = messaging_pb2.CHANNEL_EMAIL
TOUR = [("route", "pro"), ("hello", "next"), ("before-renewal", "next"), ("wait-order", "timeout"), ("nudge", "next"),
        ("until-pro", "true"), ("approve", "approved"), ("fork", "branch:0"), ("send-more", "next"), ("mark", "next"),
        ("tell-team", "next"), ("call", "next"), ("meet", "next"), ("vip", "false"), ("bye", "next")]


async def _preview(world: World, subject: str, *, profile: profile_pb2.Profile | None = None, **attributes: Any) -> O.PreviewJourneyResponse:
    request = O.PreviewJourneyRequest(name="preview-tour", subject_id=subject, profile=profile)
    request.attributes.update(attributes)
    return await world.c.orchestrator.PreviewJourney(request, metadata=MD)


async def test_a_preview_walks_every_step_kind_decides_each_send_and_changes_nothing(world: World) -> None:
    """The path takes each kind's edge in simulated time, messages render for the subject with their dry-run decisions, and
    afterwards there is no run, no decision, no profile change and no mail."""
    await world.publish("preview-tour")
    renewal = (START + dt.timedelta(days=10)).date().isoformat()
    address = await world.person("pv-ann", first_name="Ann", plan="pro", renewal_date=renewal)
    await world.consumed()
    preview = await _preview(world, "pv-ann", plan="pro")
    assert preview.entered and not preview.entry_reason
    assert [(s.step_id, s.edge) for s in preview.steps] == TOUR
    steps = {s.step_id: s for s in preview.steps}
    assert steps["before-renewal"].wake_time.ToDatetime(tzinfo=dt.UTC) == dt.datetime.fromisoformat(renewal).replace(tzinfo=dt.UTC) \
        - dt.timedelta(days=7)
    assert steps["wait-order"].wake_time.ToDatetime() - steps["before-renewal"].wake_time.ToDatetime() == dt.timedelta(days=2)
    assert steps["mark"].outcome.startswith("would update the profile") and list(steps["mark"].input["add_tags"]) == ["toured"]
    assert steps["approve"].input["message"] == "Give Ann the tour?"
    messages = {m.step_id: m for m in preview.messages}
    assert list(messages) == ["hello", "nudge", "send-more", "tell-team", "call", "bye"]
    hello = messages["hello"]
    assert (hello.subject, hello.text_body, hello.channel) == ("Hello Ann", "Your pro tour starts.", EMAIL)
    assert hello.to != address and hello.to.startswith("p") and "@" in hello.to  # masked
    assert hello.decision.allowed and not hello.decision.decision_id and list(hello.decision.tags) == ["tour"]
    assert not messages["tell-team"].HasField("decision") and messages["call"].to == "https://crm.example.com/..."
    assert all(s.state == run_pb2.STEP_RUN_STATE_COMPLETED for s in preview.steps)

    assert await world.runs("preview-tour") == []
    decisions = await world.c.rules.ListDecisions(R.ListDecisionsRequest(subject_id="pv-ann"), metadata=MD)
    assert list(decisions.decisions) == []
    profile = (await world.c.profiles.GetProfile(P.GetProfileRequest(subject_id="pv-ann"), metadata=MD)).profile
    assert not profile.tags and "tours" not in profile.traits and world.mail_to(address) == []


async def test_a_preview_on_a_given_profile_needs_no_stored_one_and_says_who_would_not_enter(world: World) -> None:
    """A profile sent with the preview renders and decides the sends for a subject Overture does not know; a tag the profile
    condition excludes, or an event the filter refuses, is reported as not entering, and the path is still shown."""
    await world.publish("preview-tour")
    given = profile_pb2.Profile(consents=[profile_pb2.Consent(channel=EMAIL, purpose="marketing", status=profile_pb2.CONSENT_STATUS_GRANTED)],
                                segments=["vip"])
    given.traits.update({"first_name": "Zoe", "email": "zoe@example.com", "plan": "basic"})
    preview = await _preview(world, "pv-unknown", profile=given, plan="basic")
    assert preview.entered
    assert [(s.step_id, s.edge) for s in preview.steps] == [("route", "default"), ("bye", "next")]
    (bye,) = preview.messages
    assert bye.text_body == "See you, Zoe." and bye.decision.allowed
    blocked = profile_pb2.Profile()
    blocked.CopyFrom(given)
    blocked.tags.append("blocked")
    refused = await _preview(world, "pv-unknown", profile=blocked, plan="pro")
    assert not refused.entered and "profile condition" in refused.entry_reason and refused.steps[0].step_id == "route"
    filtered = await _preview(world, "pv-unknown", profile=given, plan="test")
    assert not filtered.entered and "filter" in filtered.entry_reason
    erased = await _preview(world, "pv-unknown", profile=profile_pb2.Profile(erased=True), plan="pro")
    assert not erased.entered and [s.state for s in erased.steps] == [run_pb2.STEP_RUN_STATE_SKIPPED] and not erased.messages
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.c.profiles.GetProfile(P.GetProfileRequest(subject_id="pv-unknown"), metadata=MD)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_send_the_guardrails_would_deny_is_shown_skipped_with_the_decision(world: World) -> None:
    """Without consent, each send is shown SKIPPED with the consent denial, and its message still renders."""
    await world.publish("preview-tour")
    await world.person("pv-bob", consent=False, first_name="Bob", plan="pro")
    await world.consumed()
    preview = await _preview(world, "pv-bob", plan="pro")
    hello = next(s for s in preview.steps if s.step_id == "hello")
    assert hello.state == run_pb2.STEP_RUN_STATE_SKIPPED and "denied by consent" in hello.outcome
    (message,) = [m for m in preview.messages if m.step_id == "hello"]
    assert message.subject == "Hello Bob" and not message.decision.allowed
    # Bob has no renewal date: the delay leaves by `missing`, to the goodbye.
    assert [(s.step_id, s.edge) for s in preview.steps][2:] == [("before-renewal", "missing"), ("bye", "next")]


async def test_a_preview_with_a_bad_profile_is_refused_at_its_fields(world: World) -> None:
    """Another subject's profile and a consent without a channel are field violations."""
    bad = profile_pb2.Profile(subject_id="someone-else", consents=[profile_pb2.Consent(purpose="marketing")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _preview(world, "pv-bad", profile=bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"profile.subject_id", "profile.consents[0].channel"}
