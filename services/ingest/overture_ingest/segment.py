"""Segment-compatible calls (``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/screen``, ``/v1/group``, ``/v1/alias``, ``/v1/batch``) as Overture events.

The mapping, so that the official Segment libraries work unchanged:

- ``messageId`` is the event id; ``userId`` (else ``anonymousId``) the subject;
  ``timestamp`` (else ``originalTimestamp``) when it happened.
- ``track``: the event name, lower-cased with non-alphanumerics as ``_``
  (``Order Completed`` becomes ``order_completed``; tenant aliases apply
  after), with ``properties`` as attributes.
- ``identify``: type ``identify`` with ``{"traits": traits}``, which updates
  the profile.
- ``page``/``screen``: ``page.viewed``/``screen.viewed`` with the name and
  properties. ``group``: ``group.identified`` with the group id and traits.
  ``alias``: ``alias`` with the previous id.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format

from overture.common.v1 import event_pb2
from overture_runtime.errors import FieldViolation

__all__ = ["SEGMENT_TYPES", "from_segment"]

SEGMENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def event_type_of(name: str) -> str:
    """A Segment event name as an Overture event type."""
    return _NON_WORD.sub("_", name.strip().lower()).strip("_")


def _object(message: dict[str, Any], key: str, path: str, problems: list[FieldViolation]) -> dict[str, Any]:
    value = message.get(key) or {}
    if not isinstance(value, dict):
        problems.append(FieldViolation(f"{path}{key}", f"{key} must be an object", "WRONG_TYPE"))
        return {}
    return value


def from_segment(message: Any, call: str, path: str = "") -> tuple[event_pb2.Event | None, str, list[FieldViolation]]:
    """One Segment message as an event, with its original event name, or its problems."""
    problems: list[FieldViolation] = []
    if not isinstance(message, dict):
        return None, "", [FieldViolation(path.rstrip(".") or "body", "a message must be a JSON object", "WRONG_TYPE")]
    kind = message.get("type", call) if call == "batch" else call
    if kind not in SEGMENT_TYPES:
        return None, "", [FieldViolation(f"{path}type", f"type must be one of {', '.join(SEGMENT_TYPES)}", "INVALID_TYPE")]
    subject = message.get("userId") or message.get("anonymousId")
    if not isinstance(subject, (str, int)) or isinstance(subject, bool) or subject == "":
        problems.append(FieldViolation(f"{path}userId", "userId or anonymousId is required", "REQUIRED"))
    message_id = message.get("messageId", "")
    if not isinstance(message_id, str):
        problems.append(FieldViolation(f"{path}messageId", "messageId must be a string", "WRONG_TYPE"))
    attributes: dict[str, Any]
    original = kind
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            problems.append(FieldViolation(f"{path}event", "event is required for track", "REQUIRED"))
            name = ""
        original = name
        event_type = event_type_of(name)
        attributes = _object(message, "properties", path, problems)
    elif kind == "identify":
        event_type, attributes = "identify", {"traits": _object(message, "traits", path, problems)}
    elif kind in ("page", "screen"):
        event_type = f"{kind}.viewed"
        attributes = {**_object(message, "properties", path, problems)}
        if isinstance(message.get("name"), str):
            attributes.setdefault("name", message["name"])
    elif kind == "group":
        event_type = "group.identified"
        attributes = {"group_id": str(message.get("groupId", "")), "traits": _object(message, "traits", path, problems)}
    else:
        event_type, attributes = "alias", {"previous_id": str(message.get("previousId", ""))}
    when = message.get("timestamp") or message.get("originalTimestamp")
    if when is not None and not isinstance(when, str):
        problems.append(FieldViolation(f"{path}timestamp", "timestamp must be an ISO-8601 string", "WRONG_TYPE"))
    if problems:
        return None, original, problems
    event = event_pb2.Event(event_id=message_id, event_type=event_type, subject_id=str(subject), source="segment")
    try:
        json_format.ParseDict({"attributes": attributes}, event, ignore_unknown_fields=False)
    except json_format.ParseError:
        return None, original, [FieldViolation(f"{path}properties", "properties must be JSON values", "INVALID")]
    if when:
        try:
            event.occurred_at.FromJsonString(_rfc3339(when))
        except ValueError:
            return None, original, [FieldViolation(f"{path}timestamp", "timestamp must be ISO-8601, for example 2025-01-01T12:00:00Z", "INVALID_TIMESTAMP")]
    return event, original, []


def _rfc3339(text: str) -> str:
    # Segment libraries send Python-style isoformat with +00:00 offsets and
    # microseconds; protobuf wants RFC 3339, which that is, except a missing offset.
    return text if re.search(r"(Z|[+-]\d\d:\d\d)$", text) else text + "Z"
