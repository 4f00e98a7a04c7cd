"""Statuses learned after a send, on their way to the orchestrator.

A delivery's status can change after ``Send`` answered: an operator
resolves an in-doubt delivery, a provider calls back (delivered, failed).
Each such change writes a report into ``connectors_status_outbox`` in the
change's own transaction (:func:`stage`); :class:`StatusReporter` sends the
reports to ``OrchestratorService.ReportDeliveryStatus`` right after the
commit and from a background loop, and deletes each once the orchestrator
has it, where it becomes an event (``email.delivered``, ``sms.failed``).
The orchestrator handles a repeated report once (its event id is the
delivery's and the status's), so a report sent twice changes nothing.

Only journey sends (keys ``run_id:step_id``) have a run to report to; a
report the orchestrator answers NOT_FOUND for (a key sent by another
internal caller) is dropped with a log line. One it refuses otherwise is
kept with its error, visibly, and not retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.db import Database

from .tables import status_outbox

__all__ = ["StatusReporter", "stage"]

log = structlog.get_logger("overture.connectors")
_BATCH = 100
_INTERVAL = 1.0
_COMMIT_PATH_TIMEOUT = 2.0
_RETRY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAUTHENTICATED})


async def stage(conn: AsyncConnection, *, tenant: str, report_id: str, idempotency_key: str, delivery_id: str, status: str,
                detail: str, occur_time: dt.datetime) -> None:
    """Write one status report inside the caller's transaction."""
    await conn.execute(status_outbox.insert().values(
        tenant=tenant, report_id=report_id, idempotency_key=idempotency_key, delivery_id=delivery_id, status=status,
        detail=detail[:1000], occur_time=occur_time,
    ))


class StatusReporter:
    """Forwards staged reports to ReportDeliveryStatus. One per process."""

    def __init__(self, *, db: Database, orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub, settings: Settings) -> None:
        self._db = db
        self._orchestrator = orchestrator
        self._settings = settings
        self._lock = asyncio.Lock()

    async def flush(self, tenant: str | None = None, *, rpc_timeout: float | None = None) -> int:
        """Report the pending statuses of *tenant* (every tenant when None), oldest first; returns how many are done."""
        done = 0
        async with self._lock:
            while True:
                rows = await self._pending(tenant)
                progress = 0
                for row in rows:
                    progress += await self._report(row, rpc_timeout=rpc_timeout)
                done += progress
                if len(rows) < _BATCH or not progress:  # the rest waits for the next tick
                    return done

    async def after_commit(self, tenant: str) -> None:
        """Report *tenant*'s statuses right after a change commits; a failure is left to the loop."""
        try:
            await self.flush(tenant, rpc_timeout=_COMMIT_PATH_TIMEOUT)
        except Exception:  # the change has committed; the loop retries
            log.exception("status.report_deferred")

    async def run(self, stopping: asyncio.Event) -> None:
        """Report pending statuses until *stopping* is set."""
        while not stopping.is_set():
            await self.flush()
            try:
                await asyncio.wait_for(stopping.wait(), timeout=_INTERVAL)
            except TimeoutError:
                pass

    async def _pending(self, tenant: str | None) -> list[Any]:
        t = status_outbox
        query = sa.select(t).where(t.c.error.is_(None))
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        async with self._db.connect() as conn:
            return list((await conn.execute(query.order_by(t.c.report_id).limit(_BATCH))).all())

    async def _report(self, row: Any, *, rpc_timeout: float | None) -> int:
        request = orchestrator_service_pb2.ReportDeliveryStatusRequest(
            delivery_id=row.delivery_id, idempotency_key=row.idempotency_key, detail=row.detail,
            status=messaging_pb2.DeliveryStatus.Value(f"DELIVERY_STATUS_{row.status.upper()}"),
        )
        request.occur_time.FromDatetime(row.occur_time)
        error = ""
        try:
            await self._orchestrator.ReportDeliveryStatus(request, metadata=call_metadata(self._settings, row.tenant),
                                                         timeout=rpc_timeout or self._settings.rpc_timeout_seconds)
        except grpc.aio.AioRpcError as failure:
            if failure.code() in _RETRY:
                log.warning("status.report_failed", code=failure.code().name, delivery_id=row.delivery_id)
                return 0
            if failure.code() == grpc.StatusCode.NOT_FOUND:
                log.info("status.not_a_journey_send", delivery_id=row.delivery_id, status=row.status)
            else:
                error = f"{failure.code().name}: {(failure.details() or '')[:500]}"
                log.error("status.report_refused", alert=True, delivery_id=row.delivery_id, error=error)
        t = status_outbox
        where = (t.c.tenant == row.tenant) & (t.c.report_id == row.report_id)
        async with self._db.begin() as conn:
            await conn.execute(t.update().where(where).values(error=error) if error else t.delete().where(where))
        return 1
