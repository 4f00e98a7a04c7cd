"""A journey that could not run is refused at publish (an unknown rule set, a
template name that cannot exist); a value missing at send time dead-letters
the run without sending; and re-driven runs can move to the journey's latest
version."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import rules_service_pb2 as R
from overture_orchestrator import OrchestratorApp
from overture_runtime.config import Settings
from overture_runtime.testing import free_port, serving
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set

from .cluster import Cluster, running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


async def _refusal(call: Any) -> tuple[grpc.StatusCode, dict[str, str], str]:
    """The code, field violations (field -> description) and ErrorInfo reason of a failing call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    violations: dict[str, str] = {}
    reason = ""
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return caught.value.code(), violations, reason


async def _publish_rules(c: Cluster, *, activate: bool = True) -> None:
    name, spec = example_rule_set()
    created = await c.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="tour"), metadata=MD)
    if activate:
        await c.rules.ActivateRuleSetVersion(
            R.ActivateRuleSetVersionRequest(rule_set=name, version=created.rule_set_version.version, reason="tour"), metadata=MD)


def _welcome(*, rule_set: str = "marketing-email", subject: str | None = None, step_id: str = "send-welcome") -> J.JourneySpec:
    """The tour's welcome journey, with a rule set, subject line or step id changed."""
    _, spec = example_journey()
    spec.rule_set = rule_set
    if subject is not None:
        spec.templates["welcome"].subject = subject
    spec.steps[0].id = step_id
    return spec


async def test_publish_refuses_a_rule_set_that_does_not_exist_naming_the_field_and_the_step(cluster: Cluster) -> None:
    """`rule_set: marketing-emial` is INVALID_ARGUMENT at spec.rule_set, naming the send step it would decide, and nothing is published."""
    c = cluster
    await _publish_rules(c)
    code, violations, _ = await _refusal(c.orchestrator.PublishJourney(
        O.PublishJourneyRequest(name="welcome", spec=_welcome(rule_set="marketing-emial"), reason="typo"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations) == ["spec.rule_set"]
    assert "'marketing-emial' does not exist" in violations["spec.rule_set"] and "'send-welcome' (spec.steps[0])" in violations["spec.rule_set"]
    code, _, _ = await _refusal(c.orchestrator.GetJourney(O.GetJourneyRequest(name="welcome"), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND
    published = await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=_welcome(), reason="fixed"), metadata=MD)
    assert published.journey.version == 1


async def test_publish_refuses_a_rule_set_with_no_active_version(cluster: Cluster) -> None:
    """A rule set that exists but was never activated would deny every send too, so publish refuses it and says to activate one."""
    c = cluster
    await _publish_rules(c, activate=False)
    code, violations, _ = await _refusal(c.orchestrator.PublishJourney(
        O.PublishJourneyRequest(name="welcome", spec=_welcome(), reason="early"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no active version" in violations["spec.rule_set"]


async def test_publish_is_unavailable_when_the_rules_service_cannot_be_asked(make_settings: Callable[..., Settings]) -> None:
    """With the rules service unreachable, publish fails with UNAVAILABLE and publishes nothing unchecked."""
    settings = make_settings(rules_address=f"127.0.0.1:{free_port()}", rpc_timeout_seconds=2.0)
    async with serving(OrchestratorApp(settings), settings) as address, grpc.aio.insecure_channel(address) as channel:
        from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

        stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        code, _, reason = await _refusal(stub.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=_welcome(), reason="x"), metadata=MD))
        assert code == grpc.StatusCode.UNAVAILABLE and reason == "RULES_UNAVAILABLE"
        code, _, _ = await _refusal(stub.GetJourney(O.GetJourneyRequest(name="welcome"), metadata=MD))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_publish_refuses_a_template_variable_that_cannot_exist(cluster: Cluster) -> None:
    """`profile.trait.first_name` is INVALID_ARGUMENT at the template's field, naming the variable and the step that sends it."""
    c = cluster
    await _publish_rules(c)
    code, violations, _ = await _refusal(c.orchestrator.PublishJourney(O.PublishJourneyRequest(
        name="welcome", spec=_welcome(subject="Hi {{ profile.trait.first_name | default('there') }}"), reason="typo"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    description = violations["spec.templates[welcome].subject"]
    assert "profile.trait cannot exist" in description and "did you mean profile.traits?" in description and "send-welcome" in description


async def _dead_letter_one(c: Cluster, subject: str) -> run_pb2.Run:
    """Send *subject* through the published welcome journey and wait for its run in the dead-letter queue."""
    await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
        _event("identify", subject, traits={"email": f"{subject}@example.com"}),
        _event("consent.granted", subject, channel="email", purpose="marketing"),
        _event("user.signed_up", subject, f"signup-{subject}"),
    ]), metadata=MD)

    async def dead() -> run_pb2.Run | None:
        found = (await c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(journey="welcome"), metadata=MD)).runs
        return next((r for r in found if r.subject_id == subject), None)

    return await eventually(dead, what=f"{subject}'s run in the dead-letter queue")


async def test_a_value_missing_at_send_time_dead_letters_the_run_and_sends_nothing(cluster: Cluster) -> None:
    """A trait the template reads without a default fails the step with the missing name as its last error; no email is sent."""
    c = cluster
    await _publish_rules(c)
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(
        name="welcome", spec=_welcome(subject="Hi {{ profile.traits.nickname }}"), reason="strict"), metadata=MD)
    failed = await _dead_letter_one(c, "dana")
    assert failed.state == run_pb2.RUN_STATE_FAILED
    (step,) = failed.steps
    assert step.state == run_pb2.STEP_RUN_STATE_FAILED
    assert step.error == "template 'welcome' subject failed to render: 'dict object' has no attribute 'nickname'"
    assert c.mail.messages == []


async def test_redrive_moves_runs_to_the_latest_version_only_when_it_has_their_step(cluster: Cluster) -> None:
    """Pinned, a broken run stays on its version; LATEST refuses a version without the failed step (the run stays dead-lettered), then moves the run to a fixed version that has it, where it sends once."""
    c = cluster
    await publish_tour(c)
    broken = _welcome(subject="Hi {{ profile.traits.nickname }}")
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=broken, reason="v2 needs a nickname"), metadata=MD)
    failed = await _dead_letter_one(c, "eli")
    assert failed.journey_version == 2
    pinned = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(journey="welcome", reason="try again"), metadata=MD)
    assert pinned.redriven_count == 1

    async def failed_again() -> run_pb2.Run | None:
        run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=failed.run_id), metadata=MD)).run
        return run if run.state == run_pb2.RUN_STATE_FAILED and run.steps[0].error.startswith("template") else None

    assert (await eventually(failed_again, what="the pinned re-drive to fail again")).journey_version == 2

    renamed = _welcome(step_id="send-hello")
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=renamed, reason="v3 renames the step"), metadata=MD)
    latest = O.JOURNEY_VERSION_POLICY_LATEST
    refused = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(
        journey="welcome", reason="move to the fix", journey_version_policy=latest), metadata=MD)
    assert refused.redriven_count == 0
    (rejection,) = refused.rejections
    assert rejection.run_id == failed.run_id and rejection.reason == "STEP_NOT_IN_VERSION"
    assert "'send-welcome'" in rejection.description and "version 3" in rejection.description
    code, _, reason = await _refusal(c.orchestrator.RetryRun(
        O.RetryRunRequest(run_id=failed.run_id, journey_version_policy=latest), metadata=MD))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "STEP_NOT_IN_VERSION"
    still = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=failed.run_id), metadata=MD)).run
    assert still.state == run_pb2.RUN_STATE_FAILED and still.journey_version == 2

    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=_welcome(), reason="v4 fixes v2"), metadata=MD)
    moved = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(
        run_ids=[failed.run_id], reason="move to the fix", journey_version_policy=latest), metadata=MD)
    assert moved.redriven_count == 1 and list(moved.rejections) == []

    async def completed() -> run_pb2.Run | None:
        run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=failed.run_id), metadata=MD)).run
        return run if run.state == run_pb2.RUN_STATE_COMPLETED else None

    done = await eventually(completed, what="the moved run to complete")
    assert done.journey_version == 4 and done.steps[0].outcome == "sent"
    assert [m["To"] for m in c.mail.messages] == ["eli@example.com"]


