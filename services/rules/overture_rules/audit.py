"""The tenant's append-only, hash-chained audit log.

Each entry's hash is the sha256 of the canonical JSON of all its other
fields, including the previous entry's hash; editing any stored entry breaks
the chain from that entry on, which :func:`verify_chain` reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import audit_event_pb2
from overture_runtime.protojson import struct_from_dict, struct_to_dict

from .tables import audit_events

__all__ = ["append", "entry_hash", "to_proto", "verify_chain"]


def entry_hash(
    *, sequence: int, action: str, actor: str, time: datetime, reason: str, target: str,
    details: Mapping[str, Any], previous_hash: str,
) -> str:
    """The hash of one entry, over the canonical JSON of its fields."""
    body = {
        "sequence": sequence, "action": action, "actor": actor, "time": _ts(time),
        "reason": reason, "target": target, "details": details, "previous_hash": previous_hash,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ts(time: datetime) -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(time)
    return stamp.ToJsonString()


async def append(
    conn: AsyncConnection, *, tenant: str, action: audit_event_pb2.AuditAction.ValueType, actor: str, time: datetime, reason: str,
    target: str, details: Mapping[str, object],
) -> None:
    """Append one entry to *tenant*'s chain, inside the caller's transaction.

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
                        target=target, details=details, previous_hash=previous)
    try:
        await conn.execute(
            t.insert().values(tenant=tenant, sequence=sequence, action=name, actor=actor, time=time,
                              reason=reason, target=target, details=details, previous_hash=previous, hash=digest)
        )
    except IntegrityError as error:
        raise ConcurrentAppend("the audit log changed concurrently; retry") from error


class ConcurrentAppend(Exception):
    """Another writer appended the same sequence first."""


def to_proto(row: Any) -> audit_event_pb2.AuditEvent:
    """An audit row as its proto."""
    event = audit_event_pb2.AuditEvent(
        sequence=row.sequence, action=audit_event_pb2.AuditAction.Value(row.action), actor=row.actor,
        reason=row.reason, target=row.target, details=struct_from_dict(row.details),
        previous_hash=row.previous_hash, hash=row.hash,
    )
    event.time.FromDatetime(row.time)
    return event


def verify_chain(events: Iterable[audit_event_pb2.AuditEvent]) -> tuple[int, str] | None:
    """Walk a chain from its first entry; return ``(sequence, problem)`` of
    the first tampered entry, or None when the whole chain verifies."""
    previous = ""
    expected_sequence = 1
    for event in events:
        if event.sequence != expected_sequence:
            return event.sequence, f"expected sequence {expected_sequence}: an entry is missing"
        if event.previous_hash != previous:
            return event.sequence, "previous_hash does not match the previous entry"
        recomputed = entry_hash(
            sequence=event.sequence, action=audit_event_pb2.AuditAction.Name(event.action), actor=event.actor,
            time=event.time.ToDatetime(tzinfo=UTC), reason=event.reason, target=event.target,
            details=struct_to_dict(event.details), previous_hash=event.previous_hash,
        )
        if recomputed != event.hash:
            return event.sequence, "the entry's content does not match its hash"
        previous = event.hash
        expected_sequence += 1
    return None
