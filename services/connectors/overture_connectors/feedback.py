"""Bounce and complaint intake: a report (:mod:`.bounce_reports`) finds its
delivery by Message-ID and is reported to the orchestrator, which
suppresses the subject for a hard bounce or a complaint (the one path every
delivery status takes, ``ReportDeliveryStatus``) and emits
``email.bounced`` / ``email.complained``.

A report is acknowledged only once the orchestrator has it: over SMTP a
failure answers 451, and the reporting server sends it again; over RPC it
is UNAVAILABLE with a retry delay. The orchestrator applies a repeated
report once, so a report taken twice changes nothing. A report about no
known delivery, or about a send that was not a journey's (no run to
report to), is logged and acknowledged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
import structlog

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
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
                 settings: Settings) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._settings = settings

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
                raise Unavailable("the orchestrator could not take the report; send it again", reason="DOWNSTREAM_UNAVAILABLE",
                                  retry_after=dt.timedelta(seconds=5)) from None
            # NOT_FOUND: not a journey send; anything else the orchestrator refuses for good.
            log.warning("feedback.not_reported", tenant=row.tenant, delivery_id=row.delivery_id, code=error.code().name)
        if report.kind in _RECORDED:
            await self._store.mark(row.tenant, row.idempotency_key, _RECORDED[report.kind])
        log.info("feedback.taken", tenant=row.tenant, delivery_id=row.delivery_id, kind=report.kind.value, detail=report.detail)
        return Taken(report, row.delivery_id)