async def test_preview_refuses_names_that_cannot_exist_and_shows_values_the_subject_lacks(cluster: Cluster) -> None:
    """Previewing a spec with `profile.trait` is INVALID_ARGUMENT at the template; with a trait the subject lacks, the send step comes back FAILED naming it; with it, the message renders and the decision (no consent) says it would not be sent; nothing is sent."""
    from overture.rules.v1 import profile_service_pb2 as P

    c = cluster
    await _publish_rules(c)
    code, violations, _ = await _refusal(c.orchestrator.PreviewJourney(O.PreviewJourneyRequest(
        spec=_welcome(subject="Hi {{ profile.trait.first_name }}"), subject_id="hal"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "profile.trait cannot exist" in violations["spec.templates[welcome].subject"]
    strict = _welcome(subject="Hi {{ profile.traits.nickname }}")
    (step,) = (await c.orchestrator.PreviewJourney(O.PreviewJourneyRequest(spec=strict, subject_id="hal"), metadata=MD)).steps
    assert step.state == run_pb2.STEP_RUN_STATE_FAILED and "'nickname'" in step.error
    request = P.UpsertProfileRequest(subject_id="hal")
    request.traits.update({"nickname": "Hal", "email": "hal@example.com"})
    await c.profiles.UpsertProfile(request, metadata=MD)
    previewed = await c.orchestrator.PreviewJourney(O.PreviewJourneyRequest(spec=strict, subject_id="hal"), metadata=MD)
    (step,), (message,) = previewed.steps, previewed.messages
    assert step.state == run_pb2.STEP_RUN_STATE_SKIPPED and step.outcome.startswith("would not send: denied by consent")
    assert message.subject == "Hi Hal" and not message.decision.allowed
    assert c.mail.messages == []
