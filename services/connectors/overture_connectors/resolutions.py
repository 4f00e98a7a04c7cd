"""In-doubt deliveries: listed for operators, and settled by them.

A send whose provider may have taken the message, and cannot say (SMTP has
no status lookup), is IN_DOUBT and is never sent again automatically. An
operator who learns what happened (from the provider's console, the
recipient) settles it as SENT or FAILED. Settling sends nothing; a
delivery settled as FAILED is not sent again either: a new send needs a
new key. The settlement, its audit record (``AUDIT_ACTION_DELIVERY_RESOLVED``
through the audit outbox, ADR 0008) and its status report to the
orchestrator (:mod:`.reports`) are written in one transaction.

Listing reads the tenant's deliveries newest first by ``delivery_id``
(UUIDv7, so time-ordered) through the ``(tenant, delivery_id)`` unique
index, or, filtered on IN_DOUBT or SENDING, through the partial index that
holds only those rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from overture.rules.v1 import audit_event_pb2
from overture_runtime.audit_outbox import AuditForwarder, stage
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, NotFound

from . import reports
from .tables import audit_outbox, deliveries

__all__ = ["FILTERABLE", "RESOLUTIONS", "Resolutions"]

FILTERABLE = ("in_doubt", "sending")
"""The statuses ListDeliveries can filter on (the partial index holds them)."""
RESOLUTIONS = ("sent", "failed")
"""What an operator can settle an in-doubt delivery as."""


class Resolutions:
    """Lists and settles deliveries for operators."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator, *, audit: AuditForwarder | None = None,
                 reporter: reports.StatusReporter | None = None) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self._audit = audit
        self._reporter = reporter

    async def list(self, tenant: str, *, status: str = "", before: str = "", limit: int = 20) -> list[Any]:
        """Up to *limit* deliveries of *tenant*, newest first, older than the delivery id *before* when set."""
        t = deliveries
        where = t.c.tenant == tenant
        if status:
            assert status in FILTERABLE
            where &= t.c.status.in_(FILTERABLE) & (t.c.status == status)
        if before:
            where &= t.c.delivery_id < before
        async with self._db.connect() as conn:
            return list((await conn.execute(sa.select(t).where(where).order_by(t.c.delivery_id.desc()).limit(limit))).all())

    async def resolve(self, tenant: str, *, idempotency_key: str, resolution: str, reason: str, actor: str) -> Any:
        """Settle the IN_DOUBT delivery of *idempotency_key* as *resolution*; returns its row."""
        assert resolution in RESOLUTIONS
        t = deliveries
        now = self._clock.now()
        key = (t.c.tenant == tenant) & (t.c.idempotency_key == idempotency_key)
        async with self._db.begin() as conn:
            row = (await conn.execute(
                t.update().where(key & (t.c.status == "in_doubt"))
                .values(status=resolution, retryable=False, last_error=f"resolved as {resolution} by an operator", update_time=now,
                        next_check_time=None)
                .returning(*t.c)
            )).first()
            if row is None:
                current = (await conn.execute(sa.select(t.c.status).where(key))).first()
                if current is None:
                    raise NotFound("no such delivery", reason="DELIVERY_NOT_FOUND")
                raise FailedPrecondition(f"the delivery is {current.status.upper()}, not IN_DOUBT: only an in-doubt delivery can be resolved",
                                         reason="NOT_IN_DOUBT", metadata={"status": current.status.upper()})
            await stage(conn, table=audit_outbox, tenant=tenant, record_id=self._ids.new(),
                        action=audit_event_pb2.AUDIT_ACTION_DELIVERY_RESOLVED, actor=actor, time=now, reason=reason,
                        target=f"delivery:{row.delivery_id}",
                        details={"idempotency_key": idempotency_key, "connector": row.connector, "resolution": resolution})
            await reports.stage(conn, tenant=tenant, report_id=self._ids.new(), idempotency_key=idempotency_key,
                                delivery_id=row.delivery_id, status=resolution, detail=f"resolved by an operator: {reason}",
                                occur_time=now)
        if self._audit is not None:
            await self._audit.after_commit(tenant)
        if self._reporter is not None:
            await self._reporter.after_commit(tenant)
        return row
