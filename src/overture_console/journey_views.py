"""Journeys: the list (state, version, last run, success rate, a badge for
failed runs), pause and resume with a reason, and one journey: its graph
with live counts per step, its versions and the diff between any two, its
audit history, and a form to send it a test event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf import json_format
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as IS
from overture.orchestrator.v1 import journey_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture.rules.v1 import rules_service_pb2 as RS

from .diffs import diff
from .graph import layout
from .render import page
from .services import ServiceError
from .web import BadInput, Visit, number, view

__all__ = ["audit_history", "routes"]

AUDIT_SCAN = 20_000
"""How many audit entries a journey's history reads at most (the log has no filter by target yet)."""


def _path_name(visit: Visit) -> str:
    name = str(visit.request.path_params["name"])
    if not name or len(name) > 63:
        raise BadInput("no such journey name")
    return name


async def _row(visit: Visit, journey: Any) -> dict[str, Any]:
    runs: Any
    stats: Any
    runs, stats = await asyncio.gather(
        visit.call("orchestrator.ListRuns", OS.ListRunsRequest(journey=journey.name, page_size=1)),
        visit.call("orchestrator.GetJourneyStats", OS.GetJourneyStatsRequest(name=journey.name)),
        return_exceptions=True)
    return {"journey": journey, "last_run": runs.runs[0] if not isinstance(runs, BaseException) and runs.runs else None,
            "stats": None if isinstance(stats, BaseException) else stats.stats}


@view("orchestrator.ListJourneys")
async def journeys(visit: Visit) -> Response:
    """Every journey with its state, version, last run, success rate and failed runs."""
    token = visit.query("page")
    reply = await visit.call("orchestrator.ListJourneys", OS.ListJourneysRequest(page_size=50, page_token=token))
    rows = await asyncio.gather(*(_row(visit, j) for j in reply.journeys))
    return page(visit.request, "journeys.html", rows=rows, next_page=reply.next_page_token)


async def _set_state(visit: Visit, rpc: str, request: Any, done: str) -> Response:
    name = _path_name(visit)
    try:
        await visit.call(rpc, request)
        visit.notice(f"{name} {done}.")
    except ServiceError as error:
        if error.http_status >= 500 and not error.unimplemented:
            raise
        visit.notice(error.notice, "error")
    back = visit.field("back")
    return RedirectResponse(back if back in ("/journeys", f"/journeys/{name}") else "/journeys", status_code=303)


@view("orchestrator.PauseJourney")
async def pause(visit: Visit) -> Response:
    """Pause a journey, with a reason."""
    return await _set_state(visit, "orchestrator.PauseJourney", OS.PauseJourneyRequest(name=_path_name(visit), reason=visit.field("reason")),
                            "is paused")


@view("orchestrator.ResumeJourney")
async def resume(visit: Visit) -> Response:
    """Resume a paused journey, with a reason."""
    return await _set_state(visit, "orchestrator.ResumeJourney", OS.ResumeJourneyRequest(name=_path_name(visit), reason=visit.field("reason")),
                            "is resumed")


async def _versions(visit: Visit, name: str, latest: int) -> tuple[list[Any], str]:
    """The published versions, newest first; without ListJourneyVersions, their numbers only (from GetJourney's latest)."""
    try:
        reply = await visit.call("orchestrator.ListJourneyVersions", OS.ListJourneyVersionsRequest(name=name, page_size=100))
        return list(reply.journeys), ""
    except ServiceError as error:
        if not error.unimplemented:
            raise
        return [journey_pb2.Journey(name=name, version=v) for v in range(latest, 0, -1)], error.notice


async def audit_history(visit: Visit, prefixes: tuple[str, ...]) -> tuple[list[Any], bool]:
    """Audit entries whose target starts with one of *prefixes*, newest first, and whether the scan stopped at its bound."""
    found, token, read = [], "", 0
    while True:
        reply = await visit.call("rules.ListAuditEvents", RS.ListAuditEventsRequest(page_size=1000, page_token=token))
        read += len(reply.audit_events)
        found += [e for e in reply.audit_events if e.target.startswith(prefixes)]
        token = reply.next_page_token
        if not token or read >= AUDIT_SCAN:
            return found[::-1], bool(token)


