"""Approval gates: the pending queue, and decisions.

A run that reaches an approval step waits with a request row (who is asked,
the rendered message, when it expires). DecideApproval settles the request
and moves the token (RESUMED, due now) in one transaction, with the
decision in the run's context for the step to read and an audit record;
the step then takes its ``approved`` or ``rejected`` edge. Unanswered, the
step's timer fires at the expiry and the step rejects it itself, logged and
audited as automatic. Whichever comes first wins: a decision is refused
from the expiry on (whether or not a worker has run the timer yet), and
the expiry changes nothing once a decision is in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, NotFound, PermissionDenied

from .audit_outbox import stage
from .model import TokenState
from .recording import write_context
from .tables import approvals, tokens

__all__ = ["Approvals", "PendingApproval"]


@dataclass(frozen=True)
class PendingApproval:
    """One run waiting for a decision."""

    run_id: str
    step_id: str
    journey: str
    journey_version: int
    subject_id: str
    approver_role: str
    message: str
    request_time: dt.datetime
    expire_time: dt.datetime


class Approvals:
    """Approval requests of all tenants."""

    def __init__(self, db: Database, clock: Clock, ids: IdGenerator) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids

    async def decide(self, tenant: str, *, run_id: str, step_id: str, approve: bool, reason: str, actor: str,
                     roles: frozenset[str]) -> None:
        """Approve or reject a pending request; raises NotFound, PermissionDenied
        (the step asks a role the caller lacks) or FailedPrecondition (decided,
        or expired)."""
        now = self._clock.now()
        a = approvals
        key = (a.c.tenant == tenant) & (a.c.run_id == run_id) & (a.c.step_id == step_id)
        async with self._db.begin() as conn:
            row = (await conn.execute(sa.select(a).where(key).with_for_update())).first()
            if row is None:
                raise NotFound(f"run {run_id!r} has no approval at step {step_id!r}", reason="APPROVAL_NOT_FOUND")
            if row.approver_role and "*" not in roles and row.approver_role not in roles:
                raise PermissionDenied(f"this approval asks for the role {row.approver_role!r}", reason="APPROVER_ROLE_REQUIRED")
            if row.decision:
                raise FailedPrecondition(f"the approval was already {row.decision}", reason="APPROVAL_DECIDED")
            if now >= row.expire_time:  # its timer is due: the automatic rejection wins, even before a worker has run it
                raise FailedPrecondition(f"the approval expired at {row.expire_time.isoformat()}", reason="APPROVAL_EXPIRED")
            t = tokens
            moved = await conn.execute(t.update().where(
                (t.c.tenant == tenant) & (t.c.run_id == run_id) & (t.c.token == row.token) & (t.c.node == step_id)
                & (t.c.state == TokenState.WAITING.value) & t.c.lease_owner.is_(None)
            ).values(state=TokenState.RESUMED.value, due_time=now))
            if not moved.rowcount:
                raise FailedPrecondition("the approval has expired or its run has ended", reason="APPROVAL_EXPIRED")
            decision = "approved" if approve else "rejected"
            await conn.execute(a.update().where(key).values(decision=decision, decided_by=actor, reason=reason, decide_time=now))
            await write_context(conn, [dict(tenant=tenant, run_id=run_id, key=f"{step_id}.approval",
                                            value={"decision": decision, "by": actor, "reason": reason})])
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_APPROVAL_DECIDED, actor=actor,
                        time=now, reason=reason, target=f"run/{run_id}",
                        details={"journey": row.journey, "journey_version": row.journey_version, "step_id": step_id, "decision": decision})

    async def pending(self, tenant: str, *, journey: str, limit: int, after: tuple[dt.datetime, str] | None) -> list[PendingApproval]:
        """Pending requests, oldest first, after the (request time, run id) cursor."""
        a = approvals
        query = sa.select(a).where((a.c.tenant == tenant) & (a.c.decision == ""))
        if journey:
            query = query.where(a.c.journey == journey)
        if after is not None:
            query = query.where((a.c.request_time > after[0]) | ((a.c.request_time == after[0]) & (a.c.run_id > after[1])))
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(a.c.request_time, a.c.run_id).limit(limit))).all()
        return [PendingApproval(run_id=r.run_id, step_id=r.step_id, journey=r.journey, journey_version=r.journey_version,
                                subject_id=r.subject_id, approver_role=r.approver_role, message=r.message, request_time=r.request_time,
                                expire_time=r.expire_time) for r in rows]
