"""The journey lifecycle RPCs of OrchestratorService: drafts, versions,
archive and run migration. Validation and translation only, like the rest
of the servicer (:mod:`.servicer`), which inherits these methods."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import grpc
import structlog

from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime import Violations, current_principal
from overture_runtime.idempotency import Idempotency
from overture_runtime.validation import check_identifier, check_name, check_reason, decode_page_token, encode_page_token, page_size

from .drafts import Drafts
from .journeys import JourneyStore
from .migrator import RunMigrator
from .runs import RunStore

__all__ = ["MAX_STEP_MAPPING", "LifecycleRpcs"]

log = structlog.get_logger("overture.orchestrator")
OS = orchestrator_service_pb2
MAX_STEP_MAPPING = 200
"""Entries a step mapping may have (a journey has at most 200 steps)."""


class LifecycleRpcs(orchestrator_service_pb2_grpc.OrchestratorServiceServicer):
    """SaveJourneyDraft, GetJourneyDraft, ListJourneyVersions, ArchiveJourney and MigrateRuns."""

    _journeys: JourneyStore
    _runs: RunStore
    _drafts: Drafts
    _migrator: RunMigrator
    _idempotency: Idempotency
    _audited: Callable[[str], Awaitable[None]]

    async def SaveJourneyDraft(self, request: OS.SaveJourneyDraftRequest, context: grpc.aio.ServicerContext) -> OS.SaveJourneyDraftResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "name", request.name)
        if not request.HasField("spec"):
            v.add("spec", "spec is required", "REQUIRED")
        v.raise_if_any("the draft is invalid")
        draft = await self._drafts.save(tenant=principal.tenant, name=request.name, spec=request.spec, author=principal.name)
        log.info("journey.draft_saved", journey=request.name, problems=len(draft.problems), warnings=len(draft.warnings))
        return OS.SaveJourneyDraftResponse(draft=draft)

    async def GetJourneyDraft(self, request: OS.GetJourneyDraftRequest, context: grpc.aio.ServicerContext) -> OS.GetJourneyDraftResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        v.raise_if_any()
        return OS.GetJourneyDraftResponse(draft=await self._drafts.get(tenant=tenant, name=request.name))

    async def ListJourneyVersions(self, request: OS.ListJourneyVersionsRequest,
                                  context: grpc.aio.ServicerContext) -> OS.ListJourneyVersionsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        before = decode_page_token(request.page_token, before=int).get("before")
        found = await self._journeys.list_versions(tenant=tenant, name=request.name, limit=size + 1, before=before)
        token = encode_page_token({"before": found[size - 1].version}) if len(found) > size else ""
        return OS.ListJourneyVersionsResponse(journeys=found[:size], next_page_token=token)

    async def ArchiveJourney(self, request: OS.ArchiveJourneyRequest, context: grpc.aio.ServicerContext) -> OS.ArchiveJourneyResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "name", request.name)
        check_reason(v, request.reason)
        v.raise_if_any("the archive request is invalid")
        cancel = functools.partial(self._runs.cancel_journey, principal.tenant, request.name, reason=f"journey archived: {request.reason}")
        journey, cancelled = await self._journeys.archive(tenant=principal.tenant, name=request.name, actor=principal.name,
                                                          reason=request.reason, cancel_runs=lambda conn: cancel(conn=conn))
        log.info("journey.archived", journey=request.name, cancelled_runs=cancelled)
        return OS.ArchiveJourneyResponse(journey=journey, cancelled_runs=cancelled)

    async def MigrateRuns(self, request: OS.MigrateRunsRequest, context: grpc.aio.ServicerContext) -> OS.MigrateRunsResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "journey", request.journey)
        if request.from_version <= 0:
            v.add("from_version", "from_version is required: the version whose runs move", "REQUIRED")
        if request.to_version < 0:
            v.add("to_version", "to_version must not be negative (0 is the latest)", "OUT_OF_RANGE")
        if len(request.step_mapping) > MAX_STEP_MAPPING:
            v.add("step_mapping", f"at most {MAX_STEP_MAPPING} entries", "TOO_MANY")
        for old, new in sorted(request.step_mapping.items()):
            check_name(v, f"step_mapping[{old}]", old)
            check_name(v, f"step_mapping[{old}]", new)
        check_reason(v, request.reason)
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any("the migration is invalid")

        async def migrate() -> OS.MigrateRunsResponse:
            done = await self._migrator.migrate(principal.tenant, journey=request.journey, from_version=request.from_version,
                                                to_version=request.to_version, mapping=dict(request.step_mapping), actor=principal.name,
                                                reason=request.reason)
            log.info("runs.migrated", journey=request.journey, from_version=request.from_version, to_version=done.to_version,
                     count=done.migrated, refused=len(done.rejections))
            if done.migrated:
                await self._audited(principal.tenant)
            return OS.MigrateRunsResponse(migrated_count=done.migrated, to_version=done.to_version, rejections=[
                OS.RedriveRejection(run_id=run_id, reason=r.reason, description=r.description) for run_id, r in done.rejections])

        return await self._idempotency.run(tenant=principal.tenant, method="MigrateRuns", request_id=request.request_id,
                                           request=request, response_type=OS.MigrateRunsResponse, compute=migrate)