@view("orchestrator.GetJourney")
async def journey(visit: Visit) -> Response:
    """One journey: graph with live counts, versions, diff, audit history, test event."""
    name = _path_name(visit)
    version = number(visit.query("version"), "version")
    shown = (await visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=name, version=version))).journey
    latest = shown if not version else (await visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=name))).journey
    notices: list[tuple[str, str]] = []
    stats = None
    if visit.can("orchestrator.GetJourneyStats"):
        try:
            stats = (await visit.call("orchestrator.GetJourneyStats", OS.GetJourneyStatsRequest(name=name, version=version))).stats
        except ServiceError as error:
            notices.append(("error", error.notice))
    versions, note = await _versions(visit, name, latest.version)
    if note:
        notices.append(("info", note + " Versions are listed by number."))
    audit: list[Any] = []
    audit_capped = False
    if visit.can("rules.ListAuditEvents"):
        try:
            audit, audit_capped = await audit_history(visit, (f"journey/{name}/", f"journey/{name}"))
            audit = [e for e in audit if e.target == f"journey/{name}" or e.target.startswith(f"journey/{name}/")]
        except ServiceError as error:
            notices.append(("error", error.notice))
    spec = json_format.MessageToDict(shown.spec, preserving_proto_field_name=True)
    trigger_type = shown.spec.trigger.event.event_type if shown.spec.trigger.HasField("event") else ""
    return page(visit.request, "journey.html", journey=shown, latest=latest, stats=stats, graph=layout(shown.spec, stats),
                versions=versions, audit=audit[:100], audit_capped=audit_capped, spec_json=json.dumps(spec, indent=2, sort_keys=True),
                trigger_type=trigger_type, notices=notices)


@view("orchestrator.GetJourney", "orchestrator.GetJourneyStats")
async def graph(visit: Visit) -> Response:
    """The graph alone, for the page to refresh its counts."""
    name = _path_name(visit)
    version = number(visit.query("version"), "version")
    shown = (await visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=name, version=version))).journey
    stats = (await visit.call("orchestrator.GetJourneyStats", OS.GetJourneyStatsRequest(name=name, version=version))).stats
    return page(visit.request, "journey_graph.html", journey=shown, stats=stats, graph=layout(shown.spec, stats))


@view("orchestrator.GetJourney")
async def journey_diff(visit: Visit) -> Response:
    """The differences between two versions of a journey."""
    name = _path_name(visit)
    old = number(visit.query("from"), "from", low=1)
    new = number(visit.query("to"), "to", low=1)
    before, after = await asyncio.gather(visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=name, version=old)),
                                         visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=name, version=new)))
    changes = diff(json_format.MessageToDict(before.journey.spec, preserving_proto_field_name=True),
                   json_format.MessageToDict(after.journey.spec, preserving_proto_field_name=True))
    return page(visit.request, "journey_diff.html", name=name, before=before.journey, after=after.journey, changes=changes)


@view("ingest.IngestEvents")
async def send_event(visit: Visit) -> Response:
    """Send one event (a test event for the journey's trigger) through ingest."""
    name = _path_name(visit)
    event = event_pb2.Event(event_type=visit.field("event_type").strip(), subject_id=visit.field("subject_id").strip(),
                            event_id=visit.field("event_id").strip())
    text = visit.field("attributes").strip()
    if text:
        try:
            attributes = json.loads(text)
        except ValueError:
            attributes = None
        if not isinstance(attributes, dict):
            visit.notice("Attributes must be a JSON object, for example {\"plan\": \"pro\"}.", "error")
            return RedirectResponse(f"/journeys/{name}#test-event", status_code=303)
        try:
            event.attributes.update(attributes)
        except (ValueError, TypeError):
            visit.notice("Attributes must hold JSON values only.", "error")
            return RedirectResponse(f"/journeys/{name}#test-event", status_code=303)
    reply = await visit.call("ingest.IngestEvents", IS.IngestEventsRequest(events=[event]))
    result = reply.results[0]
    if result.status == IS.EVENT_RESULT_STATUS_REJECTED:
        visit.notice("The event was rejected: " + "; ".join(f"{v.field}: {v.description}" for v in result.violations), "error")
    else:
        state = "accepted" if result.status == IS.EVENT_RESULT_STATUS_ACCEPTED else "a duplicate (already accepted)"
        visit.notice(f"Event {result.event_id} is {state}; its run appears under Runs.")
    return RedirectResponse(f"/journeys/{name}", status_code=303)


routes = [
    Route("/journeys", journeys, methods=["GET"]),
    Route("/journeys/{name}", journey, methods=["GET"]),
    Route("/journeys/{name}/graph", graph, methods=["GET"]),
    Route("/journeys/{name}/diff", journey_diff, methods=["GET"]),
    Route("/journeys/{name}/pause", pause, methods=["POST"]),
    Route("/journeys/{name}/resume", resume, methods=["POST"]),
    Route("/journeys/{name}/events", send_event, methods=["POST"]),
]
