"""CloudEvents 1.0 over HTTP (structured, batch and binary modes) as
Overture events.

- ``id`` and ``source`` together identify an event (CloudEvents makes ``id``
  unique only within its source): the event id is ``<source>#<id>``.
- ``type`` is the event type (aliases apply); ``subject`` the subject (required
  by Overture); ``time`` when it happened; JSON ``data`` (an object) the
  attributes. Extension attributes are kept under ``attributes.ce``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from overture.common.v1 import event_pb2
from overture_runtime.errors import FieldViolation

__all__ = ["from_binary", "from_structured"]

_CONTEXT = {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"}


def from_structured(obj: Any, path: str = "") -> tuple[event_pb2.Event | None, list[FieldViolation]]:
    """One structured-mode CloudEvent (a JSON object) as an event, or its problems."""
    if not isinstance(obj, dict):
        return None, [FieldViolation(path.rstrip(".") or "body", "a CloudEvent must be a JSON object", "WRONG_TYPE")]
    return _event(obj, path)


def from_binary(headers: Mapping[str, str], body: Any) -> tuple[event_pb2.Event | None, list[FieldViolation]]:
    """A binary-mode CloudEvent (``ce-*`` headers, the data as the body) as an event."""
    obj: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.lower().startswith("ce-")}
    obj["data"] = body
    return _event(obj, "")


def _event(obj: dict[str, Any], path: str) -> tuple[event_pb2.Event | None, list[FieldViolation]]:
    problems: list[FieldViolation] = []
    for key in ("id", "source", "type", "specversion"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            problems.append(FieldViolation(f"{path}{key}", f"{key} is required (a string)", "REQUIRED"))
    if obj.get("specversion") not in (None, "1.0") and isinstance(obj.get("specversion"), str):
        problems.append(FieldViolation(f"{path}specversion", "only CloudEvents 1.0 is supported", "UNSUPPORTED_VERSION"))
    if not isinstance(obj.get("subject"), str) or not obj.get("subject"):
        problems.append(FieldViolation(f"{path}subject", "subject is required: it names the person the event is about", "REQUIRED"))
    data = obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(FieldViolation(f"{path}data", "data must be a JSON object", "WRONG_TYPE"))
    if "data_base64" in obj:
        problems.append(FieldViolation(f"{path}data_base64", "binary data is not supported; send JSON data", "UNSUPPORTED"))
    if problems:
        return None, problems
    extensions = {k: v for k, v in obj.items() if k not in _CONTEXT}
    attributes = dict(data)
    if extensions:
        attributes["ce"] = extensions
    event = event_pb2.Event(event_id=f"{obj['source']}#{obj['id']}", event_type=obj["type"], subject_id=obj["subject"], source="cloudevents")
    try:
        json_format.ParseDict({"attributes": attributes}, event)
    except json_format.ParseError:
        return None, [FieldViolation(f"{path}data", "data must hold JSON values", "INVALID")]
    if obj.get("time"):
        try:
            event.occurred_at.FromJsonString(str(obj["time"]))
        except ValueError:
            return None, [FieldViolation(f"{path}time", "time must be an RFC 3339 timestamp", "INVALID_TIMESTAMP")]
    return event, []
