"""The operators' queues: approvals (approve or reject with a reason, and
the time left before the automatic rejection) and dead letters (failed
runs and poison events with their last error, re-driven one or many)."""

from __future__ import annotations

import datetime as dt

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

from .render import page
from .services import ServiceError
from .web import BadInput, Visit, choice, view

__all__ = ["routes", "time_left"]


def time_left(expire: dt.datetime, now: dt.datetime) -> str:
    """``3 h 20 m left``, or ``due now`` once past."""
    seconds = int((expire - now).total_seconds())
    if seconds <= 0:
        return "due now"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} m left" if hours else f"{max(1, rest // 60)} m left"


@view("orchestrator.ListApprovals")
async def approvals(visit: Visit) -> Response:
    """The pending approvals, oldest first."""
    journey = visit.query("journey").strip()
    reply = await visit.call("orchestrator.ListApprovals", OS.ListApprovalsRequest(journey=journey, page_size=50, page_token=visit.query("page")))
    now = dt.datetime.now(dt.UTC)
    rows = [(a, time_left(a.expire_time.ToDatetime(tzinfo=dt.UTC), now) if a.HasField("expire_time") else "") for a in reply.approvals]
    return page(visit.request, "approvals.html", rows=rows, journey=journey, next_page=reply.next_page_token)


@view("orchestrator.DecideApproval")
async def decide(visit: Visit) -> Response:
    """Approve or reject a run waiting at an approval step."""
    run_id, step_id = str(visit.request.path_params["run_id"]), str(visit.request.path_params["step_id"])
    decision = choice(visit.field("decision"), ["approve", "reject"], "decision")
    if not decision:
        raise BadInput("decision must be approve or reject")
    try:
        await visit.call("orchestrator.DecideApproval", OS.DecideApprovalRequest(run_id=run_id, step_id=step_id, approve=decision == "approve",
                                                                                 reason=visit.field("reason")))
        visit.notice(f"Run {run_id[-12:]} is {'approved' if decision == 'approve' else 'rejected'} at {step_id}.")
    except ServiceError as error:
        if error.http_status >= 500 and not error.unimplemented:
            raise
        visit.notice(error.notice + "".join(f" {f}: {d}." for f, d in error.violations), "error")
    return RedirectResponse("/approvals", status_code=303)


@view("orchestrator.ListDeadLetters")
async def dead_letters(visit: Visit) -> Response:
    """Failed runs, or poison events, with their last errors."""
    kind = choice(visit.query("kind"), ["runs", "events"], "kind") or "runs"
    journey = visit.query("journey").strip()
    reply = await visit.call("orchestrator.ListDeadLetters", OS.ListDeadLettersRequest(
        journey=journey if kind == "runs" else "", page_size=50, page_token=visit.query("page"),
        kind=OS.DEAD_LETTER_KIND_EVENT if kind == "events" else OS.DEAD_LETTER_KIND_RUN))
    failed = {r.run_id: next((s for s in reversed(r.steps) if s.error), None) for r in reply.runs}
    return page(visit.request, "dead_letters.html", kind=kind, journey=journey, runs=reply.runs, failed=failed, poison=reply.poison_events,
                next_page=reply.next_page_token)


@view("orchestrator.RedriveDeadLetters")
async def redrive(visit: Visit) -> Response:
    """Re-drive the chosen runs or poison entries, or every dead letter of a journey."""
    run_ids, entry_ids, journey = visit.fields("run_ids"), visit.fields("entry_ids"), visit.field("journey").strip()
    if len(run_ids) + len(entry_ids) > 1000:
        raise BadInput("at most 1,000 dead letters at once")
    policy = OS.JOURNEY_VERSION_POLICY_LATEST if visit.field("version") == "latest" else OS.JOURNEY_VERSION_POLICY_PINNED
    back = "/dead-letters?kind=events" if entry_ids else "/dead-letters"
    if not (run_ids or entry_ids or journey):
        visit.notice("Choose the dead letters to re-drive.", "error")
        return RedirectResponse(back, status_code=303)
    try:
        reply = await visit.call("orchestrator.RedriveDeadLetters", OS.RedriveDeadLettersRequest(
            run_ids=run_ids, entry_ids=entry_ids, journey=journey if not (run_ids or entry_ids) else "", reason=visit.field("reason"),
            journey_version_policy=policy))
        visit.notice(f"{reply.redriven_count} re-driven.")
        for rejection in reply.rejections:
            visit.notice(f"{rejection.run_id or rejection.entry_id}: not re-driven: {rejection.description}", "error")
    except ServiceError as error:
        if error.http_status >= 500 and not error.unimplemented:
            raise
        visit.notice(error.notice + "".join(f" {f}: {d}." for f, d in error.violations), "error")
    return RedirectResponse(back, status_code=303)


routes = [
    Route("/approvals", approvals, methods=["GET"]),
    Route("/approvals/{run_id}/{step_id}", decide, methods=["POST"]),
    Route("/dead-letters", dead_letters, methods=["GET"]),
    Route("/dead-letters/redrive", redrive, methods=["POST"]),
]
