"""Bad input over gRPC gets the right status and a readable message, never a
stack trace: missing tokens, wrong roles, unknown tenants, invalid events,
unparseable rule expressions, unknown journeys, oversized payloads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.common.v1 import event_pb2, messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as connectors
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.rules.v1 import rule_set_pb2
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from tests.conftest import OTHER_TENANT_TOKEN, READER_TOKEN, SERVICE_TOKEN, admin_metadata
from tests.thinpath import example_journey, example_rule_set

from .cluster import Cluster, running_cluster

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


async def _error(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    """The code, message, field violations and ErrorInfo reason of a failing call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    violations: dict[str, str] = {}
    reason = ""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    assert "Traceback" not in (error.details() or "")
    return error.code(), error.details() or "", violations, reason


async def test_every_service_refuses_a_call_without_a_token(cluster: Cluster) -> None:
    """A call with no bearer token is UNAUTHENTICATED on every service, with a message saying how to authenticate."""
    calls = [
        cluster.ingest.IngestEvents(ingest.IngestEventsRequest(events=[event_pb2.Event(event_type="a.b", subject_id="s")])),
        cluster.rules.GetRuleSetVersion(rules.GetRuleSetVersionRequest(rule_set="marketing-email")),
        cluster.orchestrator.ListRuns(orch.ListRunsRequest()),
        cluster.connectors.ListConnectors(connectors.ListConnectorsRequest()),
    ]
    for call in calls:
        code, message, _, reason = await _error(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in message and reason == "MISSING_TOKEN"


async def test_an_unknown_token_is_unauthenticated(cluster: Cluster) -> None:
    """A token that is not configured is UNAUTHENTICATED."""
    code, _, _, reason = await _error(cluster.orchestrator.ListRuns(orch.ListRunsRequest(), metadata=admin_metadata("nope")))
    assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "UNKNOWN_TOKEN"


async def test_a_token_without_the_role_is_permission_denied_before_validation(cluster: Cluster) -> None:
    """A reader cannot create rule set versions, even with an invalid request: permission is checked first."""
    code, message, _, reason = await _error(cluster.rules.CreateRuleSetVersion(
        rules.CreateRuleSetVersionRequest(rule_set="BAD NAME"), metadata=admin_metadata(READER_TOKEN)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "rules.write" in message and reason == "MISSING_ROLE"


async def test_a_service_token_naming_an_unknown_tenant_is_denied(cluster: Cluster) -> None:
    """An internal service token must name a known tenant."""
    metadata = (("authorization", f"Bearer {SERVICE_TOKEN}"), ("x-overture-tenant", "no-such-tenant"))
    code, message, _, reason = await _error(cluster.orchestrator.ListRuns(orch.ListRunsRequest(), metadata=metadata))
    assert code == grpc.StatusCode.PERMISSION_DENIED and reason == "UNKNOWN_TENANT" and "no-such-tenant" in message


async def test_tenants_do_not_see_each_others_resources(cluster: Cluster) -> None:
    """A rule set published by one tenant is NOT_FOUND for another."""
    name, spec = example_rule_set()
    await cluster.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="r"), metadata=MD)
    code, _, _, _ = await _error(cluster.rules.GetRuleSetVersion(
        rules.GetRuleSetVersionRequest(rule_set=name, version=1), metadata=admin_metadata(OTHER_TENANT_TOKEN)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_an_event_without_a_type_is_rejected_and_its_neighbours_accepted(cluster: Cluster) -> None:
    """An event with no type is REJECTED with a field violation on event_type; the other events of the batch are accepted."""
    events = [event_pb2.Event(event_type="user.signed_up", subject_id="s1"), event_pb2.Event(subject_id="s2"),
              event_pb2.Event(event_type="Not A Type", subject_id="s3")]
    results = (await cluster.ingest.IngestEvents(ingest.IngestEventsRequest(events=events), metadata=MD)).results
    assert [r.status for r in results] == [ingest.EVENT_RESULT_STATUS_ACCEPTED, ingest.EVENT_RESULT_STATUS_REJECTED,
                                           ingest.EVENT_RESULT_STATUS_REJECTED]
    assert [(v.field, v.reason) for v in results[1].violations] == [("event_type", "REQUIRED")]
    assert results[2].violations[0].reason == "INVALID_EVENT_TYPE" and "user.signed_up" in results[2].violations[0].description


async def test_an_empty_or_oversized_batch_is_invalid(cluster: Cluster) -> None:
    """An empty batch and a batch over 1,000 events are INVALID_ARGUMENT on the field events."""
    code, _, violations, _ = await _error(cluster.ingest.IngestEvents(ingest.IngestEventsRequest(), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "events" in violations
    many = [event_pb2.Event(event_type="a.b", subject_id=f"s{i}") for i in range(1001)]
    code, _, violations, _ = await _error(cluster.ingest.IngestEvents(ingest.IngestEventsRequest(events=many), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1000" in violations["events"]


async def test_oversized_attributes_are_rejected(cluster: Cluster) -> None:
    """Attributes over 32 KiB are rejected with a TOO_LARGE violation on attributes."""
    event = event_pb2.Event(event_type="a.b", subject_id="s")
    event.attributes.update({"blob": "x" * 40_000})
    (result,) = (await cluster.ingest.IngestEvents(ingest.IngestEventsRequest(events=[event]), metadata=MD)).results
    assert result.status == ingest.EVENT_RESULT_STATUS_REJECTED
    assert [(v.field, v.reason) for v in result.violations] == [("attributes", "TOO_LARGE")]


async def test_a_malformed_request_message_is_invalid_argument(cluster: Cluster) -> None:
    """Bytes that are not a valid request message are INVALID_ARGUMENT, not INTERNAL."""
    channel = grpc.aio.insecure_channel(cluster.addresses["ingest"])
    raw = channel.unary_unary("/overture.ingest.v1.IngestService/IngestEvents", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    code, message, _, reason = await _error(raw(b"\x0a\xff\xff\xff\x0f", metadata=MD))
    await channel.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == "MALFORMED_REQUEST" and "IngestEvents" in message


async def test_an_unparseable_rule_expression_is_rejected_with_its_position(cluster: Cluster) -> None:
    """A rule whose expression does not parse is INVALID_ARGUMENT naming the rule, the field and the position."""
    _, spec = example_rule_set()
    spec.rules[0].expression = 'plan == "pro" and ('
    code, message, violations, _ = await _error(cluster.rules.CreateRuleSetVersion(
        rules.CreateRuleSetVersionRequest(rule_set="broken", spec=spec, reason="bad"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not-churned" in message and "syntax error" in message
    assert "position" in violations["spec.rules[0].expression"]


async def test_a_rule_set_version_needs_a_valid_name_and_reason(cluster: Cluster) -> None:
    """Missing reason and a bad name are reported together as field violations."""
    code, _, violations, _ = await _error(cluster.rules.CreateRuleSetVersion(
        rules.CreateRuleSetVersionRequest(rule_set="Bad Name", spec=rule_set_pb2.RuleSetSpec()), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and {"rule_set", "reason"} <= set(violations)


async def test_an_unknown_journey_is_not_found(cluster: Cluster) -> None:
    """Triggering or reading a journey that does not exist is NOT_FOUND with its name in the message."""
    code, message, _, reason = await _error(cluster.orchestrator.Trigger(
        orch.TriggerRequest(journey="no-such-journey", subject_id="s1"), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-journey" in message and reason == "JOURNEY_NOT_FOUND"
    code, _, _, _ = await _error(cluster.orchestrator.GetJourney(orch.GetJourneyRequest(name="no-such-journey"), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_journey_with_a_missing_template_is_rejected(cluster: Cluster) -> None:
    """Publishing a journey whose send step names no template of the journey is INVALID_ARGUMENT on that field."""
    name, journey = example_journey()
    journey.steps[0].send.template = "nope"
    code, _, violations, _ = await _error(cluster.orchestrator.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.steps[0].send.template" in violations


async def test_evaluate_validates_its_request(cluster: Cluster) -> None:
    """Evaluate reports missing fields and an oversized context, and NOT_FOUND for an unknown rule set."""
    code, _, violations, _ = await _error(cluster.rules.Evaluate(rules.EvaluateRequest(), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and {"rule_set", "subject_id", "channel"} <= set(violations)
    request = rules.EvaluateRequest(rule_set="marketing-email", subject_id="s", channel=messaging_pb2.CHANNEL_EMAIL)
    request.context.update({"blob": "x" * 20_000})
    code, _, violations, _ = await _error(cluster.rules.Evaluate(request, metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "context" in violations
    code, _, _, reason = await _error(cluster.rules.Evaluate(
        rules.EvaluateRequest(rule_set="no-such-set", subject_id="s", channel=messaging_pb2.CHANNEL_EMAIL), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND and reason == "RULE_SET_NOT_FOUND"


async def test_a_garbage_page_token_is_invalid(cluster: Cluster) -> None:
    """A page token the service did not issue is INVALID_ARGUMENT on page_token."""
    code, _, violations, _ = await _error(cluster.orchestrator.ListRuns(orch.ListRunsRequest(page_token="%%%"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in violations


async def test_approvals_and_redrives_validate_before_they_look(cluster: Cluster) -> None:
    """DecideApproval names each missing field, then answers NOT_FOUND for an approval that does not exist; empty re-drives
    and retries of unknown runs are refused likewise."""
    code, _, violations, _ = await _error(cluster.orchestrator.DecideApproval(orch.DecideApprovalRequest(), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and {"run_id", "step_id", "reason"} <= set(violations)
    code, _, _, _ = await _error(cluster.orchestrator.DecideApproval(orch.DecideApprovalRequest(
        run_id="no-such-run", step_id="gate", approve=True, reason="ok"), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _, violations, _ = await _error(cluster.orchestrator.RedriveDeadLetters(orch.RedriveDeadLettersRequest(), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "run_ids" in violations
    code, _, _, _ = await _error(cluster.orchestrator.RetryRun(orch.RetryRunRequest(run_id="no-such-run"), metadata=MD))
    assert code == grpc.StatusCode.NOT_FOUND
