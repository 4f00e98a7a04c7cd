"""The orchestrator's gRPC servicer: validation and translation only."""

from __future__ import annotations

import grpc
import structlog

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime import Unimplemented, Violations, current_principal
from overture_runtime.idempotency import Idempotency
from overture_runtime.validation import check_identifier, check_name, check_struct, decode_page_token, encode_page_token, page_size

from .journeys import JourneyStore
from .runs import RunStore
from .starter import Starter

__all__ = ["OrchestratorServicer"]

log = structlog.get_logger("overture.orchestrator")
O = orchestrator_service_pb2
_CONTEXT_MAX = 32 * 1024
_REASON_MAX = 1024


def _reason(v: Violations, reason: str, *, required: bool = False) -> None:
    if required:
        v.require("reason", reason.strip())
    if len(reason) > _REASON_MAX:
        v.add("reason", f"reason must be at most {_REASON_MAX} characters", "TOO_LONG")


class OrchestratorServicer(orchestrator_service_pb2_grpc.OrchestratorServiceServicer):
    """``overture.orchestrator.v1.OrchestratorService``."""

    def __init__(self, *, journeys: JourneyStore, runs: RunStore, starter: Starter, idempotency: Idempotency) -> None:
        self._journeys = journeys
        self._runs = runs
        self._starter = starter
        self._idempotency = idempotency

    async def Trigger(self, request: O.TriggerRequest, context: grpc.aio.ServicerContext) -> O.TriggerResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "journey", request.journey)
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id, required=False)
        check_struct(v, "context", request.context, max_bytes=_CONTEXT_MAX)
        v.raise_if_any("the trigger is invalid")
        run_id = await self._starter.trigger(tenant, journey=request.journey, subject_id=request.subject_id,
                                             context=request.context, request_id=request.request_id)
        return O.TriggerResponse(run=await self._runs.get(tenant, run_id))

    async def Enqueue(self, request: O.EnqueueRequest, context: grpc.aio.ServicerContext) -> O.EnqueueResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id)
        check_name(v, "rule_set", request.rule_set)
        if request.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add("channel", "channel is required", "REQUIRED")
        if not (request.template.text_body or request.template.html_body or request.template.data.fields):
            v.add("template", "template needs a body", "REQUIRED")
        check_struct(v, "context", request.context, max_bytes=_CONTEXT_MAX)
        v.raise_if_any("the message is invalid")
        spec = journey_pb2.JourneySpec(
            trigger=journey_pb2.JourneyTrigger(manual=journey_pb2.ManualTrigger()), rule_set=request.rule_set,
            templates={"message": request.template},
            steps=[journey_pb2.Step(id="send", send=journey_pb2.SendStep(
                channel=request.channel, template="message", category=request.category, tags=request.tags,
                priority=request.priority, to=f"{{% raw %}}{request.to}{{% endraw %}}" if request.to else ""))],
        )
        run_id = await self._starter.enqueue(tenant, spec=spec, subject_id=request.subject_id, context=request.context,
                                             request_id=request.request_id)
        return O.EnqueueResponse(run=await self._runs.get(tenant, run_id))

    async def ReportDeliveryStatus(self, request: O.ReportDeliveryStatusRequest, context: grpc.aio.ServicerContext) -> O.ReportDeliveryStatusResponse:
        current_principal()
        raise Unimplemented("ReportDeliveryStatus is not built yet", reason="NOT_BUILT")

    async def PublishJourney(self, request: O.PublishJourneyRequest, context: grpc.aio.ServicerContext) -> O.PublishJourneyResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "name", request.name)
        _reason(v, request.reason)
        check_identifier(v, "request_id", request.request_id, required=False)
        if not request.HasField("spec"):
            v.add("spec", "spec is required", "REQUIRED")
        v.raise_if_any("the journey is invalid")

        async def publish() -> O.PublishJourneyResponse:
            journey, unchanged = await self._journeys.publish(
                tenant=principal.tenant, name=request.name, spec=request.spec, reason=request.reason or "published", author=principal.name
            )
            return O.PublishJourneyResponse(journey=journey, unchanged=unchanged)

        return await self._idempotency.run(tenant=principal.tenant, method="PublishJourney", request_id=request.request_id,
                                           request=request, response_type=O.PublishJourneyResponse, compute=publish)

    async def GetJourney(self, request: O.GetJourneyRequest, context: grpc.aio.ServicerContext) -> O.GetJourneyResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        if request.version < 0:
            v.add("version", "version must not be negative", "OUT_OF_RANGE")
        v.raise_if_any()
        return O.GetJourneyResponse(journey=await self._journeys.get(tenant=tenant, name=request.name, version=request.version))

    async def ListJourneys(self, request: O.ListJourneysRequest, context: grpc.aio.ServicerContext) -> O.ListJourneysResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size)
        v.raise_if_any()
        after = str(decode_page_token(request.page_token).get("after", ""))
        found = await self._journeys.list(tenant=tenant, after=after, limit=size + 1)
        token = encode_page_token({"after": found[size - 1].name}) if len(found) > size else ""
        return O.ListJourneysResponse(journeys=found[:size], next_page_token=token)

    async def PauseJourney(self, request: O.PauseJourneyRequest, context: grpc.aio.ServicerContext) -> O.PauseJourneyResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        _reason(v, request.reason)
        v.raise_if_any()
        journey = await self._journeys.set_state(tenant=tenant, name=request.name, state="paused")
        log.info("journey.paused", journey=request.name)
        return O.PauseJourneyResponse(journey=journey)

    async def ResumeJourney(self, request: O.ResumeJourneyRequest, context: grpc.aio.ServicerContext) -> O.ResumeJourneyResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        _reason(v, request.reason)
        v.raise_if_any()
        journey = await self._journeys.set_state(tenant=tenant, name=request.name, state="active")
        log.info("journey.resumed", journey=request.name)
        return O.ResumeJourneyResponse(journey=journey)

    async def GetRun(self, request: O.GetRunRequest, context: grpc.aio.ServicerContext) -> O.GetRunResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        v.raise_if_any()
        return O.GetRunResponse(run=await self._runs.get(tenant, request.run_id))

    async def ListRuns(self, request: O.ListRunsRequest, context: grpc.aio.ServicerContext) -> O.ListRunsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "journey", request.journey, required=False)
        check_identifier(v, "subject_id", request.subject_id, required=False)
        check_identifier(v, "trigger_event_id", request.trigger_event_id, required=False)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        before = decode_page_token(request.page_token).get("before")
        found = await self._runs.list(tenant=tenant, journey=request.journey, subject_id=request.subject_id,
                                      trigger_event_id=request.trigger_event_id, limit=size + 1, before=before)
        token = encode_page_token({"before": found[size - 1].run_id}) if len(found) > size else ""
        return O.ListRunsResponse(runs=found[:size], next_page_token=token)

    async def CancelRun(self, request: O.CancelRunRequest, context: grpc.aio.ServicerContext) -> O.CancelRunResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        _reason(v, request.reason)
        v.raise_if_any()
        run = await self._runs.get(tenant, request.run_id)
        if await self._runs.cancel(tenant, request.run_id):
            log.info("run.cancelled", run_id=request.run_id)
            run = await self._runs.get(tenant, request.run_id)
        return O.CancelRunResponse(run=run)

    async def RetryRun(self, request: O.RetryRunRequest, context: grpc.aio.ServicerContext) -> O.RetryRunResponse:
        current_principal()
        raise Unimplemented("RetryRun is not built yet", reason="NOT_BUILT")

    async def DecideApproval(self, request: O.DecideApprovalRequest, context: grpc.aio.ServicerContext) -> O.DecideApprovalResponse:
        current_principal()
        raise Unimplemented("approval steps are not built yet", reason="NOT_BUILT")

    async def ListDeadLetters(self, request: O.ListDeadLettersRequest, context: grpc.aio.ServicerContext) -> O.ListDeadLettersResponse:
        current_principal()
        raise Unimplemented("ListDeadLetters is not built yet", reason="NOT_BUILT")

    async def RedriveDeadLetters(self, request: O.RedriveDeadLettersRequest, context: grpc.aio.ServicerContext) -> O.RedriveDeadLettersResponse:
        current_principal()
        raise Unimplemented("RedriveDeadLetters is not built yet", reason="NOT_BUILT")

    async def PreviewJourney(self, request: O.PreviewJourneyRequest, context: grpc.aio.ServicerContext) -> O.PreviewJourneyResponse:
        current_principal()
        raise Unimplemented("PreviewJourney is not built yet", reason="NOT_BUILT")
