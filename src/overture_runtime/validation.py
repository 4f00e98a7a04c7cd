"""Checks shared by every servicer's input validation, and page tokens.

Each check records a :class:`~overture_runtime.errors.FieldViolation` in a
:class:`~overture_runtime.errors.Violations` collector instead of raising, so
that one answer reports every problem of a request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sized
from typing import Any

from google.protobuf import descriptor, field_mask_pb2, struct_pb2

from overture.common.v1 import field_violation_pb2, messaging_pb2
from overture.rules.v1 import profile_pb2

from . import limits
from .errors import FieldViolation, InvalidArgument, Violations

__all__ = [
    "NAME_PATTERN",
    "check_batch",
    "check_identifier",
    "check_name",
    "check_profile",
    "check_read_mask",
    "check_reason",
    "check_struct",
    "decode_page_token",
    "encode_page_token",
    "page_size",
    "to_proto_violations",
]

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
"""Names of rule sets, journeys, rules and steps: lower-case, digits, dashes."""
_ID_MAX = limits.IDENTIFIER


def check_name(v: Violations, field: str, value: str, *, required: bool = True) -> None:
    """A resource name: ``[a-z][a-z0-9-]{0,62}``."""
    if not value:
        if required:
            v.add(field, f"{field} is required", "REQUIRED")
        return
    if not NAME_PATTERN.fullmatch(value):
        v.add(field, f"{field} must be lower-case letters, digits and dashes, starting with a letter, at most 63 characters", "INVALID_NAME")


def check_identifier(v: Violations, field: str, value: str, *, required: bool = True) -> None:
    """An opaque id (subject id, event id): 1 to 256 printable characters."""
    if not value:
        if required:
            v.add(field, f"{field} is required", "REQUIRED")
        return
    if len(value) > _ID_MAX:
        v.add(field, f"{field} must be at most {_ID_MAX} characters", "TOO_LONG")
    elif not value.isprintable():
        v.add(field, f"{field} must not contain control characters", "INVALID_CHARACTERS")


def check_struct(v: Violations, field: str, value: struct_pb2.Struct, *, max_bytes: int, max_depth: int = 16) -> None:
    """A ``Struct`` within a serialized size and nesting depth."""
    size = value.ByteSize()
    if size > max_bytes:
        v.add(field, f"{field} is {size} bytes; the limit is {max_bytes}", "TOO_LARGE")
        return
    if _depth(value) > max_depth:
        v.add(field, f"{field} nests deeper than {max_depth} levels", "TOO_DEEP")


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, struct_pb2.Struct):
        return max((_depth(item, level + 1) for item in value.fields.values()), default=level + 1)
    if isinstance(value, struct_pb2.ListValue):
        return max((_depth(item, level + 1) for item in value.values), default=level + 1)
    if isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            return _depth(value.struct_value, level)
        if kind == "list_value":
            return _depth(value.list_value, level)
    return level


def check_reason(v: Violations, reason: str, *, required: bool = True, maximum: int = limits.REASON) -> None:
    """A human reason for an audited change: present (unless optional) and at most *maximum* characters."""
    if required and not reason.strip():
        v.add("reason", "reason is required", "REQUIRED")
    elif len(reason) > maximum:
        v.add("reason", f"reason must be at most {maximum} characters", "TOO_LONG")


def check_batch(v: Violations, field: str, items: Sized, *, maximum: int = 1000) -> None:
    """A batch of 1 to *maximum* items."""
    if not len(items):
        v.add(field, f"{field} must hold 1 to {maximum} items", "REQUIRED")
    elif len(items) > maximum:
        v.add(field, f"at most {maximum} {field} per call; split the batch", "TOO_MANY")


def check_read_mask(v: Violations, field: str, mask: field_mask_pb2.FieldMask, message: descriptor.Descriptor) -> frozenset[str] | None:
    """The top-level fields of *message* a read mask asks for (AIP-157); None
    when it asks for all of them (unset or empty). An unknown or nested path,
    or one named twice, is a violation of ``field.paths[i]``."""
    if not mask.paths:
        return None
    if len(mask.paths) > len(message.fields):
        v.add(f"{field}.paths", f"at most {len(message.fields)} paths, one per field of {message.name}", "TOO_MANY")
        return frozenset()
    seen: set[str] = set()
    for i, path in enumerate(mask.paths):
        if path not in message.fields_by_name:
            shown = path[:64].encode("unicode_escape").decode("ascii")[:64]
            v.add(f"{field}.paths[{i}]", f"{message.name} has no top-level field {shown!r}", "UNKNOWN_FIELD")
        elif path in seen:
            v.add(f"{field}.paths[{i}]", f"{path!r} is named twice", "DUPLICATE")
        seen.add(path)
    return frozenset(seen)


def to_proto_violations(violations: Iterable[FieldViolation]) -> list[field_violation_pb2.FieldViolation]:
    """Field violations as the proto that per-item results carry."""
    return [field_violation_pb2.FieldViolation(field=v.field, description=v.description, reason=v.reason) for v in violations]


def page_size(v: Violations, value: int, *, default: int = 20, maximum: int = 100) -> int:
    """The page size of a List call: 0 means *default*; negative or above *maximum* is invalid."""
    if value < 0 or value > maximum:
        v.add("page_size", f"page_size must be between 0 and {maximum}", "OUT_OF_RANGE")
        return default
    return value or default


def encode_page_token(cursor: dict[str, Any]) -> str:
    """An opaque page token for *cursor*."""
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(token: str, **fields: type[int] | type[str]) -> dict[str, Any]:
    """The cursor of a page token, whose *fields* must have the given types
    (``after=str``); an empty token is the first page (an empty dict).

    A token this service did not issue, or one that decodes to other fields
    or types, is INVALID_ARGUMENT: its values go into SQL comparisons."""
    if not token:
        return {}
    if len(token) > limits.PAGE_TOKEN:
        raise InvalidArgument("page_token is not a token this service issued", violations=[_bad_token()])
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as error:
        raise InvalidArgument(
            "page_token is not a token this service issued", violations=[_bad_token()]
        ) from error
    if not isinstance(cursor, dict) or set(cursor) != set(fields) or not all(_typed(cursor[k], t) for k, t in fields.items()):
        raise InvalidArgument("page_token is not a token this service issued", violations=[_bad_token()])
    return cursor


def _typed(value: Any, expected: type[int] | type[str]) -> bool:
    if expected is int:
        return type(value) is int and 0 <= value <= 2**63 - 1
    return isinstance(value, str) and 0 < len(value) <= limits.IDENTIFIER and "\x00" not in value


def _bad_token() -> FieldViolation:
    return FieldViolation("page_token", "page_token is not a token this service issued", "INVALID_PAGE_TOKEN")


def check_profile(v: Violations, field: str, profile: profile_pb2.Profile, *, subject_id: str, max_bytes: int = 32 * 1024) -> None:
    """A profile a caller sends to be decided or walked on instead of the
    stored one (dry runs, previews): the request's subject's, traits within
    *max_bytes*, each consent naming its channel and purpose."""
    if profile.subject_id and profile.subject_id != subject_id:
        v.add(f"{field}.subject_id", "the profile must be the subject's (or leave its subject_id empty)", "SUBJECT_MISMATCH")
    if profile.traits.fields:
        check_struct(v, f"{field}.traits", profile.traits, max_bytes=max_bytes)
    for i, consent in enumerate(profile.consents):
        if consent.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add(f"{field}.consents[{i}].channel", "channel is required", "REQUIRED")
        check_name(v, f"{field}.consents[{i}].purpose", consent.purpose.replace("_", "-"))
