"""Protobuf messages as canonical JSON, dicts and digests.

The canonical form (proto field names, sorted keys, no whitespace, defaults
omitted) is what rule set and journey digests are computed over, so that
the same content always has the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

__all__ = ["canonical_json", "digest", "from_json", "struct_from_dict", "struct_to_dict", "to_dict"]

_M = TypeVar("_M", bound=Message)


def to_dict(message: Message) -> dict[str, Any]:
    """The message as a JSON-compatible dict with proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def canonical_json(message: Message) -> str:
    """The canonical JSON text of *message*."""
    return json.dumps(to_dict(message), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(message: Message) -> str:
    """The sha256 of the canonical JSON of *message*, lower-case hex."""
    return hashlib.sha256(canonical_json(message).encode()).hexdigest()


def from_json(text: str | Mapping[str, Any], message_type: type[_M]) -> _M:
    """Parse JSON text or a dict into a new *message_type*."""
    message = message_type()
    if isinstance(text, str):
        json_format.Parse(text, message)
    else:
        json_format.ParseDict(dict(text), message)
    return message


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A ``Struct`` as a plain dict (numbers are floats, as in JSON): what
    ``json_format.MessageToDict`` gives, ValueError for an infinite or NaN
    number included, walked directly (MessageToDict's generic printer was
    the most of rendering a message's scope)."""
    return {key: _plain(item) for key, item in value.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number - number != 0:  # inf or NaN: what JSON cannot hold
            raise ValueError("a Struct number is infinite or NaN, which JSON cannot hold")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None  # null_value, or unset


def struct_from_dict(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A plain dict as a ``Struct``."""
    result = struct_pb2.Struct()
    if value:
        result.update(value)
    return result
