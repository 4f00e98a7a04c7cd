"""Bad input to the journey lifecycle RPCs (drafts, versions, archive,
migration) gets the right status, field violations and reason, never a
stack trace; callers without the role are refused before validation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture_orchestrator.drafts import MAX_DRAFT_BYTES
from overture_orchestrator.lifecycle import MAX_STEP_MAPPING
from overture_runtime.config import Settings
from tests.conftest import OTHER_TENANT_TOKEN, READER_TOKEN, admin_metadata

from .cluster import Cluster, running_cluster
from .lifecycle_support import delay_journey, publish
from .test_bad_input import _error

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


async def test_drafts_need_a_valid_name_and_a_spec_of_bounded_size(cluster: Cluster) -> None:
    """SaveJourneyDraft without a spec or with a bad name is INVALID_ARGUMENT on both fields, a huge draft on spec; GetJourneyDraft of no draft is NOT_FOUND."""
    c = cluster
    code, _, violations, _ = await _error(c.orchestrator.SaveJourneyDraft(orch.SaveJourneyDraftRequest(name="Bad Name"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and {"name", "spec"} <= set(violations)
    huge = J.JourneySpec(description="x" * 200_000)
    huge.templates["a"].text_body = "y" * 200_000
    for i in range(5):
        huge.templates[f"t{i}"].html_body = "z" * 200_000
    code, _, violations, _ = await _error(c.orchestrator.SaveJourneyDraft(orch.SaveJourneyDraftRequest(name="big", spec=huge), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"{MAX_DRAFT_BYTES} bytes" in violations["spec"]
    code, _, violations, _ = await _error(c.orchestrator.GetJourneyDraft(orch.GetJourneyDraftRequest(), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "name" in violations
    code, message, _, reason = await _error(c.orchestrator.GetJourneyDraft(orch.GetJourneyDraftRequest(name="nothing"), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "DRAFT_NOT_FOUND") and "nothing" in message


async def test_listing_versions_checks_its_paging_and_the_journey(cluster: Cluster) -> None:
    """ListJourneyVersions refuses a page size over 100 and a page token it did not issue, and is NOT_FOUND for an unknown journey."""
    c = cluster
    for request, field in ((orch.ListJourneyVersionsRequest(name="trial", page_size=1000), "page_size"),
                           (orch.ListJourneyVersionsRequest(name="trial", page_token="%%%"), "page_token")):
        code, _, violations, _ = await _error(c.orchestrator.ListJourneyVersions(request, metadata=MD))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in violations
    code, _, _, reason = await _error(c.orchestrator.ListJourneyVersions(orch.ListJourneyVersionsRequest(name="nope"), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOURNEY_NOT_FOUND")


async def test_archive_needs_a_reason_and_a_journey_of_the_callers_tenant(cluster: Cluster) -> None:
    """ArchiveJourney without a reason is INVALID_ARGUMENT; an unknown journey, or another tenant's, is NOT_FOUND; a reader is PERMISSION_DENIED."""
    c = cluster
    await publish(c, "trial", delay_journey(("wait", "delay"), ("done", "exit")))
    code, _, violations, _ = await _error(c.orchestrator.ArchiveJourney(orch.ArchiveJourneyRequest(name="trial"), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in violations
    for token in (None, OTHER_TENANT_TOKEN):
        call = c.orchestrator.ArchiveJourney(orch.ArchiveJourneyRequest(name="trial" if token else "nope", reason="r"),
                                             metadata=admin_metadata(token) if token else MD)
        code, _, _, reason = await _error(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOURNEY_NOT_FOUND")
    code, _, _, _ = await _error(c.orchestrator.ArchiveJourney(orch.ArchiveJourneyRequest(), metadata=admin_metadata(READER_TOKEN)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_migration_request_is_checked_field_by_field(cluster: Cluster) -> None:
    """MigrateRuns reports a missing from_version and reason, a negative to_version, bad step ids and too large a mapping together; unknown journeys and versions are NOT_FOUND."""
    c = cluster
    request = orch.MigrateRunsRequest(journey="trial", to_version=-1, step_mapping={"Bad Id": "ok", "ok": ""})
    code, _, violations, _ = await _error(c.orchestrator.MigrateRuns(request, metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"from_version", "to_version", "reason", "step_mapping[Bad Id]", "step_mapping[ok]"} <= set(violations)
    many = orch.MigrateRunsRequest(journey="trial", from_version=1, reason="r",
                                   step_mapping={f"s{i}": f"t{i}" for i in range(MAX_STEP_MAPPING + 1)})
    code, _, violations, _ = await _error(c.orchestrator.MigrateRuns(many, metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "step_mapping" in violations
    code, _, _, reason = await _error(c.orchestrator.MigrateRuns(orch.MigrateRunsRequest(journey="nope", from_version=1, reason="r"),
                                                                 metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOURNEY_NOT_FOUND")
    await publish(c, "trial", delay_journey(("wait", "delay"), ("done", "exit")))
    code, _, _, reason = await _error(c.orchestrator.MigrateRuns(orch.MigrateRunsRequest(journey="trial", from_version=4, reason="r"),
                                                                 metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND")
    code, _, _, _ = await _error(c.orchestrator.MigrateRuns(orch.MigrateRunsRequest(), metadata=admin_metadata(READER_TOKEN)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
