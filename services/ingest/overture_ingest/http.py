"""The HTTP JSON doors of ingest (Starlette), sharing the gRPC pipeline.

``POST /automation/events`` takes one event or ``{"events": [...]}``, with
``authorization: Bearer <token>``. Errors are JSON with the same field
violations as gRPC: 400 for bad input, 401/403 for auth, 413 for a body
over the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overture.common.v1 import event_pb2
from overture_runtime.auth import Principal, TokenTable
from overture_runtime.errors import FieldViolation, InvalidArgument, OvertureError, Violations

from .pipeline import REJECTED, IngestPipeline, Outcome
from .servicer import BATCH_MAX

__all__ = ["create_http_app"]

log = structlog.get_logger("overture.ingest.http")
MAX_BODY = 5 * 1024 * 1024
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 409, "UNAVAILABLE": 503,
}
_FIELDS = {"event_id", "event_type", "subject_id", "occurred_at", "attributes", "source"}


def error_response(error: OvertureError) -> JSONResponse:
    """The JSON body of an error, mirroring ``google.rpc.Status``."""
    body: dict[str, Any] = {"error": {"code": error.code.name, "reason": error.reason, "message": error.message}}
    if error.violations:
        body["error"]["field_violations"] = [{"field": v.field, "description": v.description, "reason": v.reason} for v in error.violations]
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(error.retry_after.total_seconds() + 0.999)))
    return JSONResponse(body, status_code=_HTTP_STATUS.get(error.code.name, 500), headers=headers)


async def read_json(request: Request) -> Any:
    """The request's JSON body, bounded in size."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _TooLarge()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("the body is not valid JSON", reason="MALFORMED_JSON") from None


class _TooLarge(Exception):
    pass


def parse_event(item: Any, prefix: str, v: Violations) -> event_pb2.Event | None:
    """One external-API event object as a proto, or None with violations."""
    if not isinstance(item, dict):
        v.add(prefix or "body", "an event must be a JSON object", "WRONG_TYPE")
        return None
    unknown = sorted(set(item) - _FIELDS)
    for key in unknown:
        v.add(f"{prefix}{key}" if prefix else key, f"unknown field {key!r}", "UNKNOWN_FIELD")
    event = event_pb2.Event()
    for key in ("event_id", "event_type", "subject_id", "source"):
        if key in item and not isinstance(item[key], str):
            v.add(f"{prefix}{key}", f"{key} must be a string", "WRONG_TYPE")
    if "attributes" in item and not isinstance(item["attributes"], dict):
        v.add(f"{prefix}attributes", "attributes must be an object", "WRONG_TYPE")
    if "occurred_at" in item and not isinstance(item["occurred_at"], str):
        v.add(f"{prefix}occurred_at", "occurred_at must be an RFC 3339 string", "WRONG_TYPE")
    if unknown or v:
        return None
    try:
        json_format.ParseDict({k: item[k] for k in _FIELDS if k in item}, event)
    except json_format.ParseError as error:
        if "occurred_at" in str(error):
            v.add(f"{prefix}occurred_at", "occurred_at must be an RFC 3339 timestamp, for example 2025-01-01T12:00:00Z", "INVALID_TIMESTAMP")
        else:
            v.add(prefix.rstrip(".") or "body", "the event could not be read", "INVALID")
        return None
    return event


def create_http_app(*, pipeline: IngestPipeline, tokens: TokenTable) -> Starlette:
    """The ASGI app of the HTTP doors."""

    def authenticated(handler: Callable[[Request, Principal], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                principal = tokens.authenticate({k.lower(): v for k, v in request.headers.items()})
                tokens.authorize(principal, "events.write")
                return await handler(request, principal)
            except OvertureError as error:
                return error_response(error)
            except _TooLarge:
                return JSONResponse({"error": {"code": "RESOURCE_EXHAUSTED", "reason": "BODY_TOO_LARGE",
                                               "message": f"the body exceeds {MAX_BODY} bytes"}}, status_code=413)

        return endpoint

    async def automation_events(request: Request, principal: Principal) -> Response:
        body = await read_json(request)
        single = not (isinstance(body, dict) and "events" in body)
        items = [body] if single else body["events"]
        if not isinstance(items, list) or not items:
            raise InvalidArgument("events must be a non-empty list", reason="REQUIRED",
                                  violations=[FieldViolation("events", "events must be a non-empty list", "REQUIRED")])
        if len(items) > BATCH_MAX:
            raise InvalidArgument(f"at most {BATCH_MAX} events per request", reason="TOO_MANY",
                                  violations=[FieldViolation("events", f"at most {BATCH_MAX} events per request", "TOO_MANY")])
        # Events that are not even well-typed JSON are rejected here; the rest
        # go through the same pipeline as gRPC, in one batch.
        parsed: list[event_pb2.Event | Outcome] = []
        for i, item in enumerate(items):
            v = Violations()
            event = parse_event(item, "" if single else f"events[{i}].", v)
            parsed.append(event if event is not None else Outcome(REJECTED, violations=tuple(v.items)))
        ingested = iter(await pipeline.ingest(principal.tenant, [p for p in parsed if isinstance(p, event_pb2.Event)], source="http"))
        outcomes = [next(ingested) if isinstance(p, event_pb2.Event) else p for p in parsed]
        if single:
            (only,) = outcomes
            if only.status == REJECTED:
                raise InvalidArgument(f"the event is invalid: {only.violations[0].description}", violations=only.violations)
            return JSONResponse({"event_id": only.event_id, "status": only.status}, status_code=202)
        results = [_result(i, o) for i, o in enumerate(outcomes)]
        return JSONResponse({"results": results}, status_code=207 if any(o.status == REJECTED for o in outcomes) else 202)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/automation/events", authenticated(automation_events), methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ])



def _result(index: int, outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {"index": index, "status": outcome.status}
    if outcome.event_id:
        result["event_id"] = outcome.event_id
    if outcome.violations:
        result["field_violations"] = [{"field": v.field, "description": v.description, "reason": v.reason} for v in outcome.violations]
    return result
