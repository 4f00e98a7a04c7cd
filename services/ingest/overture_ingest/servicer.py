"""The ingest service's gRPC servicer: validation and translation only."""

from __future__ import annotations

import datetime as dt

import grpc
import structlog

from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc, ingested_event_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime import NotFound, Violations, current_principal
from overture_runtime.clients import call_metadata
from overture_runtime.clock import EPOCH, Clock
from overture_runtime.config import Settings
from overture_runtime.validation import (
    check_batch,
    check_identifier,
    decode_page_token,
    encode_page_token,
    page_size,
    to_proto_violations,
)

from .log import EventLog, StoredEvent
from .pipeline import ACCEPTED, DUPLICATE, IngestPipeline
from .windows import list_window

__all__ = ["BATCH_MAX", "IngestServicer"]

log = structlog.get_logger("overture.ingest")
IS = ingest_service_pb2
BATCH_MAX = 1000
_LIST_TYPES_MAX = 20
_STATUS = {ACCEPTED: IS.EVENT_RESULT_STATUS_ACCEPTED, DUPLICATE: IS.EVENT_RESULT_STATUS_DUPLICATE}


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """``overture.ingest.v1.IngestService``."""

    def __init__(
        self, *, pipeline: IngestPipeline, log_: EventLog, settings: Settings,
        orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub | None, clock: Clock,
    ) -> None:
        self._clock = clock
        self._pipeline = pipeline
        self._log = log_
        self._settings = settings
        self._orchestrator = orchestrator

    async def IngestEvents(self, request: IS.IngestEventsRequest, context: grpc.aio.ServicerContext) -> IS.IngestEventsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_batch(v, "events", request.events, maximum=BATCH_MAX)
        v.raise_if_any("the batch is invalid")
        outcomes = await self._pipeline.ingest(tenant, request.events, source="grpc")
        response = IS.IngestEventsResponse()
        results = response.results
        for i, o in enumerate(outcomes):
            result = results.add(index=i, event_id=o.event_id, status=_STATUS.get(o.status, IS.EVENT_RESULT_STATUS_REJECTED))
            if o.violations:
                result.violations.extend(to_proto_violations(o.violations))
        return response

    async def GetEvent(self, request: IS.GetEventRequest, context: grpc.aio.ServicerContext) -> IS.GetEventResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "event_id", request.event_id)
        v.raise_if_any()
        stored = await self._log.get(tenant, request.event_id)
        if stored is None:
            raise NotFound(f"no accepted event with id {request.event_id!r}", reason="EVENT_NOT_FOUND")
        result = _ingested(stored)
        if self._orchestrator is not None and stored.published:
            try:
                runs = await self._orchestrator.ListRuns(
                    orchestrator_service_pb2.ListRunsRequest(trigger_event_id=request.event_id, page_size=100),
                    metadata=call_metadata(self._settings, tenant), timeout=self._settings.rpc_timeout_seconds,
                )
                result.run_ids.extend(r.run_id for r in runs.runs)
            except grpc.aio.AioRpcError as error:  # the event itself is still the answer
                log.warning("ingest.run_lookup_failed", code=error.code().name)
        return IS.GetEventResponse(event=result)

    async def ListEvents(self, request: IS.ListEventsRequest, context: grpc.aio.ServicerContext) -> IS.ListEventsResponse:
        tenant = current_principal().tenant
        v = Violations()
        if not request.HasField("start_time"):
            v.add("start_time", "start_time is required", "REQUIRED")
        start = request.start_time.ToDatetime(tzinfo=dt.UTC)
        end = request.end_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("end_time") else self._clock.now()
        if request.HasField("start_time") and request.HasField("end_time") and end <= start:
            v.add("end_time", "end_time must be after start_time", "OUT_OF_RANGE")
        if len(request.event_types) > _LIST_TYPES_MAX:
            v.add("event_types", f"at most {_LIST_TYPES_MAX} event types", "TOO_MANY")
        for i, event_type in enumerate(request.event_types):
            if not event_type.strip():
                v.add(f"event_types[{i}]", "an event type must not be empty", "REQUIRED")
        check_identifier(v, "subject_id", request.subject_id, required=False)
        size = page_size(v, request.page_size, default=100, maximum=1000)
        v.raise_if_any("the listing is invalid")
        cursor = decode_page_token(request.page_token, at=int, seq=int)
        after = (EPOCH + dt.timedelta(microseconds=cursor["at"]), cursor["seq"]) if cursor else None
        found = await list_window(self._log.db, tenant=tenant, start=start, end=end, event_types=request.event_types,
                                  subject_id=request.subject_id, after=after, limit=size + 1)
        token = ""
        if len(found) > size:
            last, seq = found[size - 1]
            token = encode_page_token({"at": (last.commit_time - EPOCH) // dt.timedelta(microseconds=1), "seq": seq})
        return IS.ListEventsResponse(events=[_ingested(stored) for stored, _ in found[:size]], next_page_token=token)


def _ingested(stored: StoredEvent) -> ingested_event_pb2.IngestedEvent:
    """An accepted event and its state, as the API shows it."""
    result = ingested_event_pb2.IngestedEvent(
        event=stored.event, original_event_type=stored.original_event_type, partition=stored.partition,
        state=ingested_event_pb2.INGESTED_EVENT_STATE_PUBLISHED if stored.published else ingested_event_pb2.INGESTED_EVENT_STATE_COMMITTED,
    )
    result.commit_time.FromDatetime(stored.commit_time)
    if stored.published_at:
        result.publish_time.FromDatetime(stored.published_at)
    if stored.profile_applied_at:
        result.profile_apply_time.FromDatetime(stored.profile_applied_at)
    return result

