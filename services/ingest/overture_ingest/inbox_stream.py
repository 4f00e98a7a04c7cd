"""``GET /inbox/stream?token=...``: a subject's in-app inbox, live, as
Server-Sent Events, for a client app's bell icon.

The token comes from ``InboxService.CreateInboxToken`` (a backend asks for
it and hands it to its signed-in user's app): sealed, scoped to one tenant
and subject, and expiring. It travels in the query string because
``EventSource`` cannot set headers. The stream sends

- ``event: unread`` with ``{"unread_count": n}`` first, and whenever the
  count changes (a message read or archived);
- ``event: message`` with the message (its ``id:`` is the message id) for
  each new message, with the unread count;
- a comment every ``OVERTURE_INBOX_HEARTBEAT_SECONDS`` while idle.

New messages arrive on the subject's Redis pub/sub channel (the connectors
service publishes after it stores one). A client that reconnects sends
``Last-Event-ID`` (``EventSource`` does it by itself) and first gets what it
missed, from the store (``ListInboxMessages`` newer than that id, at most
100). The subscription is made before that read, so nothing falls between.
Each stream holds one Redis subscription; an ingest process serves at most
``OVERTURE_INBOX_MAX_STREAMS`` at once (503 past that), and a stream ends
when its token expires.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import redis.asyncio as aioredis
import structlog
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overture.connectors.v1 import inbox_service_pb2, inbox_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.errors import OvertureError, ResourceExhausted, Unauthenticated, Unavailable, Violations
from overture_runtime.links import BadToken, Links
from overture_runtime.redis import Keys
from overture_runtime.validation import check_identifier

__all__ = ["INBOX_STREAM_PATH", "inbox_routes"]

log = structlog.get_logger("overture.ingest.inbox")
INBOX_STREAM_PATH = "/inbox/stream"
_BACKLOG = 100


def inbox_routes(*, links: Links, clock: Clock, settings: Settings, redis: aioredis.Redis | None, keys: Keys,
                 inbox: inbox_service_pb2_grpc.InboxServiceStub | None, error_response: Callable[[OvertureError], JSONResponse]) -> list[Route]:
    """The route of the inbox stream."""
    open_streams = 0

    async def stream(request: Request) -> Response:
        nonlocal open_streams
        try:
            token = request.query_params.get("token", "")
            try:
                tenant, subject_id, expires = links.read_inbox_token(token, now=clock.now())
            except BadToken as error:
                raise Unauthenticated(f"the inbox token is not valid: {error}", reason="INVALID_INBOX_TOKEN") from None
            last = request.headers.get("last-event-id") or request.query_params.get("last_event_id", "")
            v = Violations()
            check_identifier(v, "Last-Event-ID", last, required=False)
            v.raise_if_any("the Last-Event-ID is invalid")
            if redis is None or inbox is None:
                raise Unavailable("the inbox stream is not configured here", reason="NOT_CONFIGURED")
            if open_streams >= settings.inbox_max_streams:
                raise ResourceExhausted("too many inbox streams on this server; reconnect later", reason="TOO_MANY_STREAMS",
                                        retry_after=dt.timedelta(seconds=5))
            pubsub = redis.pubsub()
            await pubsub.subscribe(keys.inbox_channel(tenant, subject_id))
            try:
                first = await _first(inbox, settings, tenant, subject_id, last)
            except grpc.aio.AioRpcError as error:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise Unavailable(f"the inbox could not be read ({error.code().name})", reason="DOWNSTREAM_UNAVAILABLE",
                                  retry_after=dt.timedelta(seconds=2)) from None
        except OvertureError as error:
            return error_response(error)
        open_streams += 1

        async def events() -> AsyncIterator[str]:
            nonlocal open_streams
            sent: set[str] = set()
            try:
                yield "retry: 3000\n\n"
                for chunk in first:
                    sent.add(chunk[0])
                    yield chunk[1]
                while clock.now() < expires:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=settings.inbox_heartbeat_seconds)
                    if message is None:
                        yield ": ping\n\n"
                        continue
                    event = json.loads(message["data"])
                    if event.get("type") == "message":
                        message_id = str(event["message"]["message_id"])
                        if message_id in sent:
                            continue
                        sent.add(message_id)
                        yield _sse("message", {"message": event["message"], "unread_count": event.get("unread_count", 0)}, message_id)
                    elif event.get("type") == "unread":
                        yield _sse("unread", {"unread_count": event["unread_count"]})
            finally:
                open_streams -= 1
                await pubsub.aclose()  # type: ignore[no-untyped-call]

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no", "connection": "keep-alive"})

    return [Route(INBOX_STREAM_PATH, stream, methods=["GET"])]


async def _first(inbox: inbox_service_pb2_grpc.InboxServiceStub, settings: Settings, tenant: str, subject_id: str,
                 last: str) -> list[tuple[str, str]]:
    """The stream's first events: what was missed since *last* (oldest first), then the unread count."""
    metadata, timeout = call_metadata(settings, tenant), settings.rpc_timeout_seconds
    chunks: list[tuple[str, str]] = []
    if last:
        missed = await inbox.ListInboxMessages(inbox_service_pb2.ListInboxMessagesRequest(
            subject_id=subject_id, after_message_id=last, page_size=_BACKLOG), metadata=metadata, timeout=timeout)
        for message in reversed(missed.messages):
            body = json_format.MessageToDict(message, preserving_proto_field_name=True)
            chunks.append((message.message_id, _sse("message", {"message": body}, message.message_id)))
    count = await inbox.GetInboxUnreadCount(inbox_service_pb2.GetInboxUnreadCountRequest(subject_id=subject_id),
                                            metadata=metadata, timeout=timeout)
    chunks.append(("", _sse("unread", {"unread_count": count.unread_count})))
    return chunks


def _sse(event: str, data: dict[str, Any], event_id: str = "") -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
