"""The audit log: the tenant's hash chain, verified as it is read, with the
entries newest first. Verification is the shared
:func:`overture_runtime.audit_chain.verify_chain`, the one the rules
service writes the chain with and ``overture audit verify`` runs."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from overture.rules.v1 import rules_service_pb2 as RS
from overture_runtime.audit_chain import verify_chain

from .render import page
from .web import Visit, number, view

__all__ = ["routes"]

SHOWN = 200
"""Entries a page shows; the whole chain is verified whatever its length."""


@view("rules.ListAuditEvents")
async def audit(visit: Visit) -> Response:
    """The chain's verification status and its latest entries."""
    entries, token = [], ""
    while True:
        reply = await visit.call("rules.ListAuditEvents", RS.ListAuditEventsRequest(page_size=1000, page_token=token), timeout=30)
        entries += reply.audit_events
        token = reply.next_page_token
        if not token:
            break
    problem = verify_chain(entries)
    skip = number(visit.query("skip"), "skip", high=max(0, len(entries)))
    newest = entries[::-1][skip:skip + SHOWN]
    return page(visit.request, "audit.html", problem=problem, total=len(entries), entries=newest, skip=skip,
                more=skip + SHOWN < len(entries), shown=SHOWN)


routes = [Route("/audit", audit, methods=["GET"])]
