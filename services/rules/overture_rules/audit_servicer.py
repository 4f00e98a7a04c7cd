"""``overture.rules.v1.AuditService``: other services' records for the audit
log. Validation and translation only; :func:`overture_rules.audit.record`
appends them."""

from __future__ import annotations

import datetime as dt

import grpc

from overture.rules.v1 import audit_event_pb2, audit_service_pb2, audit_service_pb2_grpc
from overture_runtime import Violations, current_principal
from overture_runtime.db import Database
from overture_runtime.edge import item_violations
from overture_runtime.protojson import struct_to_dict
from overture_runtime.validation import check_batch, check_identifier, check_reason, check_struct, to_proto_violations

from . import audit

__all__ = ["AuditServicer"]

A = audit_service_pb2
_MAX_RECORDS = 100
_ID_MAX = 64
_ACTOR_MAX = 256
_TARGET_MAX = 512
_DETAILS_MAX = 8 * 1024


def validate_record(item: A.AuditRecord) -> Violations:
    """The problems of one record, with field paths relative to it: the edge
    checks every batch item gets, then the record's own rules."""
    v = Violations(item_violations(item))
    if v:
        return v
    check_identifier(v, "record_id", item.record_id)
    if len(item.record_id) > _ID_MAX:
        v.add("record_id", f"record_id must be at most {_ID_MAX} characters", "TOO_LONG")
    if item.action == audit_event_pb2.AUDIT_ACTION_UNSPECIFIED:
        v.add("action", "action is required", "REQUIRED")
    elif item.action not in audit_event_pb2.AuditAction.values():
        v.add("action", f"unknown action {item.action}", "INVALID_ENUM")
    elif item.action not in audit.RECORDED_ACTIONS:
        v.add("action", "this action is recorded by the rules service itself", "NOT_RECORDABLE")
    check_identifier(v, "actor", item.actor)
    if len(item.actor) > _ACTOR_MAX:
        v.add("actor", f"actor must be at most {_ACTOR_MAX} characters", "TOO_LONG")
    if not item.HasField("time"):
        v.add("time", "time is required", "REQUIRED")
    check_reason(v, item.reason, required=False)
    check_identifier(v, "target", item.target)
    if len(item.target) > _TARGET_MAX:
        v.add("target", f"target must be at most {_TARGET_MAX} characters", "TOO_LONG")
    check_struct(v, "details", item.details, max_bytes=_DETAILS_MAX, max_depth=1)
    return v


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """``overture.rules.v1.AuditService``."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def RecordAuditEvents(self, request: A.RecordAuditEventsRequest, context: grpc.aio.ServicerContext) -> A.RecordAuditEventsResponse:
        principal = current_principal()
        v = Violations()
        check_batch(v, "records", request.records, maximum=_MAX_RECORDS)
        v.raise_if_any("the audit records are invalid")
        response = A.RecordAuditEventsResponse(results=[A.RecordAuditEventResult(index=i) for i in range(len(request.records))])
        valid: list[int] = []
        for index, item in enumerate(request.records):
            problems = validate_record(item)
            if problems:
                response.results[index].violations.extend(to_proto_violations(problems.items))
            else:
                valid.append(index)
        if valid:
            records = [
                audit.ExternalRecord(
                    record_id=item.record_id, action=item.action, actor=item.actor, time=item.time.ToDatetime(tzinfo=dt.UTC),
                    reason=item.reason, target=item.target, details={k: str(v) for k, v in struct_to_dict(item.details).items()},
                )
                for item in (request.records[i] for i in valid)
            ]
            outcome = await audit.record(self._db, tenant=principal.tenant, records=records, recorded_by=principal.name)
            for index, (sequence, duplicate) in zip(valid, outcome, strict=True):
                response.results[index].sequence = sequence
                response.results[index].duplicate = duplicate
        return response
