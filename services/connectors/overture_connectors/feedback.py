"""Bounce and complaint intake: a report (:mod:`.bounce_reports`) finds its
delivery by Message-ID and is reported to the orchestrator, which
suppresses the subject for a hard bounce or a complaint (the one path every
delivery status takes, ``ReportDeliveryStatus``) and emits
``email.bounced`` / ``email.complained``.

A report about a send that was not a journey step (a direct ``Send``,
whose key names no run) has no run to report to: the orchestrator answers
that it knows no such step, and the report is applied here the same way,
through the same stubs the orchestrator uses: a hard bounce or a complaint
puts the subject on the ``hard-bounces`` or ``complaints`` suppression list
(the rules service's ``UpsertProfile``), and the report becomes an
``email.bounced`` or ``email.complained`` event (ingest's
``IngestEvents``, with an id derived from the delivery, so that a repeated
report is a duplicate).

A report is acknowledged only once it is applied: over SMTP a failure
answers 451, and the reporting server sends it again; over RPC it is
UNAVAILABLE with a retry delay. A repeated report changes nothing. A
report about no known delivery is logged and acknowledged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from overture.common.v1 import event_pb2, messaging_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.errors import Unavailable

from .bounce_reports import FeedbackKind, Report, parse_report
from .store import DeliveryStore

__all__ = ["FeedbackIntake", "Taken"]

log = structlog.get_logger("overture.connectors.feedback")
_STATUS = {
    FeedbackKind.HARD_BOUNCE: (messaging_pb2.DELIVERY_STATUS_BOUNCED, messaging_pb2.BOUNCE_KIND_HARD),
    FeedbackKind.SOFT_BOUNCE: (messaging_pb2.DELIVERY_STATUS_BOUNCED, messaging_pb2.BOUNCE_KIND_SOFT),
    FeedbackKind.COMPLAINT: (messaging_pb2.DELIVERY_STATUS_COMPLAINED, messaging_pb2.BOUNCE_KIND_UNSPECIFIED),
}
_RECORDED = {FeedbackKind.HARD_BOUNCE: "bounced", FeedbackKind.COMPLAINT: "complained"}
"""What the delivery row becomes; a soft bounce leaves it as it was."""
_SUPPRESS = {FeedbackKind.HARD_BOUNCE: "hard-bounces", FeedbackKind.COMPLAINT: "complaints"}
"""The suppression lists of the contract (``BounceKind``), as the orchestrator applies them to journey sends."""
_NOT_A_STEP = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
"""The orchestrator's answers for a key that names no run step."""
_RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
          grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@dataclass(frozen=True)
class Taken:
    """What became of one report."""

    report: Report | None
    """What the report says; None when it is not a bounce or complaint Overture can read."""
    delivery_id: str = ""
    """The delivery it is about; empty when none has its Message-ID."""


class FeedbackIntake:
    """Takes in reports; see the module docstring. Safe for concurrent use."""

    def __init__(self, *, store: DeliveryStore, orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub,
                 settings: Settings, profiles: profile_service_pb2_grpc.ProfileServiceStub | None = None,
                 ingest: ingest_service_pb2_grpc.IngestServiceStub | None = None) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._settings = settings
        self._profiles = profiles
        self._ingest = ingest

    async def take(self, raw: bytes) -> Taken:
        """Read *raw*, find its delivery and report it; raises :class:`Unavailable` when it must be sent again later."""
        report = parse_report(raw)
        if report is None:
            log.info("feedback.unreadable", size=len(raw))
            return Taken(None)
        row = await self._store.find_email(report.message_id)
        if row is None:
            log.info("feedback.no_delivery", kind=report.kind.value)
            return Taken(report)
        status, bounce_kind = _STATUS[report.kind]
        request = orchestrator_service_pb2.ReportDeliveryStatusRequest(
            idempotency_key=row.idempotency_key, delivery_id=row.delivery_id, status=status, detail=report.detail, bounce_kind=bounce_kind)
        try:
            await self._orchestrator.ReportDeliveryStatus(request, metadata=call_metadata(self._settings, row.tenant),
                                                         timeout=self._settings.rpc_timeout_seconds)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRY:
                raise _again("the orchestrator") from None
            if error.code() in _NOT_A_STEP:
                await self._apply_outside_journeys(row, report)
            else:  # the orchestrator refuses it for good
                log.warning("feedback.not_reported", tenant=row.tenant, delivery_id=row.delivery_id, code=error.code().name)
        if report.kind in _RECORDED:
            await self._store.mark(row.tenant, row.idempotency_key, _RECORDED[report.kind])
        log.info("feedback.taken", tenant=row.tenant, delivery_id=row.delivery_id, kind=report.kind.value, detail=report.detail)
        return Taken(report, row.delivery_id)

    async def _apply_outside_journeys(self, row: Any, report: Report) -> None:
        """Suppress and emit for a send that was no journey's step, as the orchestrator does for one that was."""
        metadata, timeout = call_metadata(self._settings, row.tenant), self._settings.rpc_timeout_seconds
        status = "complained" if report.kind == FeedbackKind.COMPLAINT else "bounced"
        soft = report.kind == FeedbackKind.SOFT_BOUNCE
        event = event_pb2.Event(event_id=f"delivery:{row.delivery_id}:{status}{'-soft' if soft else ''}", event_type=f"email.{status}",
                                subject_id=row.subject_id, source="overture.connectors")
        event.attributes.update({"delivery_id": row.delivery_id, "idempotency_key": row.idempotency_key, "status": status,
                                 "detail": report.detail[:500]})
        if status == "bounced":
            event.attributes["bounce"] = "soft" if soft else "hard"
        try:
            if report.kind in _SUPPRESS and self._profiles is not None:
                await self._profiles.UpsertProfile(profile_service_pb2.UpsertProfileRequest(
                    subject_id=row.subject_id, add_suppression_lists=[_SUPPRESS[report.kind]]), metadata=metadata, timeout=timeout)
            if self._ingest is not None:
                await self._ingest.IngestEvents(ingest_service_pb2.IngestEventsRequest(events=[event]), metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRY:
                raise _again("the rules or ingest service") from None
            log.warning("feedback.not_applied", tenant=row.tenant, delivery_id=row.delivery_id, code=error.code().name)
            return
        log.info("feedback.applied_outside_journeys", tenant=row.tenant, delivery_id=row.delivery_id, kind=report.kind.value)


def _again(who: str) -> Unavailable:
    return Unavailable(f"{who} could not take the report; send it again", reason="DOWNSTREAM_UNAVAILABLE",
                       retry_after=dt.timedelta(seconds=5))
