"""The HTTP doors of ingest (Starlette), all sharing the gRPC pipeline:

- ``POST /automation/events``: the external API; one event or ``{"events": [...]}``.
- ``POST /v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``,
  ``/v1/group``, ``/v1/alias``, ``/v1/batch``: Segment-compatible, with the
  write key as the basic-auth user name; gzip bodies are accepted.
- ``POST /cloudevents``: CloudEvents 1.0 in structured
  (``application/cloudevents+json``), batch
  (``application/cloudevents-batch+json``) and binary (``ce-*`` headers) mode.

Every door takes ``authorization: Bearer <token>`` or basic auth with the
token (write key) as user name. Errors are JSON with the same field
violations as gRPC: 400 bad input, 401/403 auth, 413 too large, 429 over the
rate limit (with ``Retry-After``).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from overture.common.v1 import event_pb2
from overture_runtime import edge
from overture_runtime.auth import Principal, TokenTable
from overture_runtime.clock import new_id
from overture_runtime.errors import FieldViolation, InvalidArgument, OvertureError, Unauthenticated, Violations

from .cloud_events import from_binary, from_structured
from .pipeline import REJECTED, IngestPipeline, Outcome
from .segment import SEGMENT_TYPES, from_segment
from .servicer import BATCH_MAX

__all__ = ["TooLarge", "create_http_app", "credentials", "error_response", "read_body"]

log = structlog.get_logger("overture.ingest.http")
MAX_BODY = 5 * 1024 * 1024
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 409, "UNAVAILABLE": 503,
}
_FIELDS = {"event_id", "event_type", "subject_id", "occurred_at", "attributes", "source"}
Parsed = event_pb2.Event | Outcome


class TooLarge(Exception):
    """A body over :data:`MAX_BODY`."""


def error_response(error: OvertureError) -> JSONResponse:
    """The JSON body of an error, mirroring ``google.rpc.Status``; Segment
    clients read ``code`` and ``message`` at the top level too."""
    body: dict[str, Any] = {
        "code": error.reason.lower(), "message": error.message,
        "error": {"code": error.code.name, "reason": error.reason, "message": error.message},
    }
    if error.violations:
        body["error"]["field_violations"] = [{"field": v.field, "description": v.description, "reason": v.reason} for v in error.violations]
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(error.retry_after.total_seconds() + 0.999)))
    return JSONResponse(body, status_code=_HTTP_STATUS.get(error.code.name, 500), headers=headers)


async def read_body(request: Request, *, limit: int = MAX_BODY) -> bytes:
    """The request body, gunzipped if it says so, bounded in size (*limit* bytes) either way."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            plain = inflater.decompress(bytes(body), limit + 1)
        except zlib.error:
            raise InvalidArgument("the body is not valid gzip", reason="MALFORMED_GZIP") from None
        if len(plain) > limit or inflater.unconsumed_tail:
            raise TooLarge()
        return plain
    return bytes(body)


def parse_json(raw: bytes) -> Any:
    """JSON, or INVALID_ARGUMENT (see :func:`overture_runtime.edge.loads`);
    each item must still pass :func:`unstorable` before it is converted."""
    return edge.loads(raw)


def unstorable(item: Any, prefix: str) -> Outcome | None:
    """A REJECTED outcome when *item* holds what no event can store (numbers
    no double holds, NUL characters), naming each place; else None."""
    problems = edge.json_violations(item, prefix.rstrip("."))
    return Outcome(REJECTED, violations=tuple(problems)) if problems else None


