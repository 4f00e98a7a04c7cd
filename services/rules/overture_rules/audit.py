"""The tenant's append-only, hash-chained audit log.

Each entry's hash is the sha256 of the canonical JSON of all its other
fields, including the previous entry's hash; editing any stored entry breaks
the chain from that entry on, which :func:`verify_chain` reports.

The rules service appends its own changes (rule-set versions, profile
erasure) with :func:`append`, inside the change's transaction. Other
services' changes (journeys, runs) arrive through
``AuditService.RecordAuditEvents`` and are appended by :func:`record`,
once per record id, with their original actor, time and reason (ADR 0008).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import audit_event_pb2
from overture_runtime.audit_chain import entry_hash, verify_chain
from overture_runtime.db import Database
from overture_runtime.errors import Unavailable
from overture_runtime.protojson import struct_from_dict

from .tables import audit_events

__all__ = ["RECORDED_ACTIONS", "ExternalRecord", "append", "entry_hash", "list_events", "record", "to_proto", "verify_chain"]

# The chain's hashing and verification are shared (overture_runtime.audit_chain): the CLI and the console verify
# the chain they read through ListAuditEvents with the same code that writes it here.

_A = audit_event_pb2
RECORDED_ACTIONS = frozenset({
    _A.AUDIT_ACTION_JOURNEY_VERSION_PUBLISHED, _A.AUDIT_ACTION_JOURNEY_PAUSED, _A.AUDIT_ACTION_JOURNEY_RESUMED,
    _A.AUDIT_ACTION_RUN_CANCELLED, _A.AUDIT_ACTION_RUN_RETRIED, _A.AUDIT_ACTION_DELIVERY_RESOLVED, _A.AUDIT_ACTION_JOURNEY_ARCHIVED,
    _A.AUDIT_ACTION_RUN_MIGRATED, _A.AUDIT_ACTION_APPROVAL_DECIDED, _A.AUDIT_ACTION_EVENTS_REPLAYED,
})
"""The actions other services record through RecordAuditEvents; the rest
are the rules service's own, which only it appends."""


async def append(
    conn: AsyncConnection, *, tenant: str, action: audit_event_pb2.AuditAction.ValueType, actor: str, time: datetime, reason: str,
    target: str, details: Mapping[str, object], record_id: str = "", recorded_by: str = "",
) -> int:
    """Append one entry to *tenant*'s chain, inside the caller's transaction;
    returns its sequence.

    The primary key (tenant, sequence) makes concurrent appends race safely:
    the loser's transaction fails and its caller's whole change rolls back.
    """
    t = audit_events
    last = (
        await conn.execute(
            sa.select(t.c.sequence, t.c.hash).where(t.c.tenant == tenant).order_by(t.c.sequence.desc()).limit(1)
        )
    ).first()
    sequence = (last.sequence if last else 0) + 1
    previous = last.hash if last else ""
    name = audit_event_pb2.AuditAction.Name(action)
    # Details are flat strings: numbers would come back from a Struct as
    # floats and change the hash.
    details = {str(k): str(v) for k, v in details.items()}
    digest = entry_hash(sequence=sequence, action=name, actor=actor, time=time, reason=reason,
                        target=target, details=details, previous_hash=previous, record_id=record_id, recorded_by=recorded_by)
    try:
        await conn.execute(
            t.insert().values(tenant=tenant, sequence=sequence, action=name, actor=actor, time=time,
                              reason=reason, target=target, details=details, previous_hash=previous, hash=digest,
                              record_id=record_id or None, recorded_by=recorded_by or None)
        )
    except IntegrityError as error:
        raise ConcurrentAppend("the audit log changed concurrently; retry") from error
    return sequence


@dataclass(frozen=True)
class ExternalRecord:
    """A change another service made, to be appended as it was reported."""

    record_id: str
    """The reporting service's id for the record, unique in the tenant."""
    action: audit_event_pb2.AuditAction.ValueType
    """One of :data:`RECORDED_ACTIONS`."""
    actor: str
    """Who made the change."""
    time: datetime
    """When the change was committed."""
    reason: str
    """Why, as the actor said."""
    target: str
    """What the change was made to."""
    details: Mapping[str, str]
    """Details, as strings."""


async def record(db: Database, *, tenant: str, records: Sequence[ExternalRecord], recorded_by: str) -> list[tuple[int, bool]]:
    """Append *records* to *tenant*'s chain in order, in one transaction,
    skipping those whose id is already in it. Returns, per record, the
    sequence of the entry that holds it and whether it was there already."""
    t = audit_events
    ids = list({r.record_id for r in records})
    for _ in range(8):
        try:
            async with db.begin() as conn:
                rows = (await conn.execute(sa.select(t.c.record_id, t.c.sequence).where(
                    (t.c.tenant == tenant) & t.c.record_id.in_(ids)))).all()
                known: dict[str, int] = {r.record_id: r.sequence for r in rows}
                outcome: list[tuple[int, bool]] = []
                for item in records:
                    if item.record_id in known:
                        outcome.append((known[item.record_id], True))
                        continue
                    sequence = await append(
                        conn, tenant=tenant, action=item.action, actor=item.actor, time=item.time, reason=item.reason,
                        target=item.target, details=item.details, record_id=item.record_id, recorded_by=recorded_by)
                    known[item.record_id] = sequence
                    outcome.append((sequence, False))
            return outcome
        except ConcurrentAppend:
            continue  # another writer took the sequence, or recorded the same id: read again
    raise Unavailable("the audit log is changing too fast; retry", reason="CONTENTION")


class ConcurrentAppend(Exception):
    """Another writer appended the same sequence first."""


async def list_events(db: Database, *, tenant: str, after: int, limit: int) -> list[audit_event_pb2.AuditEvent]:
    """Up to *limit* of *tenant*'s entries after sequence *after*, in order
    (a range scan of the primary key)."""
    t = audit_events
    async with db.connect() as conn:
        rows = (await conn.execute(
            sa.select(t).where((t.c.tenant == tenant) & (t.c.sequence > after)).order_by(t.c.sequence).limit(limit)
        )).all()
    return [to_proto(r) for r in rows]


def to_proto(row: Any) -> audit_event_pb2.AuditEvent:
    """An audit row as its proto."""
    event = audit_event_pb2.AuditEvent(
        sequence=row.sequence, action=audit_event_pb2.AuditAction.Value(row.action), actor=row.actor,
        reason=row.reason, target=row.target, details=struct_from_dict(row.details),
        previous_hash=row.previous_hash, hash=row.hash, record_id=row.record_id or "", recorded_by=row.recorded_by or "",
    )
    event.time.FromDatetime(row.time)
    return event
