"""The audit log's hash chain: how an entry's hash is computed, and how a
chain read back (through ``RulesService.ListAuditEvents``) is verified.

The rules service writes the chain with :func:`entry_hash`; the CLI
(``overture audit verify``) and the console verify what they read with
:func:`verify_chain`, so writer and readers are the same code. Pure
functions of the entries; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from overture.rules.v1 import audit_event_pb2

from .protojson import struct_to_dict

__all__ = ["entry_hash", "verify_chain"]


def entry_hash(
    *, sequence: int, action: str, actor: str, time: datetime, reason: str, target: str,
    details: Mapping[str, Any], previous_hash: str, record_id: str = "", recorded_by: str = "",
) -> str:
    """The hash of one entry, over the canonical JSON of its fields. The
    fields of recorded entries are hashed only when set, so the entries
    written before they existed keep their hashes."""
    body = {
        "sequence": sequence, "action": action, "actor": actor, "time": _ts(time),
        "reason": reason, "target": target, "details": details, "previous_hash": previous_hash,
    }
    if record_id:
        body["record_id"] = record_id
    if recorded_by:
        body["recorded_by"] = recorded_by
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ts(time: datetime) -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(time)
    return stamp.ToJsonString()


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
            record_id=event.record_id, recorded_by=event.recorded_by,
        )
        if recomputed != event.hash:
            return event.sequence, "the entry's content does not match its hash"
        previous = event.hash
        expected_sequence += 1
    return None
