"""Runs: the history filtered by journey, state, subject and time, and one
run's timeline (each step with its edge, inputs, outputs, timing, and
links to its decision and delivery), with retry and cancel."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from google.protobuf import timestamp_pb2
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture.orchestrator.v1 import run_pb2

from .render import page
from .services import ServiceError
from .web import BadInput, Visit, choice, view

__all__ = ["parse_time", "routes"]

STATES = {enum.name.removeprefix("RUN_STATE_").lower(): enum.number for enum in run_pb2.RunState.DESCRIPTOR.values if enum.number}


def parse_time(value: str, what: str) -> timestamp_pb2.Timestamp | None:
    """A time from a form: ``2026-01-02T10:00`` (a ``datetime-local`` input, read as UTC) or RFC 3339; empty is None."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{what} must be a date and time, for example 2026-01-02T10:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if not 1900 <= when.year <= 9000:
        raise BadInput(f"{what} must be between the years 1900 and 9000")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _run_id(visit: Visit) -> str:
    run_id = str(visit.request.path_params["run_id"])
    if len(run_id) > 256:
        raise BadInput("no such run id")
    return run_id


@view("orchestrator.ListRuns")
async def runs(visit: Visit) -> Response:
    """Runs, newest first, filtered."""
    filters = {k: visit.query(k).strip() for k in ("journey", "state", "subject", "since", "until")}
    choice(filters["state"], list(STATES), "state")
    request = OS.ListRunsRequest(journey=filters["journey"], subject_id=filters["subject"], state=STATES.get(filters["state"], 0),  # type: ignore[arg-type]
                                 page_size=50, page_token=visit.query("page"))
    since, until = parse_time(filters["since"], "since"), parse_time(filters["until"], "until")
    if since is not None:
        request.start_time.CopyFrom(since)
    if until is not None:
        request.end_time.CopyFrom(until)
    reply = await visit.call("orchestrator.ListRuns", request)
    params = urlencode({k: v for k, v in filters.items() if v})
    return page(visit.request, "runs.html", runs=reply.runs, next_page=reply.next_page_token, filters=filters, states=list(STATES),
                params=params, live=not visit.query("page"))


@view("orchestrator.GetRun")
async def run(visit: Visit) -> Response:
    """One run's timeline."""
    found = (await visit.call("orchestrator.GetRun", OS.GetRunRequest(run_id=_run_id(visit)))).run
    template = "run_timeline.html" if visit.request.headers.get("hx-request") else "run.html"
    return page(visit.request, template, run=found, ended=found.state in (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED,
                                                                          run_pb2.RUN_STATE_CANCELLED))


async def _act(visit: Visit, rpc: str, request: object, done: str) -> Response:
    run_id = _run_id(visit)
    try:
        await visit.call(rpc, request)
        visit.notice(done)
    except ServiceError as error:
        if error.http_status >= 500 and not error.unimplemented:
            raise
        visit.notice(error.notice, "error")
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@view("orchestrator.RetryRun")
async def retry(visit: Visit) -> Response:
    """Retry a failed run from the step that failed, on its own version or the latest."""
    policy = OS.JOURNEY_VERSION_POLICY_LATEST if visit.field("version") == "latest" else OS.JOURNEY_VERSION_POLICY_PINNED
    return await _act(visit, "orchestrator.RetryRun", OS.RetryRunRequest(run_id=_run_id(visit), reason=visit.field("reason"),
                                                                         journey_version_policy=policy), "The run is retried from its failed step.")


@view("orchestrator.CancelRun")
async def cancel(visit: Visit) -> Response:
    """Cancel a run that has not ended."""
    return await _act(visit, "orchestrator.CancelRun", OS.CancelRunRequest(run_id=_run_id(visit), reason=visit.field("reason")),
                      "The run is cancelled.")


routes = [
    Route("/runs", runs, methods=["GET"]),
    Route("/runs/{run_id}", run, methods=["GET"]),
    Route("/runs/{run_id}/retry", retry, methods=["POST"]),
    Route("/runs/{run_id}/cancel", cancel, methods=["POST"]),
]
