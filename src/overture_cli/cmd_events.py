"""``overture events``: send events and look them up."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from .client import fail, target
from .output import Fields, Problem, emit, flatten_data, run_async, short, to_data

if TYPE_CHECKING:
    from google.protobuf import timestamp_pb2

    from overture.ingest.v1 import ingested_event_pb2

__all__ = ["add_commands", "describe_event"]


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def send(args: argparse.Namespace) -> int:
    """Send one event."""
    from overture.common.v1 import event_pb2
    from overture.ingest.v1 import ingest_service_pb2 as IS
    from overture.ingest.v1 import ingest_service_pb2_grpc

    attributes: dict[str, Any] = {}
    if args.attributes:
        try:
            given = json.loads(args.attributes)
        except ValueError as error:
            fail(f"--attributes is not valid JSON: {error}")
        if not isinstance(given, dict):
            fail("--attributes must be a JSON object, for example '{\"plan\": \"pro\"}'")
        attributes.update(given)
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--attr expects key=value, got {item!r}")
        attributes[key] = _value(value)
    event = event_pb2.Event(event_id=args.id, event_type=args.type, subject_id=args.subject, source="cli")
    try:
        event.attributes.update(attributes)
    except (ValueError, TypeError) as error:
        fail(f"attributes cannot be sent: {error}")
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
        if result.status == IS.EVENT_RESULT_STATUS_REJECTED:
            fail("the event was rejected", problems=[Problem(v.field, v.description) for v in result.violations])
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("event", result.event_id), ("status", short(IS.EventResultStatus, result.status)),
        ])])
        return 0

    return run_async(go)


def describe_event(ingested: ingested_event_pb2.IngestedEvent) -> Fields:
    """An event and what became of it: committed, published, applied to the profile, the runs it started."""
    from overture.ingest.v1 import ingested_event_pb2

    def at(stamp: timestamp_pb2.Timestamp) -> str:
        return stamp.ToJsonString() if stamp.seconds or stamp.nanos else ""

    e = ingested.event
    renamed = f" (sent as {ingested.original_event_type})" if ingested.original_event_type not in ("", e.event_type) else ""
    items: list[tuple[str, object]] = [
        ("event", e.event_id), ("type", e.event_type + renamed), ("subject", e.subject_id), ("source", e.source),
        ("occurred", at(e.occurred_at)), ("received", at(e.received_at)),
        ("state", short(ingested_event_pb2.IngestedEventState, ingested.state)), ("committed", at(ingested.commit_time)),
        ("published", at(ingested.publish_time)), ("partition", ingested.partition), ("profile applied", at(ingested.profile_apply_time)),
        ("runs", list(ingested.run_ids)),
    ]
    if e.HasField("causation"):
        c = e.causation
        items.append(("caused by", f"run {c.run_id} (root event {c.root_event_id}, depth {c.depth})"))
    items += flatten_data("attributes", to_data(e.attributes)) if e.attributes.fields else [("attributes", "")]
    return Fields(items)


def get(args: argparse.Namespace) -> int:
    """Show an event and what became of it."""
    from overture.ingest.v1 import ingest_service_pb2 as IS
    from overture.ingest.v1 import ingest_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("ingest") as channel:
            response = await ingest_service_pb2_grpc.IngestServiceStub(channel).GetEvent(IS.GetEventRequest(event_id=args.event_id), metadata=t.metadata)
        emit(response.event, as_json=args.json, human=lambda: [describe_event(response.event)])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``events``."""
    events = sub.add_parser("events", help="send events and look them up").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = events.add_parser("send", help="send one event", parents=[common])
    p.add_argument("--type", required=True, help="the event type, for example user.signed_up")
    p.add_argument("--subject", required=True, help="the subject (person) id")
    p.add_argument("--id", default="", help="the event id (idempotency key); derived from the content when omitted")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="an attribute; VALUE is JSON or a string")
    p.add_argument("--attributes", default="", metavar="OBJECT", help="attributes as a JSON object (--attr adds to them)")
    p.add_argument("--occurred-at", default="", help="when it happened, RFC 3339")
    p.set_defaults(func=send)
    p = events.add_parser("get", help="show an event and what became of it", parents=[common])
    p.add_argument("event_id")
    p.set_defaults(func=get)
