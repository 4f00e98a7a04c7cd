"""The orchestrator's gRPC servicer: validation and translation only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import grpc
import structlog

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime import FailedPrecondition, Violations, current_principal
from overture_runtime.clock import EPOCH, Clock
from overture_runtime.idempotency import Idempotency
from overture_runtime.validation import (
    check_identifier,
    check_name,
    check_profile,
    check_reason,
    check_struct,
    decode_page_token,
    encode_page_token,
    page_size,
    to_proto_violations,
)

from .approvals import Approvals
from .backtests import Backtests
from .catalogue import step_types
from .deadletters import DeadLetters, PoisonEntry
from .drafts import Drafts
from .feedback import DeliveryFeedback
from .journeys import JourneyStore
from .lifecycle import LifecycleRpcs
from .migrator import RunMigrator
from .model import RunState
from .preview import Previewer
from .replays import Replayer
from .retries import Retrier
from .runs import RetryRefusal, RunStore
from .starter import Starter

__all__ = ["OrchestratorServicer"]

log = structlog.get_logger("overture.orchestrator")
OS = orchestrator_service_pb2
_CONTEXT_MAX = 32 * 1024
_RUN_STATES = {state.proto: state.value for state in RunState}


def _to_latest(v: Violations, value: int) -> bool:
    """Whether a journey_version_policy moves runs to the latest version (unspecified is PINNED)."""
    if value not in OS.JourneyVersionPolicy.values():
        v.add("journey_version_policy", f"unknown journey_version_policy {value}", "INVALID_ENUM")
    return value == OS.JOURNEY_VERSION_POLICY_LATEST


class OrchestratorServicer(LifecycleRpcs, orchestrator_service_pb2_grpc.OrchestratorServiceServicer):
    """``overture.orchestrator.v1.OrchestratorService`` (the lifecycle RPCs are in :mod:`.lifecycle`)."""

    def __init__(
        self, *, journeys: JourneyStore, runs: RunStore, starter: Starter, idempotency: Idempotency, feedback: DeliveryFeedback,
        retrier: Retrier, audited: Callable[[str], Awaitable[None]], previewer: Previewer, dead_letters: DeadLetters,
        approvals: Approvals, stats: Callable[[str, str, int, journey_pb2.JourneySpec], Awaitable[OS.JourneyStats]],
        drafts: Drafts, migrator: RunMigrator, backtests: Backtests, replayer: Replayer, clock: Clock,
    ) -> None:
        self._backtests = backtests
        self._replayer = replayer
        self._clock = clock
        self._approvals = approvals
        self._stats = stats
        self._drafts = drafts
        self._migrator = migrator
        self._dead_letters = dead_letters
        self._previewer = previewer
        self._feedback = feedback
        self._journeys = journeys
        self._runs = runs
        self._starter = starter
        self._idempotency = idempotency
        self._retrier = retrier
        self._audited = audited

    async def Trigger(self, request: OS.TriggerRequest, context: grpc.aio.ServicerContext) -> OS.TriggerResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "journey", request.journey)
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id, required=False)
        check_struct(v, "context", request.context, max_bytes=_CONTEXT_MAX)
        v.raise_if_any("the trigger is invalid")
        run_id = await self._starter.trigger(tenant, journey=request.journey, subject_id=request.subject_id,
                                             context=request.context, request_id=request.request_id)
        return OS.TriggerResponse(run=await self._runs.get(tenant, run_id))

    async def Enqueue(self, request: OS.EnqueueRequest, context: grpc.aio.ServicerContext) -> OS.EnqueueResponse:
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
        return OS.EnqueueResponse(run=await self._runs.get(tenant, run_id))

    async def ReportDeliveryStatus(self, request: OS.ReportDeliveryStatusRequest, context: grpc.aio.ServicerContext) -> OS.ReportDeliveryStatusResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "idempotency_key", request.idempotency_key)
        if request.idempotency_key and ":" not in request.idempotency_key:
            v.add("idempotency_key", "idempotency_key must be run_id:step_id", "INVALID")
        check_identifier(v, "delivery_id", request.delivery_id, required=False)
        if request.status in (messaging_pb2.DELIVERY_STATUS_UNSPECIFIED, messaging_pb2.DELIVERY_STATUS_SENDING):
            v.add("status", "status must be a reported outcome such as DELIVERED or BOUNCED", "REQUIRED")
        elif request.status not in messaging_pb2.DeliveryStatus.values():
            v.add("status", f"unknown status {request.status}", "INVALID_ENUM")
        if len(request.detail) > 2000:
            v.add("detail", "detail must be at most 2000 characters", "TOO_LONG")
        v.raise_if_any("the delivery report is invalid")
        await self._feedback.report(
            tenant, idempotency_key=request.idempotency_key, delivery_id=request.delivery_id, status=request.status, detail=request.detail,
            occur_time=request.occur_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("occur_time") else None,
            soft_bounce=request.bounce_kind == messaging_pb2.BOUNCE_KIND_SOFT,
        )
        return OS.ReportDeliveryStatusResponse()

    async def PublishJourney(self, request: OS.PublishJourneyRequest, context: grpc.aio.ServicerContext) -> OS.PublishJourneyResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "name", request.name)
        check_reason(v, request.reason, required=False)
        check_identifier(v, "request_id", request.request_id, required=False)
        if not request.HasField("spec"):
            v.add("spec", "spec is required", "REQUIRED")
        v.raise_if_any("the journey is invalid")

        async def publish() -> OS.PublishJourneyResponse:
            journey, unchanged, warnings = await self._journeys.publish(
                tenant=principal.tenant, name=request.name, spec=request.spec, reason=request.reason or "published", author=principal.name
            )
            return OS.PublishJourneyResponse(journey=journey, unchanged=unchanged, warnings=to_proto_violations(warnings))

        return await self._idempotency.run(tenant=principal.tenant, method="PublishJourney", request_id=request.request_id,
                                           request=request, response_type=OS.PublishJourneyResponse, compute=publish)

    async def GetJourney(self, request: OS.GetJourneyRequest, context: grpc.aio.ServicerContext) -> OS.GetJourneyResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        if request.version < 0:
            v.add("version", "version must not be negative", "OUT_OF_RANGE")
        v.raise_if_any()
        return OS.GetJourneyResponse(journey=await self._journeys.get(tenant=tenant, name=request.name, version=request.version))

    async def ListJourneys(self, request: OS.ListJourneysRequest, context: grpc.aio.ServicerContext) -> OS.ListJourneysResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size)
        v.raise_if_any()
        after = str(decode_page_token(request.page_token, after=str).get("after", ""))
        found = await self._journeys.list_latest(tenant=tenant, after=after, limit=size + 1)
        token = encode_page_token({"after": found[size - 1].name}) if len(found) > size else ""
        return OS.ListJourneysResponse(journeys=found[:size], next_page_token=token)

    async def PauseJourney(self, request: OS.PauseJourneyRequest, context: grpc.aio.ServicerContext) -> OS.PauseJourneyResponse:
        principal = current_principal()
        tenant = principal.tenant
        v = Violations()
        check_name(v, "name", request.name)
        check_reason(v, request.reason, required=False)
        v.raise_if_any()
        journey = await self._journeys.set_state(tenant=tenant, name=request.name, state="paused", actor=principal.name, reason=request.reason)
        # Pausing cancels the live runs and so their pending timers.
        cancelled = await self._runs.cancel_journey(tenant, request.name, reason=f"journey paused: {request.reason}".removesuffix(": "))
        log.info("journey.paused", journey=request.name, cancelled_runs=cancelled)
        return OS.PauseJourneyResponse(journey=journey)

    async def ResumeJourney(self, request: OS.ResumeJourneyRequest, context: grpc.aio.ServicerContext) -> OS.ResumeJourneyResponse:
        principal = current_principal()
        tenant = principal.tenant
        v = Violations()
        check_name(v, "name", request.name)
        check_reason(v, request.reason, required=False)
        v.raise_if_any()
        journey = await self._journeys.set_state(tenant=tenant, name=request.name, state="active", actor=principal.name, reason=request.reason)
        log.info("journey.resumed", journey=request.name)
        return OS.ResumeJourneyResponse(journey=journey)

    async def GetRun(self, request: OS.GetRunRequest, context: grpc.aio.ServicerContext) -> OS.GetRunResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        v.raise_if_any()
        return OS.GetRunResponse(run=await self._runs.get(tenant, request.run_id))

    async def ListRuns(self, request: OS.ListRunsRequest, context: grpc.aio.ServicerContext) -> OS.ListRunsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "journey", request.journey, required=False)
        check_identifier(v, "subject_id", request.subject_id, required=False)
        check_identifier(v, "trigger_event_id", request.trigger_event_id, required=False)
        state = ""
        if request.state:
            if request.state not in _RUN_STATES:
                v.add("state", f"unknown state {request.state}", "INVALID_ENUM")
            else:
                state = _RUN_STATES[request.state]
        start = request.start_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            v.add("end_time", "end_time must be after start_time", "OUT_OF_RANGE")
        size = page_size(v, request.page_size)
        v.raise_if_any()
        before = decode_page_token(request.page_token, before=str).get("before")
        found = await self._runs.list_runs(tenant=tenant, journey=request.journey, subject_id=request.subject_id,
                                           trigger_event_id=request.trigger_event_id, limit=size + 1, before=before, state=state,
                                           start=start, end=end)
        token = encode_page_token({"before": found[size - 1].run_id}) if len(found) > size else ""
        return OS.ListRunsResponse(runs=found[:size], next_page_token=token)

    async def CancelRun(self, request: OS.CancelRunRequest, context: grpc.aio.ServicerContext) -> OS.CancelRunResponse:
        principal = current_principal()
        tenant = principal.tenant
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        check_reason(v, request.reason, required=False)
        v.raise_if_any()
        run = await self._runs.get(tenant, request.run_id)
        if await self._runs.cancel(tenant, request.run_id, actor=principal.name, reason=request.reason):
            log.info("run.cancelled", run_id=request.run_id)
            await self._audited(tenant)
            run = await self._runs.get(tenant, request.run_id)
        return OS.CancelRunResponse(run=run)

    async def RetryRun(self, request: OS.RetryRunRequest, context: grpc.aio.ServicerContext) -> OS.RetryRunResponse:
        principal = current_principal()
        tenant = principal.tenant
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        check_reason(v, request.reason, required=False)
        to_latest = _to_latest(v, request.journey_version_policy)
        v.raise_if_any()
        refusal = await self._retrier.retry(tenant, request.run_id, to_latest=to_latest, actor=principal.name, reason=request.reason)
        if refusal is not None:
            raise FailedPrecondition(refusal.description, reason=refusal.reason)
        log.info("run.retried", run_id=request.run_id, to_latest=to_latest)
        await self._audited(tenant)
        return OS.RetryRunResponse(run=await self._runs.get(tenant, request.run_id))

    async def DecideApproval(self, request: OS.DecideApprovalRequest, context: grpc.aio.ServicerContext) -> OS.DecideApprovalResponse:
        principal = current_principal()
        v = Violations()
        check_identifier(v, "run_id", request.run_id)
        check_name(v, "step_id", request.step_id)
        check_reason(v, request.reason)
        v.raise_if_any("the decision is invalid")
        await self._approvals.decide(principal.tenant, run_id=request.run_id, step_id=request.step_id, approve=request.approve,
                                     reason=request.reason, actor=principal.name, roles=principal.roles)
        await self._audited(principal.tenant)
        return OS.DecideApprovalResponse(run=await self._runs.get(principal.tenant, request.run_id))

    async def ListDeadLetters(self, request: OS.ListDeadLettersRequest, context: grpc.aio.ServicerContext) -> OS.ListDeadLettersResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "journey", request.journey, required=False)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        if request.kind == OS.DEAD_LETTER_KIND_EVENT:
            after = decode_page_token(request.page_token, after=str).get("after", "")
            entries = await self._dead_letters.poison(tenant, limit=size + 1, after=after)
            token = encode_page_token({"after": entries[size - 1].entry_id}) if len(entries) > size else ""
            return OS.ListDeadLettersResponse(poison_events=[_poison_proto(e) for e in entries[:size]], next_page_token=token)
        before = decode_page_token(request.page_token, before=str).get("before")
        found = await self._runs.list_runs(tenant=tenant, journey=request.journey, state="failed", limit=size + 1, before=before)
        token = encode_page_token({"before": found[size - 1].run_id}) if len(found) > size else ""
        return OS.ListDeadLettersResponse(runs=found[:size], next_page_token=token)

    async def RedriveDeadLetters(self, request: OS.RedriveDeadLettersRequest, context: grpc.aio.ServicerContext) -> OS.RedriveDeadLettersResponse:
        principal = current_principal()
        tenant = principal.tenant
        v = Violations()
        check_name(v, "journey", request.journey, required=False)
        if not request.run_ids and not request.journey and not request.entry_ids:
            v.add("run_ids", "name the runs, a journey to re-drive all of its dead letters, or poison entry_ids", "REQUIRED")
        for field in ("run_ids", "entry_ids"):
            if len(getattr(request, field)) > 1000:
                v.add(field, f"at most 1000 {field} per call", "TOO_MANY")
        for i, run_id in enumerate(request.run_ids):
            check_identifier(v, f"run_ids[{i}]", run_id)
        for i, entry_id in enumerate(request.entry_ids):
            check_identifier(v, f"entry_ids[{i}]", entry_id)
        check_reason(v, request.reason, required=False)
        to_latest = _to_latest(v, request.journey_version_policy)
        v.raise_if_any("the re-drive is invalid")
        redriven, refused = 0, list[tuple[str, RetryRefusal]]()
        if request.run_ids or request.journey:
            redriven, refused = await self._retrier.redrive(
                tenant, run_ids=request.run_ids, journey=request.journey, to_latest=to_latest, actor=principal.name, reason=request.reason)
        poison_redriven, poison_refused = 0, list[tuple[str, str, str]]()
        if request.entry_ids:
            poison_redriven, poison_refused = await self._dead_letters.redrive_poison(tenant, request.entry_ids, self._starter.on_events)
        log.info("dead_letters.redriven", count=redriven + poison_redriven, refused=len(refused) + len(poison_refused),
                 journey=request.journey or None, to_latest=to_latest)
        if redriven:
            await self._audited(tenant)
        return OS.RedriveDeadLettersResponse(redriven_count=redriven + poison_redriven, rejections=[
            *(OS.RedriveRejection(run_id=run_id, description=r.description, reason=r.reason) for run_id, r in refused),
            *(OS.RedriveRejection(entry_id=entry_id, description=why, reason=reason) for entry_id, reason, why in poison_refused)])

    async def PreviewJourney(self, request: OS.PreviewJourneyRequest, context: grpc.aio.ServicerContext) -> OS.PreviewJourneyResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name, required=False)
        if request.name and request.HasField("spec"):
            v.add("spec", "give a journey's name or a spec, not both", "CONFLICT")
        elif not request.name and not request.HasField("spec"):
            v.add("name", "give a journey's name, or a spec to preview", "REQUIRED")
        check_identifier(v, "subject_id", request.subject_id)
        check_struct(v, "attributes", request.attributes, max_bytes=_CONTEXT_MAX)
        if request.HasField("profile"):
            check_profile(v, "profile", request.profile, subject_id=request.subject_id)
        v.raise_if_any("the preview is invalid")
        return await self._previewer.preview(tenant, name=request.name, spec=request.spec if request.HasField("spec") else None,
                                             subject_id=request.subject_id, attributes=request.attributes,
                                             profile=request.profile if request.HasField("profile") else None)

    async def ListApprovals(self, request: OS.ListApprovalsRequest, context: grpc.aio.ServicerContext) -> OS.ListApprovalsResponse:
        tenant = current_principal().tenant
        v = Violations()
        if request.journey:
            check_name(v, "journey", request.journey)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        cursor = decode_page_token(request.page_token, after=str, at=int)
        after = (EPOCH + dt.timedelta(microseconds=cursor["at"]), cursor["after"]) if cursor else None
        found = await self._approvals.pending(tenant, journey=request.journey, limit=size + 1, after=after)
        response = OS.ListApprovalsResponse()
        for item in found[:size]:
            approval = response.approvals.add(run_id=item.run_id, step_id=item.step_id, journey=item.journey,
                                              journey_version=item.journey_version, subject_id=item.subject_id,
                                              approver_role=item.approver_role, message=item.message)
            approval.request_time.FromDatetime(item.request_time)
            approval.expire_time.FromDatetime(item.expire_time)
        if len(found) > size:
            last = found[size - 1]
            response.next_page_token = encode_page_token(
                {"after": last.run_id, "at": (last.request_time - EPOCH) // dt.timedelta(microseconds=1)})
        return response

    async def StartJourneyBacktest(self, request: OS.StartJourneyBacktestRequest, context: grpc.aio.ServicerContext) -> OS.StartJourneyBacktestResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        if not request.HasField("start_time"):
            v.add("start_time", "start_time is required", "REQUIRED")
        elif request.HasField("end_time") and request.end_time.ToDatetime() <= request.start_time.ToDatetime():
            v.add("end_time", "end_time must be after start_time", "OUT_OF_RANGE")
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any("the backtest is invalid")

        async def start() -> OS.StartJourneyBacktestResponse:
            return OS.StartJourneyBacktestResponse(backtest=await self._backtests.start(
                tenant, name=request.name, spec=request.spec if request.HasField("spec") else None,
                start=request.start_time.ToDatetime(tzinfo=dt.UTC),
                end=request.end_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("end_time") else None))

        return await self._idempotency.run(tenant=tenant, method="StartJourneyBacktest", request_id=request.request_id, request=request,
                                           response_type=OS.StartJourneyBacktestResponse, compute=start)

    async def GetJourneyBacktest(self, request: OS.GetJourneyBacktestRequest, context: grpc.aio.ServicerContext) -> OS.GetJourneyBacktestResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "backtest_id", request.backtest_id)
        v.raise_if_any()
        return OS.GetJourneyBacktestResponse(backtest=await self._backtests.get(tenant, request.backtest_id))

    async def ReplayEvents(self, request: OS.ReplayEventsRequest, context: grpc.aio.ServicerContext) -> OS.ReplayEventsResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "journey", request.journey)
        if not request.HasField("start_time"):
            v.add("start_time", "start_time is required", "REQUIRED")
        elif request.HasField("end_time") and request.end_time.ToDatetime() <= request.start_time.ToDatetime():
            v.add("end_time", "end_time must be after start_time", "OUT_OF_RANGE")
        check_reason(v, request.reason)
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any("the replay is invalid")

        async def replay() -> OS.ReplayEventsResponse:
            done = await self._replayer.replay(
                principal.tenant, journey=request.journey, start=request.start_time.ToDatetime(tzinfo=dt.UTC),
                end=request.end_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("end_time") else self._clock.now(),
                reason=request.reason, actor=principal.name)
            return OS.ReplayEventsResponse(events_read=done.events_read, runs_started=done.runs_started)

        return await self._idempotency.run(tenant=principal.tenant, method="ReplayEvents", request_id=request.request_id, request=request,
                                           response_type=OS.ReplayEventsResponse, compute=replay)

    async def GetJourneyStats(self, request: OS.GetJourneyStatsRequest, context: grpc.aio.ServicerContext) -> OS.GetJourneyStatsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "name", request.name)
        if request.version < 0:
            v.add("version", "version must not be negative", "OUT_OF_RANGE")
        v.raise_if_any()
        journey = await self._journeys.get(tenant=tenant, name=request.name, version=request.version)
        return OS.GetJourneyStatsResponse(stats=await self._stats(tenant, request.name, request.version, journey.spec))

    async def ListStepTypes(self, request: OS.ListStepTypesRequest, context: grpc.aio.ServicerContext) -> OS.ListStepTypesResponse:
        current_principal()
        return step_types()


def _poison_proto(entry: PoisonEntry) -> OS.PoisonEvent:
    found = OS.PoisonEvent(entry_id=entry.entry_id, stream_entry_id=entry.stream_entry, attempts=entry.attempts,
                           last_error=entry.last_error)
    if entry.event is not None:
        found.event.CopyFrom(entry.event)
    found.create_time.FromDatetime(entry.create_time)
    return found
