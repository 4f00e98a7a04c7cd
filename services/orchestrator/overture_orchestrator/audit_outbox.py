"""The orchestrator's audit outbox: journey and run changes on their way to
the audit log, through the shared outbox (:mod:`overture_runtime.audit_outbox`,
ADR 0008) on the orchestrator's own table."""

from __future__ import annotations

import functools

from overture_runtime import audit_outbox as _outbox

from .tables import audit_outbox

__all__ = ["SYSTEM_ACTOR", "AuditForwarder", "stage"]

SYSTEM_ACTOR = "system:orchestrator"
"""The actor of changes the orchestrator makes on its own, such as pausing a looping journey."""

stage = functools.partial(_outbox.stage, table=audit_outbox)
"""Write one audit record inside the caller's transaction (see :func:`overture_runtime.audit_outbox.stage`)."""
AuditForwarder = functools.partial(_outbox.AuditForwarder, table=audit_outbox)
"""Forwards the orchestrator's staged records to the audit log."""
