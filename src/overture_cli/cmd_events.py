"""``overture events``: send events and look them up."""

from __future__ import annotations

import argparse
import json
from typing import Any

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc

from .client import fail, target
from .output import emit, run_async

__all__ = ["add_commands"]
IS = ingest_service_pb2


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def send(args: argparse.Namespace) -> int:
    """Send one event."""
    attributes: dict[str, Any] = {}
    if args.json_attributes:
        try:
            attributes.update(json.loads(args.json_attributes))
        except ValueError as error:
            fail(f"--json is not valid JSON: {error}")
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--attr expects key=value, got {item!r}")
        attributes[key] = _value(value)
    event = event_pb2.Event(event_id=args.id, event_type=args.type, subject_id=args.subject, source="cli")
    event.attributes.update(attributes)
    if args.occurred_at:
        try:
            event.occurred_at.FromJsonString(args.occurred_at)
        except ValueError:
            fail("--occurred-at must be an RFC 3339 time, for example 2025-01-01T12:00:00Z")

    async def go() -> int:
        t = target(args.token)
        async with t.channel("ingest") as channel:
            response = await ingest_service_pb2_grpc.IngestServiceStub(channel).IngestEvents(
                IS.IngestEventsRequest(events=[event]), metadata=t.metadata)
        result = response.results[0]
        status = IS.EventResultStatus.Name(result.status).removeprefix("EVENT_RESULT_STATUS_").lower()
        if result.status == IS.EVENT_RESULT_STATUS_REJECTED:
            fail("event rejected:\n" + "\n".join(f"  {v.field}: {v.description}" for v in result.violations))
        emit(result, as_json=args.json, text=lambda: f"event {result.event_id}: {status}")
        return 0

    return run_async(go)


def get(args: argparse.Namespace) -> int:
    """Show an event and what became of it."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("ingest") as channel:
            response = await ingest_service_pb2_grpc.IngestServiceStub(channel).GetEvent(IS.GetEventRequest(event_id=args.event_id), metadata=t.metadata)
        emit(response.event, as_json=True)
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``events``."""
    events = sub.add_parser("events", help="send events and look them up").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = events.add_parser("send", help="send one event", parents=[common])
    p.add_argument("--type", required=True, help="the event type, for example user.signed_up")
    p.add_argument("--subject", required=True, help="the subject (person) id")
    p.add_argument("--id", default="", help="the event id (idempotency key); derived from the content when omitted")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="an attribute; VALUE is JSON or a string")
    p.add_argument("--json", dest="json_attributes", default="", metavar="OBJECT", help="attributes as a JSON object")
    p.add_argument("--occurred-at", default="", help="when it happened, RFC 3339")
    p.add_argument("--output-json", dest="json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=send)
    p = events.add_parser("get", help="show an event and what became of it", parents=[common])
    p.add_argument("event_id")
    p.set_defaults(func=get)