def credentials(request: Request) -> dict[str, str]:
    """The caller's token as call metadata, from bearer or basic auth (write key as user name)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("malformed basic credentials", reason="MALFORMED_CREDENTIALS") from None
        return {"authorization": f"Bearer {user or password}"}
    return {"authorization": header}


def parse_event(item: Any, prefix: str, v: Violations) -> event_pb2.Event | None:
    """One external-API event object as a proto, or None with violations."""
    if not isinstance(item, dict):
        v.add(prefix.rstrip(".") or "body", "an event must be a JSON object", "WRONG_TYPE")
        return None
    for key in sorted(set(item) - _FIELDS):
        v.add(f"{prefix}{key}", f"unknown field {key!r}", "UNKNOWN_FIELD")
    for key in ("event_id", "event_type", "subject_id", "source"):
        if key in item and not isinstance(item[key], str):
            v.add(f"{prefix}{key}", f"{key} must be a string", "WRONG_TYPE")
    if "attributes" in item and not isinstance(item["attributes"], dict):
        v.add(f"{prefix}attributes", "attributes must be an object", "WRONG_TYPE")
    if "occurred_at" in item and not isinstance(item["occurred_at"], str):
        v.add(f"{prefix}occurred_at", "occurred_at must be an RFC 3339 string", "WRONG_TYPE")
    if v:
        return None
    event = event_pb2.Event()
    try:
        json_format.ParseDict({k: item[k] for k in _FIELDS if k in item}, event)
    except json_format.ParseError as error:
        if "occurred_at" in str(error):
            v.add(f"{prefix}occurred_at", "occurred_at must be an RFC 3339 timestamp, for example 2025-01-01T12:00:00Z", "INVALID_TIMESTAMP")
        else:
            v.add(prefix.rstrip(".") or "body", "the event could not be read", "INVALID")
        return None
    return event


def _result(index: int, outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {"index": index, "status": outcome.status}
    if outcome.event_id:
        result["event_id"] = outcome.event_id
    if outcome.violations:
        result["field_violations"] = [{"field": v.field, "description": v.description, "reason": v.reason} for v in outcome.violations]
    return result


def _check_count(items: Any, field: str) -> list[Any]:
    if not isinstance(items, list) or not items:
        raise InvalidArgument(f"{field} must be a non-empty list", reason="REQUIRED",
                              violations=[FieldViolation(field, f"{field} must be a non-empty list", "REQUIRED")])
    if len(items) > BATCH_MAX:
        raise InvalidArgument(f"at most {BATCH_MAX} events per request", reason="TOO_MANY",
                              violations=[FieldViolation(field, f"at most {BATCH_MAX} events per request", "TOO_MANY")])
    return items


def create_http_app(*, pipeline: IngestPipeline, tokens: TokenTable, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app of the HTTP doors, with *extra_routes* (the link and inbox doors)."""

    async def ingest(principal: Principal, parsed: Sequence[Parsed], source: str, sent_as: Sequence[str] = ()) -> list[Outcome]:
        """Ingest the parsed events in one batch; parse failures keep their place."""
        events = [p for p in parsed if isinstance(p, event_pb2.Event)]
        names = [n for p, n in zip(parsed, sent_as, strict=True) if isinstance(p, event_pb2.Event)] if sent_as else []
        ingested = iter(await pipeline.ingest(principal.tenant, events, source=source, sent_as=names) if events else [])
        return [next(ingested) if isinstance(p, event_pb2.Event) else p for p in parsed]

    def single(outcome: Outcome) -> JSONResponse:
        if outcome.status == REJECTED:
            raise InvalidArgument(f"the event is invalid: {outcome.violations[0].description}", violations=outcome.violations)
        return JSONResponse({"event_id": outcome.event_id, "status": outcome.status}, status_code=202)

    def many(outcomes: Sequence[Outcome]) -> JSONResponse:
        status = 207 if any(o.status == REJECTED for o in outcomes) else 202
        return JSONResponse({"results": [_result(i, o) for i, o in enumerate(outcomes)]}, status_code=status)

    def door(handler: Callable[[Request, Principal], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                principal = tokens.authenticate(credentials(request))
                tokens.authorize(principal, "events.write")
                return await handler(request, principal)
            except OvertureError as error:
                return error_response(error)
            except TooLarge:
                return JSONResponse({"code": "body_too_large", "message": f"the body exceeds {MAX_BODY} bytes",
                                     "error": {"code": "RESOURCE_EXHAUSTED", "reason": "BODY_TOO_LARGE",
                                               "message": f"the body exceeds {MAX_BODY} bytes"}}, status_code=413)
            except Exception:
                # A bug, not bad input: logged with an id, no traceback to the caller.
                error_id = new_id()
                log.exception("http.unexpected_error", error_id=error_id, path=request.url.path)
                return JSONResponse({"code": "internal", "message": f"internal error; reference {error_id}",
                                     "error": {"code": "INTERNAL", "reason": "INTERNAL", "message": f"internal error; reference {error_id}"}},
                                    status_code=500)

        return endpoint

    async def automation_events(request: Request, principal: Principal) -> Response:
        body = parse_json(await read_body(request))
        is_single = not (isinstance(body, dict) and "events" in body)
        items = [body] if is_single else _check_count(body["events"], "events")
        parsed: list[Parsed] = []
        for i, item in enumerate(items):
            prefix = "" if is_single else f"events[{i}]."
            if (bad := unstorable(item, prefix)) is not None:
                parsed.append(bad)
                continue
            v = Violations()
            event = parse_event(item, prefix, v)
            parsed.append(event if event is not None else Outcome(REJECTED, violations=tuple(v.items)))
        outcomes = await ingest(principal, parsed, "http")
        return single(outcomes[0]) if is_single else many(outcomes)

    def segment(call: str) -> Callable[[Request, Principal], Awaitable[Response]]:
        async def handler(request: Request, principal: Principal) -> Response:
            body = parse_json(await read_body(request))
            if call == "batch":
                if not isinstance(body, dict):
                    raise InvalidArgument("the body must be an object with a batch", reason="WRONG_TYPE")
                messages = _check_count(body.get("batch"), "batch")
                prefix = "batch[{}]."
            else:
                messages, prefix = [body], ""
            parsed: list[Parsed] = []
            names: list[str] = []
            for i, message in enumerate(messages):
                if (bad := unstorable(message, prefix.format(i))) is not None:
                    parsed.append(bad)
                    names.append("")
                    continue
                event, name, problems = from_segment(message, call, prefix.format(i))
                parsed.append(event if event is not None else Outcome(REJECTED, violations=tuple(problems)))
                names.append(name)
            outcomes = await ingest(principal, parsed, "segment", names)
            rejected = [o for o in outcomes if o.status == REJECTED]
            if len(rejected) == len(outcomes):
                first = rejected[0].violations[0]
                raise InvalidArgument(f"invalid {call}: {first.description}", violations=[v for o in rejected for v in o.violations])
            # Segment's API answers {"success": true}; per-message results
            # are added for callers that want them.
            return JSONResponse({"success": True, "results": [_result(i, o) for i, o in enumerate(outcomes)]}, status_code=200)

        return handler

    async def cloudevents(request: Request, principal: Principal) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await read_body(request)
        if content_type == "application/cloudevents-batch+json":
            items = _check_count(parse_json(raw), "body")
            parsed: list[Parsed] = []
            for i, item in enumerate(items):
                if (bad := unstorable(item, f"[{i}].")) is not None:
                    parsed.append(bad)
                    continue
                event, problems = from_structured(item, f"[{i}].")
                parsed.append(event if event is not None else Outcome(REJECTED, violations=tuple(problems)))
            return many(await ingest(principal, parsed, "cloudevents"))
        if content_type == "application/cloudevents+json":
            body = parse_json(raw)
            if (bad := unstorable(body, "")) is not None:
                return single(bad)
            event, problems = from_structured(body)
        elif "ce-specversion" in request.headers:
            data = parse_json(raw) if raw else None
            if (bad := unstorable(data, "data.")) is not None:
                return single(bad)
            event, problems = from_binary(dict(request.headers), data)
        else:
            raise InvalidArgument("send application/cloudevents+json, application/cloudevents-batch+json, or binary mode with ce-* headers",
                                  reason="UNSUPPORTED_MEDIA_TYPE")
        outcome = (await ingest(principal, [event], "cloudevents"))[0] if event is not None else Outcome(REJECTED, violations=tuple(problems))
        return single(outcome)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/automation/events", door(automation_events), methods=["POST"]),
        Route("/cloudevents", door(cloudevents), methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        *extra_routes,
    ]
    routes += [Route(f"/v1/{call}", door(segment(call)), methods=["POST"]) for call in (*SEGMENT_TYPES, "batch")]
    async def not_a_door(request: Request, exc: Exception) -> Response:
        """Unknown paths and methods answer in the same JSON shape as every other error."""
        code = getattr(exc, "status_code", 404)
        reason = "METHOD_NOT_ALLOWED" if code == 405 else "NOT_FOUND"
        message = f"{request.method} is not served at {request.url.path}" if code == 405 else f"no door at {request.url.path}"
        return JSONResponse({"code": reason.lower(), "message": message, "error": {"code": reason, "reason": reason, "message": message}},
                            status_code=code, headers=getattr(exc, "headers", None))

    app = Starlette(routes=routes, exception_handlers={404: not_a_door, 405: not_a_door})
    app.router.redirect_slashes = False  # "/v1/track/" is not a door, rather than a redirect to one
    return app
