"""The audit outbox: a service's changes, on their way to the audit log.

The audit log is the rules service's (guarantee 9: one hash chain per
tenant). A change and its audit record must not part: the change's
transaction also writes the record into the service's own outbox table
(:func:`audit_outbox_table`), with :func:`stage`, so a crash after the
commit loses nothing. The orchestrator (journey and run changes) and the
connectors service (operators' resolutions of in-doubt deliveries) each
have one. :class:`AuditForwarder` then sends pending
records to ``AuditService.RecordAuditEvents``, right after the commit and
from a background loop, and deletes each once the log holds it. The log
appends a record id once, so a record forwarded twice (a crash after the
send, two replicas, the loop racing the commit path) is appended once. See
ADR 0008.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import grpc
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import audit_event_pb2, audit_service_pb2, audit_service_pb2_grpc

from .clients import call_metadata
from .config import Settings
from .db import Database, JSONType, utc_datetime
from .protojson import struct_from_dict

__all__ = ["AuditForwarder", "audit_outbox_table", "stage"]

log = structlog.get_logger("overture.audit")
_BATCH = 100
_INTERVAL = 1.0
_COMMIT_PATH_TIMEOUT = 2.0


def audit_outbox_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    """The ``<prefix>_audit_outbox`` table in *metadata*."""
    return sa.Table(
        f"{prefix}_audit_outbox",
        metadata,
        # Audit records written in the change's own transaction and deleted
        # once the rules service's audit log holds them (ADR 0008).
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("time", utc_datetime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("details", JSONType, nullable=False),
        sa.Column("error", sa.Text, nullable=True),  # why the audit log refused the record; it is kept, not retried
        sa.Index(f"{prefix}_audit_outbox_pending", "record_id"),
    )


async def stage(
    conn: AsyncConnection, *, table: sa.Table, tenant: str, record_id: str, action: audit_event_pb2.AuditAction.ValueType, actor: str,
    time: dt.datetime, reason: str, target: str, details: Mapping[str, object],
) -> None:
    """Write one audit record inside the caller's transaction; it commits or
    rolls back with the change it records."""
    await conn.execute(table.insert().values(
        tenant=tenant, record_id=record_id, action=audit_event_pb2.AuditAction.Name(action), actor=actor[:256], time=time,
        reason=reason, target=target[:512], details={str(k): str(v) for k, v in details.items()},
    ))


class AuditForwarder:
    """Forwards staged records to the audit log. One per process; flushes
    are serialized so a tenant's records are sent in the order they were made."""

    def __init__(self, *, db: Database, table: sa.Table, audit: audit_service_pb2_grpc.AuditServiceStub, settings: Settings) -> None:
        self._db = db
        self._table = table
        self._audit = audit
        self._settings = settings
        self._lock = asyncio.Lock()

    async def flush(self, tenant: str | None = None, *, rpc_timeout: float | None = None) -> int:
        """Forward the pending records of *tenant* (every tenant when None),
        oldest first, until none are left; returns how many the log now
        holds. Raises ``grpc.aio.AioRpcError`` when the log cannot be reached;
        the records stay pending."""
        forwarded = 0
        async with self._lock:
            while True:
                rows = await self._pending(tenant)
                if not rows:
                    return forwarded
                by_tenant: dict[str, list[Any]] = {}
                for row in rows:
                    by_tenant.setdefault(row.tenant, []).append(row)
                for owner, batch in by_tenant.items():
                    forwarded += await self._send(owner, batch, rpc_timeout=rpc_timeout)
                if len(rows) < _BATCH:
                    return forwarded

    async def after_commit(self, tenant: str) -> None:
        """Forward *tenant*'s records right after a change commits, so the log
        shows it at once. A failure is logged and left to the loop: the change
        has committed and its record is safe in the outbox, so the caller's
        call must not fail for it."""
        try:
            await self.flush(tenant, rpc_timeout=_COMMIT_PATH_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            log.warning("audit.forward_deferred", code=error.code().name, detail=(error.details() or "")[:200])
        except Exception:  # the change has committed; the loop retries
            log.exception("audit.forward_deferred")

    async def run(self, stopping: asyncio.Event) -> None:
        """Forward pending records until *stopping* is set. An unreachable log
        is retried on the next tick; BaseApp.spawn restarts the loop on a bug."""
        while not stopping.is_set():
            try:
                await self.flush()
            except grpc.aio.AioRpcError as error:
                log.warning("audit.forward_failed", code=error.code().name, detail=(error.details() or "")[:200])
            try:
                await asyncio.wait_for(stopping.wait(), timeout=_INTERVAL)
            except TimeoutError:
                pass

    async def _pending(self, tenant: str | None) -> list[Any]:
        t = self._table
        query = sa.select(t).where(t.c.error.is_(None))
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        async with self._db.connect() as conn:
            return list((await conn.execute(query.order_by(t.c.record_id).limit(_BATCH))).all())

    async def _send(self, tenant: str, rows: list[Any], *, rpc_timeout: float | None) -> int:
        request = audit_service_pb2.RecordAuditEventsRequest()
        for row in rows:
            record = request.records.add(
                record_id=row.record_id, action=audit_event_pb2.AuditAction.Value(row.action), actor=row.actor,
                reason=row.reason, target=row.target, details=struct_from_dict(row.details),
            )
            record.time.FromDatetime(row.time)
        response = await self._audit.RecordAuditEvents(
            request, metadata=call_metadata(self._settings, tenant), timeout=rpc_timeout or self._settings.rpc_timeout_seconds)
        done: list[str] = []
        t = self._table
        async with self._db.begin() as conn:
            for row, result in zip(rows, response.results, strict=True):
                if result.sequence:
                    done.append(row.record_id)
                else:
                    # A record the log refuses will be refused again: keep it,
                    # visibly, instead of retrying it forever.
                    why = "; ".join(f"{v.field}: {v.description}" for v in result.violations) or "refused"
                    log.error("audit.record_refused", alert=True, record_id=row.record_id, action=row.action, error=why[:500])
                    await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.record_id == row.record_id)).values(error=why[:2000]))
            if done:
                await conn.execute(t.delete().where((t.c.tenant == tenant) & t.c.record_id.in_(done)))
        return len(done)
