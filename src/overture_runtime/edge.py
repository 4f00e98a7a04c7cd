"""The checks every input gets at the edge, driven by message descriptors.

Every request that reaches a servicer has passed :func:`check_request` (the
auth interceptor runs it right after decoding), and every HTTP JSON body has
passed :func:`loads`. So no servicer or domain module has to think about
what PostgreSQL, JSON or ``datetime`` cannot hold:

- Timestamps inside :data:`~overture_runtime.limits.TIMESTAMP_MIN` ..
  ``TIMESTAMP_MAX`` with nanos in range; Durations from zero to
  ``DURATION_MAX`` (from minus it in a field marked
  ``(overture.common.v1.signed) = true``), with nanos of the same sign.
- Strings without NUL characters or lone surrogates, within the limit their
  field's name has in :mod:`overture_runtime.limits`.
- Floats and doubles finite, also inside ``Struct`` values; ``Struct`` keys
  and strings clean; nesting at most ``STRUCT_DEPTH``.
- Enum fields set to a number the enum declares.

Items of a repeated field marked ``(overture.common.v1.per_item) = true``
are skipped by :func:`check_request`: a batch RPC answers each item on its
own, and checks it with :func:`item_violations` so that one bad item never
fails its neighbours.

Field paths use the proto's field names: ``events[3].attributes.revenue``.
The checks walk only the fields that are set.

Every check runs twice over, for speed: a request is first walked by
:func:`_ok`, a plain yes-or-no mirror of the checks that builds no paths and
no violations and follows a plan made once per message type (what kind of
check each field needs, its limit, and whether the type holds anything to
check at all). Only when it answers no do the generators below walk the
message again to name every violation, so what a caller sees is theirs
alone. ``tests/unit/runtime/test_edge.py`` checks the two agree on hostile
messages of every request type. Not thread-safe to mutate the plan cache
from several threads; it is filled once per message type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor, struct_pb2
from google.protobuf.message import Message

from overture.common.v1 import validation_pb2

from . import limits
from .errors import FieldViolation, InvalidArgument

__all__ = ["StructShape", "Unrepresentable", "check_request", "item_violations", "json_violations", "loads", "message_violations"]

_F = descriptor.FieldDescriptor
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROTO_TS_MIN, _PROTO_TS_MAX = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31T23:59:59, per timestamp.proto
_TS_MIN = int(limits.TIMESTAMP_MIN.timestamp())
_TS_MAX = int(limits.TIMESTAMP_MAX.timestamp())
_DURATION_MAX = int(limits.DURATION_MAX.total_seconds())
_STRUCT_TYPES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
_per_item: dict[str, bool] = {}
_signed: dict[str, bool] = {}


def check_request(request: Message) -> None:
    """Raise :class:`InvalidArgument` naming every field of *request* that
    no Overture service can take (per-item batch fields excepted)."""
    if _ok(request, True, 0):
        return
    found = list(_message(request, "", skip_items=True))
    if found:
        raise InvalidArgument(f"the request is invalid: {found[0].field}: {found[0].description}", violations=found)


class StructShape:
    """How the ``Struct`` values a check walked nest and spread, measured in
    that same walk, for a caller with limits of its own (ingest's attributes):
    the deepest nesting (a Struct or ListValue counts one level; a top-level
    Struct is depth 1), the most keys of any one object, the most items of
    any one list. Filled only when the check finds nothing wrong."""

    __slots__ = ("depth", "items", "keys")

    def __init__(self) -> None:
        self.depth = self.keys = self.items = 0


def item_violations(item: Message, *, prefix: str = "", shape: StructShape | None = None) -> list[FieldViolation]:
    """What is wrong with one item of a per-item batch field. When it is
    clean and *shape* is given, *shape* holds the shape of its Structs."""
    if _ok(item, False, 0, shape):
        return []
    return list(_message(item, prefix, skip_items=False))


def message_violations(message: Message, *, prefix: str = "") -> list[FieldViolation]:
    """What is wrong anywhere in *message*, batch items included."""
    if _ok(message, False, 0):
        return []
    return list(_message(message, prefix, skip_items=False))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_map(field: Any) -> bool:
    return bool(field.message_type.GetOptions().map_entry)


def _is_per_item(field: Any) -> bool:
    known = _per_item.get(field.full_name)
    if known is None:
        known = _per_item[field.full_name] = bool(field.GetOptions().Extensions[validation_pb2.per_item])
    return known


def _is_signed(field: Any) -> bool:
    known = _signed.get(field.full_name)
    if known is None:
        known = _signed[field.full_name] = bool(field.GetOptions().Extensions[validation_pb2.signed])
    return known


def _message(message: Message, prefix: str, *, skip_items: bool, depth: int = 0) -> Iterator[FieldViolation]:
    if depth > limits.STRUCT_DEPTH:
        yield FieldViolation(prefix or "request", f"nests deeper than {limits.STRUCT_DEPTH} levels", "TOO_DEEP")
        return
    for field, value in message.ListFields():
        path = _join(prefix, field.name)
        repeated = field.is_repeated
        if field.type == _F.TYPE_MESSAGE:
            if _is_map(field):
                yield from _map(field, value, path, depth)
            elif repeated:
                if skip_items and _is_per_item(field):
                    continue
                for i, item in enumerate(value):
                    yield from _submessage(field, item, f"{path}[{i}]", skip_items, depth)
            else:
                yield from _submessage(field, value, path, skip_items, depth)
        elif repeated:
            for i, item in enumerate(value):
                yield from _scalar(field, item, f"{path}[{i}]")
        else:
            yield from _scalar(field, value, path)


def _map(field: Any, value: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        item_path = f"{path}[{_show_key(key)}]" if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(key, str):
            yield from _string(key, item_path, limits.TEXT)
        if value_field.type == _F.TYPE_MESSAGE:
            yield from _submessage(value_field, item, item_path, False, depth)
        else:
            yield from _scalar(value_field, item, item_path)


def _submessage(field: Any, value: Message, path: str, skip_items: bool, depth: int) -> Iterator[FieldViolation]:
    name = field.message_type.full_name
    if name == "google.protobuf.Timestamp":
        yield from _timestamp(value, path)
    elif name == "google.protobuf.Duration":
        yield from _duration(value, path, signed=_is_signed(field))
    elif name in _STRUCT_TYPES:
        yield from _struct(value, path, depth)
    else:
        yield from _message(value, path, skip_items=skip_items, depth=depth + 1)


def _scalar(field: Any, value: Any, path: str) -> Iterator[FieldViolation]:
    kind = field.type
    if kind == _F.TYPE_STRING:
        yield from _string(value, path, limits.string_limit(field.full_name, field.name))
    elif kind == _F.TYPE_ENUM:
        if value not in field.enum_type.values_by_number:
            names = ", ".join(v.name for v in field.enum_type.values if v.number)
            yield FieldViolation(path, f"{value} is not a {field.enum_type.name}; use one of {names}", "UNKNOWN_ENUM_VALUE")
    elif kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        if not math.isfinite(value):
            yield FieldViolation(path, "must be a finite number", "NOT_FINITE")


def _string(value: str, path: str, maximum: int) -> Iterator[FieldViolation]:
    if len(value) > maximum:
        yield FieldViolation(path, f"must be at most {maximum} characters", "TOO_LONG")
    if "\x00" in value:
        yield FieldViolation(path, "must not contain NUL characters", "INVALID_CHARACTERS")
    elif _SURROGATE.search(value):
        yield FieldViolation(path, "must be valid Unicode (a lone surrogate was found)", "INVALID_CHARACTERS")


def _timestamp(value: Any, path: str) -> Iterator[FieldViolation]:
    if not 0 <= value.nanos <= 999_999_999:
        yield FieldViolation(path, "nanos must be between 0 and 999,999,999", "INVALID_TIMESTAMP")
    elif not _PROTO_TS_MIN <= value.seconds <= _PROTO_TS_MAX:
        yield FieldViolation(path, "is not a valid Timestamp (years 1 to 9999)", "INVALID_TIMESTAMP")
    elif not _TS_MIN <= value.seconds < _TS_MAX:
        yield FieldViolation(
            path, f"must be between {limits.TIMESTAMP_MIN:%Y-%m-%d} and {limits.TIMESTAMP_MAX:%Y-%m-%d}", "OUT_OF_RANGE"
        )


def _duration(value: Any, path: str, *, signed: bool = False) -> Iterator[FieldViolation]:
    seconds = abs(value.seconds)
    if not -999_999_999 <= value.nanos <= 999_999_999 or (value.seconds and value.nanos and (value.seconds < 0) != (value.nanos < 0)):
        yield FieldViolation(path, "is not a valid Duration (nanos out of range or of the other sign)", "INVALID_DURATION")
    elif not signed and (value.seconds < 0 or value.nanos < 0):
        yield FieldViolation(path, "must not be negative", "OUT_OF_RANGE")
    elif seconds > _DURATION_MAX or (seconds == _DURATION_MAX and value.nanos):
        yield FieldViolation(path, f"must be at most {limits.DURATION_MAX.days} days{' either way' if signed else ''}", "OUT_OF_RANGE")


def _show_key(key: str) -> str:
    return key if _KEY.fullmatch(key) and len(key) <= 64 else json.dumps(key[:64] + ("…" if len(key) > 64 else ""))


def _struct(value: Any, path: str, depth: int) -> Iterator[FieldViolation]:
    # Iterative: a Struct can nest up to protobuf's recursion limit.
    stack: list[tuple[Any, str, int]] = [(value, path, depth)]
    while stack:
        node, at, level = stack.pop()
        if isinstance(node, struct_pb2.Value):
            kind = node.WhichOneof("kind")
            if kind == "number_value":
                if not math.isfinite(node.number_value):
                    yield FieldViolation(at, "must be a finite number (not NaN or Infinity)", "NOT_FINITE")
                continue
            if kind == "string_value":
                yield from _string(node.string_value, at, limits.TEXT)
                continue
            if kind == "struct_value":
                node = node.struct_value
            elif kind == "list_value":
                node = node.list_value
            else:
                continue
        if level - depth >= limits.STRUCT_DEPTH:
            yield FieldViolation(at, f"nests deeper than {limits.STRUCT_DEPTH} levels", "TOO_DEEP")
            continue
        if isinstance(node, struct_pb2.Struct):
            for key, item in node.fields.items():
                child = _child(at, key)
                for problem in _string(key, child, limits.TEXT):
                    yield FieldViolation(child, f"key {problem.description}", problem.reason)
                stack.append((item, child, level + 1))
        elif isinstance(node, struct_pb2.ListValue):
            for i, item in enumerate(node.values):
                stack.append((item, f"{at}[{i}]", level + 1))


# -- the fast yes-or-no walk -------------------------------------------------

_STRING, _ENUM, _FLOAT, _TIMESTAMP, _DURATION, _SIGNED_DURATION, _STRUCT, _MESSAGE, _MAP, _OTHER = range(10)


class _FieldPlan:
    """What one field needs checked."""

    __slots__ = ("enum_numbers", "kind", "limit", "per_item", "repeated", "value")

    def __init__(self, field: Any) -> None:
        self.repeated = bool(field.is_repeated)
        self.per_item = False
        self.limit = 0
        self.enum_numbers: frozenset[int] = frozenset()
        self.value: _FieldPlan | None = None
        if field.type == _F.TYPE_MESSAGE:
            name = field.message_type.full_name
            self.per_item = self.repeated and not _is_map(field) and _is_per_item(field)
            if _is_map(field):
                self.kind = _MAP
                self.repeated = False
                self.limit = limits.TEXT  # of the keys
                self.value = _FieldPlan(field.message_type.fields_by_name["value"])
            elif name == "google.protobuf.Timestamp":
                self.kind = _TIMESTAMP
            elif name == "google.protobuf.Duration":
                self.kind = _SIGNED_DURATION if _is_signed(field) else _DURATION
            elif name in _STRUCT_TYPES:
                self.kind = _STRUCT
            else:
                self.kind = _MESSAGE
        elif field.type == _F.TYPE_STRING:
            self.kind = _STRING
            self.limit = limits.string_limit(field.full_name, field.name)
        elif field.type == _F.TYPE_ENUM:
            self.kind = _ENUM
            self.enum_numbers = frozenset(field.enum_type.values_by_number)
        elif field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
            self.kind = _FLOAT
        else:
            self.kind = _OTHER


_plans: dict[str, dict[Any, _FieldPlan] | None] = {}


def _plan(descriptor: Any) -> dict[Any, _FieldPlan] | None:
    """The field plans of a message type, or None when nothing it can hold
    needs a check (only integers, booleans and bytes, at any depth)."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
    _plans[name] = {}  # a placeholder while recursive types are planned
    fields = {field: _FieldPlan(field) for field in descriptor.fields}
    plan: dict[Any, _FieldPlan] | None = fields
    if all(f.kind == _OTHER or (f.kind == _MESSAGE and _plan(field.message_type) is None) for field, f in fields.items()):
        plan = None
    _plans[name] = plan
    return plan


def _string_ok(value: str, maximum: int) -> bool:
    if len(value) > maximum or "\x00" in value:
        return False
    return value.isascii() or not _SURROGATE.search(value)


def _ok(message: Message, skip_items: bool, depth: int, shape: StructShape | None = None) -> bool:
    """Whether :func:`_message` would find nothing wrong with *message*."""
    if depth > limits.STRUCT_DEPTH:
        return False
    plan = _plan(message.DESCRIPTOR)
    if plan is None:
        return True
    for field, value in message.ListFields():
        f = plan.get(field) or _FieldPlan(field)
        kind = f.kind
        if kind == _STRING:
            if f.repeated:
                if not all(_string_ok(v, f.limit) for v in value):
                    return False
            elif not _string_ok(value, f.limit):
                return False
        elif f.per_item and skip_items:
            continue  # a batch field: its servicer checks each item
        elif kind == _MESSAGE:
            if f.repeated:
                for item in value:
                    if not _ok(item, skip_items, depth + 1, shape):
                        return False
            elif not _ok(value, skip_items, depth + 1, shape):
                return False
        elif kind == _ENUM:
            if f.repeated:
                if not all(v in f.enum_numbers for v in value):
                    return False
            elif value not in f.enum_numbers:
                return False
        elif kind == _TIMESTAMP:
            for item in value if f.repeated else (value,):
                if not (0 <= item.nanos <= 999_999_999 and _TS_MIN <= item.seconds < _TS_MAX):
                    return False
        elif kind == _DURATION:
            for item in value if f.repeated else (value,):
                seconds, nanos = item.seconds, item.nanos
                if not (0 <= nanos <= 999_999_999 and 0 <= seconds and (seconds < _DURATION_MAX or (seconds == _DURATION_MAX and not nanos))):
                    return False
        elif kind == _SIGNED_DURATION:  # rare (offsets): the full check, which builds nothing when all is well
            for item in value if f.repeated else (value,):
                if next(_duration(item, "", signed=True), None) is not None:
                    return False
        elif kind == _STRUCT:
            for item in value if f.repeated else (value,):
                if not _struct_ok(item, depth, shape):
                    return False
        elif kind == _FLOAT:
            if f.repeated:
                if not all(math.isfinite(v) for v in value):
                    return False
            elif not math.isfinite(value):
                return False
        elif kind == _MAP:
            assert f.value is not None
            if not _map_ok(f.value, value, depth):
                return False
    return True


def _map_ok(value_plan: _FieldPlan, entries: Any, depth: int) -> bool:
    for key, item in entries.items():
        if isinstance(key, str) and not _string_ok(key, limits.TEXT):
            return False
        kind = value_plan.kind
        if kind == _MESSAGE:
            if not _ok(item, False, depth + 1):
                return False
        elif kind == _STRING:
            if not _string_ok(item, value_plan.limit):
                return False
        elif kind == _ENUM:
            if item not in value_plan.enum_numbers:
                return False
        elif kind == _FLOAT:
            if not math.isfinite(item):
                return False
        elif kind in (_TIMESTAMP, _DURATION, _STRUCT):
            if list(_submessage_of(kind, item, depth)):
                return False
    return True


def _submessage_of(kind: int, value: Any, depth: int) -> Iterator[FieldViolation]:
    if kind == _TIMESTAMP:
        yield from _timestamp(value, "")
    elif kind == _DURATION:
        yield from _duration(value, "")
    else:
        yield from _struct(value, "", depth)


def _struct_ok(value: Any, depth: int, shape: StructShape | None = None) -> bool:
    """Whether :func:`_struct` would find nothing wrong, without its paths.
    Values are checked as they are met; only containers go on the stack,
    and only they are measured into *shape*."""
    stack: list[tuple[Any, int]] = []
    if type(value) is struct_pb2.Value:
        if not _value_ok(value, depth, stack):
            return False
    else:
        stack.append((value, depth))
    while stack:
        node, level = stack.pop()
        if level - depth >= limits.STRUCT_DEPTH:
            return False
        if type(node) is struct_pb2.Struct:
            fields = node.fields
            if shape is not None:
                shape.depth = max(shape.depth, level - depth + 1)
                shape.keys = max(shape.keys, len(fields))
            for key in fields:  # keys, then each value: twice as fast as items() on protobuf's maps
                if not _string_ok(key, limits.TEXT) or not _value_ok(fields[key], level + 1, stack):
                    return False
        else:
            if shape is not None:
                shape.depth = max(shape.depth, level - depth + 1)
                shape.items = max(shape.items, len(node.values))
            for item in node.values:
                if not _value_ok(item, level + 1, stack):
                    return False
    return True


def _value_ok(value: Any, level: int, stack: list[tuple[Any, int]]) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "string_value":
        return _string_ok(value.string_value, limits.TEXT)
    if kind == "struct_value":
        stack.append((value.struct_value, level))
    elif kind == "list_value":
        stack.append((value.list_value, level))
    return True


def loads(raw: bytes | str) -> Any:
    """Parse an HTTP JSON body, or raise :class:`InvalidArgument` when it is
    not JSON at all or nests deeper than :data:`~overture_runtime.limits.JSON_DEPTH`.

    Numbers no double can hold (``NaN``, ``Infinity``, ``1e999``, integers
    past 2^63) parse into placeholders that :func:`json_violations` reports
    with their path, so that a batch rejects the one item that holds them
    and keeps its neighbours. Call :func:`json_violations` on every item
    before converting it."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("the body is not valid JSON", reason="MALFORMED_JSON",
                              violations=[FieldViolation("body", "the body is not valid JSON", "MALFORMED_JSON")]) from None
    if _json_depth(value) > limits.JSON_DEPTH:
        raise _too_deep()
    return value


class Unrepresentable:
    """A JSON number that no double holds, kept in place of its value."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"Unrepresentable({self.description!r})"


def _constant(name: str) -> Any:
    return Unrepresentable(f"{name} is not a JSON number")


def _float(text: str) -> float | Unrepresentable:
    number = float(text)
    return number if math.isfinite(number) else Unrepresentable(f"the number {text[:32]} is too large for a double")


def _int(text: str) -> int | Unrepresentable:
    if len(text) > 20 or abs(number := int(text)) > limits.JSON_INTEGER_MAX:
        return Unrepresentable(f"the integer {text[:24]}{'…' if len(text) > 24 else ''} is out of range (at most 2^63-1 in magnitude)")
    return number


def _too_deep() -> InvalidArgument:
    message = f"the body nests deeper than {limits.JSON_DEPTH} levels"
    return InvalidArgument(message, reason="TOO_DEEP", violations=[FieldViolation("body", message, "TOO_DEEP")])


def _json_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if deepest > limits.JSON_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _child(at: str, key: str) -> str:
    if _KEY.fullmatch(key) and len(key) <= 64:
        return f"{at}.{key}" if at else key
    return f"{at}[{_show_key(key)}]"


def json_violations(value: Any, path: str = "") -> list[FieldViolation]:
    """What in a value parsed by :func:`loads` cannot be stored: numbers no
    double holds, NUL characters and lone surrogates in keys or strings, and
    nesting past ``STRUCT_DEPTH``. *path* names the value (empty for a body)."""
    found: list[FieldViolation] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, at, level = stack.pop()
        if isinstance(node, str):
            found.extend(_string(node, at or "body", limits.TEXT))
        elif isinstance(node, Unrepresentable):
            found.append(FieldViolation(at or "body", node.description, "NOT_FINITE"))
        elif isinstance(node, dict | list):
            if level >= limits.STRUCT_DEPTH:
                found.append(FieldViolation(at or "body", f"nests deeper than {limits.STRUCT_DEPTH} levels", "TOO_DEEP"))
                continue
            if isinstance(node, dict):
                for key, item in node.items():
                    child = _child(at, key)
                    found.extend(FieldViolation(child, f"key {p.description}", p.reason) for p in _string(key, child, limits.TEXT))
                    stack.append((item, child, level + 1))
            else:
                stack.extend((item, f"{at}[{i}]", level + 1) for i, item in enumerate(node))
    found.sort(key=lambda v: v.field)
    return found
