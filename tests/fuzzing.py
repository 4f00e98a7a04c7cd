"""Hypothesis strategies built from protobuf descriptors, for fuzzing RPCs.

Everything here is driven by the message descriptor, so a new RPC, message
or field is fuzzed without new test code. Three kinds of request:

- :func:`hostile_messages`: any value the wire can carry: integers at their
  edges, strings with NUL and control characters, huge and unusual Unicode,
  enums with unknown numbers, Timestamps and Durations out of range, Structs
  holding NaN and Infinity or nested deeper than any limit, page tokens that
  decode to JSON of the wrong types, big repeated fields and maps.
- :func:`plausible_messages`: values that look valid (names and ids from
  :class:`Seeds`, defined enum values, times near now), so that a request
  gets past validation into the domain code.
- :func:`mutated_messages`: a plausible message with exactly one field,
  anywhere in the tree, replaced by a hostile value.

:func:`wire_requests` turns any of these into bytes and adds what only the
wire can say: invalid UTF-8 in a string field at any depth, truncation,
flipped bytes, wrong wire types and plain random bytes.

Without hypothesis, :func:`sweep` walks every field of a
:func:`canonical_message` through the :func:`edge_values` of its type, one
field at a time: deterministic, and the way to find every field that lacks
a check. :func:`rpc_methods` lists every RPC of the generated ``*_pb2``
modules; :func:`fuzz_settings` bounds a search and makes it repeatable.

Caveats: strategies are cached per descriptor and per :class:`Seeds`
object, so a :class:`Seeds` must not change while a hypothesis test runs
(take a :meth:`Seeds.snapshot` first). Never pass a dataclass holding
seeds or big values as a hypothesis test argument: hypothesis prints
dataclasses field by field with every failure. Not thread-safe.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import json
import math
import os
import pkgutil
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

__all__ = [
    "FIELD_MAX_DEPTH",
    "MAX_REQUEST_BYTES",
    "Method",
    "Seeds",
    "canonical_message",
    "describe_path",
    "edge_values",
    "field_paths",
    "fuzz_settings",
    "hostile_field",
    "hostile_messages",
    "hostile_strings",
    "json_values",
    "long_strings",
    "mutated_messages",
    "page_tokens",
    "plausible_messages",
    "replace",
    "rpc_methods",
    "seeded",
    "serialize",
    "struct_of",
    "sweep",
    "wire_requests",
]

F = FieldDescriptor
_T = TypeVar("_T", bound=Callable[..., Any])
FIELD_MAX_DEPTH = 6
"""How deep hostile and plausible messages nest our own message types."""

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_SIGNED32_TYPES = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
_SIGNED64_TYPES = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
_UNSIGNED32_TYPES = {F.TYPE_UINT32, F.TYPE_FIXED32}
_UNSIGNED64_TYPES = {F.TYPE_UINT64, F.TYPE_FIXED64}

TIMESTAMP_MIN = -62_135_596_800
"""0001-01-01T00:00:00Z, the first second a Timestamp may hold."""
TIMESTAMP_MAX = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second a Timestamp may hold."""
DURATION_MAX = 315_576_000_000
"""About 10,000 years, the largest number of seconds a Duration may hold."""
_NANOS_EDGES = (0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, -1_000_000_000, 2**31 - 1, -(2**31))
_TIMESTAMP_SECONDS_EDGES = (0, -1, 1, TIMESTAMP_MIN, TIMESTAMP_MIN - 1, TIMESTAMP_MAX, TIMESTAMP_MAX + 1, 2**63 - 1, -(2**63),
                            2**32, 4_102_444_800, 32_503_680_000)
_DURATION_SECONDS_EDGES = (0, 1, -1, 86_400, -86_400, DURATION_MAX, DURATION_MAX + 1, -DURATION_MAX - 1, 2**63 - 1, -(2**63), 2**31, 2**53)
_FLOAT_EDGES = (math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 2.0**53 + 1, 1e16)
_CURSOR_KEYS = ("before", "after", "offset", "cursor", "id", "version", "sequence", "page", "token", "")


_HOSTILE_STRINGS: tuple[str, ...] = (
    "", " ", "\x00", "a\x00b", "\x00" * 64, "\x01\x02\x1b[31m\x7f", "\t\n\r\x0b\x0c", "line\nbreak", "\u0085\u2028\u2029",
    "\u200b", "\u202e\u202d", "\ufeff", "\uffff\ufffe", "\U0010ffff", "\U0001f4a5" * 40, "e\u0301" * 50, "\uff21", "\u01c5", "\u0130", "\u00df",
    "%00", "%s%n%x", "'; DROP TABLE events; --", "\\", '"', "\"'`", "../../etc/passwd", "{{ 7*7 }}", "${jndi:x}", "*", "?",
    "null", "NaN", "Infinity", "-1", "0", "1e999", "true", "[]", "{}", "a.b", "A", "-", "a-", "a--b", "1abc",
)
"""Strings that have broken parsers, databases, logs and terminals before."""
_LONG: tuple[tuple[int, str], ...] = ((63, "a"), (64, "a"), (65, "a"), (256, "x"), (257, "x"), (300, "x"), (1025, "x"), (4097, "x"),
                                      (300, "\u00e9"), (300, "\x00"), (70_000, "x"), (1_100_000, "x"))
"""Long strings as (length, character): one past each usual column limit, and one past the 1 MiB mark."""


def long_strings() -> st.SearchStrategy[str]:
    """Strings just past the usual length limits (built on draw, so that reprs stay short)."""
    return st.sampled_from(_LONG).map(lambda pair: pair[1] * pair[0])


def hostile_strings(*, max_size: int = 40) -> st.SearchStrategy[str]:
    """Any text a proto string can hold: the known troublemakers, long
    strings, control characters, arbitrary Unicode (never lone surrogates,
    which protobuf cannot encode; :func:`wire_requests` sends those as bytes)."""
    return st.one_of(
        st.sampled_from(_HOSTILE_STRINGS),
        long_strings(),
        st.text(max_size=max_size),
        st.text(st.characters(max_codepoint=0x20), min_size=1, max_size=8),
        st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Mn", "Co"]), min_size=1, max_size=8),
    )


def _int_range(fd: FieldDescriptor) -> tuple[int, int]:
    if fd.type in _SIGNED32_TYPES:
        return _INT32
    if fd.type in _SIGNED64_TYPES:
        return _INT64
    if fd.type in _UNSIGNED32_TYPES:
        return _UINT32
    return _UINT64


def _edge_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, 2, 10, 100, 101, 1000, 1001, 2**31 - 1, 2**31, -(2**31), 2**53, low, low + 1, high, high - 1)
                    if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def json_values(*, hostile: bool = True, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """JSON-shaped values for Structs. With *hostile*, numbers include NaN
    and the infinities and text includes NUL and the other troublemakers."""
    if hostile:
        numbers: st.SearchStrategy[Any] = st.one_of(st.sampled_from(_FLOAT_EDGES), st.floats())
        strings = hostile_strings(max_size=20)
    else:
        numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
        strings = st.text(st.characters(categories=["L", "N"]), max_size=12)
    leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(strings, children, max_size=4)), max_leaves=max_leaves)


def _fill_value(target: Message, value: Any) -> None:
    """Set a ``google.protobuf.Value`` from a JSON-shaped Python value, without
    the checks ``Struct.update`` would make."""
    if value is None:
        target.null_value = 0  # type: ignore[attr-defined]
    elif isinstance(value, bool):
        target.bool_value = value  # type: ignore[attr-defined]
    elif isinstance(value, (int, float)):
        target.number_value = float(value)  # type: ignore[attr-defined]
    elif isinstance(value, str):
        target.string_value = value  # type: ignore[attr-defined]
    elif isinstance(value, list):
        target.list_value.SetInParent()  # type: ignore[attr-defined]
        for item in value:
            _fill_value(target.list_value.values.add(), item)  # type: ignore[attr-defined]
    else:
        target.struct_value.SetInParent()  # type: ignore[attr-defined]
        for key, item in value.items():
            _fill_value(target.struct_value.fields[key], item)  # type: ignore[attr-defined]


def struct_of(descriptor: Descriptor, value: Any) -> Message:
    """A ``Struct``, ``Value`` or ``ListValue`` (per *descriptor*) holding the JSON-shaped *value*."""
    result = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Value":
        _fill_value(result, value)
    elif descriptor.full_name == "google.protobuf.ListValue":
        for item in value if isinstance(value, list) else [value]:
            _fill_value(result.values.add(), item)  # type: ignore[attr-defined]
    else:
        for key, item in (value if isinstance(value, dict) else {"value": value}).items():
            _fill_value(result.fields[key], item)  # type: ignore[attr-defined]
    return result


def _nested(descriptor: Descriptor, depth: int, leaf: Any, as_list: bool) -> Message:
    """A Struct (or Value, ListValue) nested *depth* levels deep, built
    iteratively: deeper than Python's recursion limit if need be."""
    result = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        value = result.fields["v"]  # type: ignore[attr-defined]
    elif descriptor.full_name == "google.protobuf.ListValue":
        value = result.values.add()  # type: ignore[attr-defined]
    else:
        value = result
    for _ in range(depth):
        value = value.list_value.values.add() if as_list else value.struct_value.fields["v"]
    _fill_value(value, leaf)
    return result


def _structs(descriptor: Descriptor, *, hostile: bool) -> st.SearchStrategy[Message]:
    shape = st.dictionaries(hostile_strings(max_size=12) if hostile else st.sampled_from(("plan", "email", "first_name", "country", "a")),
                            json_values(hostile=hostile), max_size=5)
    if descriptor.full_name != "google.protobuf.Struct":
        shape = json_values(hostile=hostile)
    plain = shape.map(lambda value: struct_of(descriptor, value))
    if not hostile:
        return plain
    deep = st.builds(lambda depth, leaf, as_list: _nested(descriptor, depth, leaf, as_list),
                     st.sampled_from((15, 16, 17, 32, 45, 60, 99, 101, 1000)), st.sampled_from((None, 1.0, math.nan, "\x00")), st.booleans())
    wide = st.sampled_from((200, 5000)).map(lambda n: struct_of(descriptor, {f"k{i}": i for i in range(n)}))
    big = st.sampled_from((33 * 1024, 1_100_000)).map(lambda n: struct_of(descriptor, {"blob": "x" * n}))
    return st.one_of(plain, deep, wide, big)


def _set(cls: type[Message], **values: int) -> Message:
    message = cls()
    for name, value in values.items():
        setattr(message, name, value)
    return message


def _timestamps(descriptor: Descriptor, *, hostile: bool) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    if not hostile:
        return st.builds(lambda offset, nanos: _set(cls, seconds=now + offset, nanos=nanos),
                         st.integers(-30 * 86_400, 86_400), st.integers(0, 999_999_999))
    seconds = st.one_of(st.sampled_from(_TIMESTAMP_SECONDS_EDGES), st.integers(*_INT64), st.integers(TIMESTAMP_MIN, TIMESTAMP_MAX))
    nanos = st.one_of(st.sampled_from(_NANOS_EDGES), st.integers(*_INT32))
    return st.builds(lambda s, n: _set(cls, seconds=s, nanos=n), seconds, nanos)


def _durations(descriptor: Descriptor, *, hostile: bool) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if not hostile:
        return st.builds(lambda s: _set(cls, seconds=s), st.sampled_from((1, 60, 3600, 86_400)) | st.integers(0, 7 * 86_400))
    seconds = st.one_of(st.sampled_from(_DURATION_SECONDS_EDGES), st.integers(*_INT64))
    nanos = st.one_of(st.sampled_from(_NANOS_EDGES), st.integers(*_INT32))
    return st.builds(lambda s, n: _set(cls, seconds=s, nanos=n), seconds, nanos)


def page_tokens() -> st.SearchStrategy[str]:
    """Page tokens no server issued: base64 of JSON cursors of the wrong
    shape or types (``{"before": 5}``, ``{"after": "x"}``, a list, NaN), and
    text that is not base64 at all."""
    wrong = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(_FLOAT_EDGES), hostile_strings(max_size=12),
                      st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
    cursors = st.one_of(st.dictionaries(st.sampled_from(_CURSOR_KEYS) | st.text(max_size=8), wrong, min_size=1, max_size=3), wrong)
    encoded = cursors.map(lambda c: base64.urlsafe_b64encode(json.dumps(c, allow_nan=True).encode()).decode().rstrip("="))
    nested = st.integers(1_000, 20_000).map(lambda n: base64.urlsafe_b64encode(b'{"before":' + b"[" * n + b"]" * n + b"}").decode())
    raw = st.binary(max_size=48).map(lambda b: base64.urlsafe_b64encode(b).decode())
    return st.one_of(encoded, nested, raw, hostile_strings(max_size=30), st.sampled_from(("%%%", "====", "e30", "bnVsbA", "W10", "=")))


def _is_map(fd: Any) -> bool:
    return bool(fd.message_type is not None and fd.message_type.GetOptions().map_entry)


def _sub(fd: Any) -> Descriptor:
    """The message type of a message field."""
    descriptor: Descriptor | None = fd.message_type
    assert descriptor is not None, fd.full_name
    return descriptor


def _enum(fd: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field."""
    assert fd.enum_type is not None, fd.full_name
    return fd.enum_type


def _enum_values(fd: FieldDescriptor, *, hostile: bool) -> st.SearchStrategy[int]:
    defined = [v.number for v in _enum(fd).values]
    if not hostile:
        return st.sampled_from([n for n in defined if n != 0] or defined)
    unknown = sorted({max(defined) + 1, -1, 999, 2**31 - 1, -(2**31)} - set(defined))
    return st.one_of(st.sampled_from(defined), st.sampled_from(unknown), st.integers(*_INT32))


def _scalar(fd: FieldDescriptor, *, hostile: bool, seeds: Seeds) -> st.SearchStrategy[Any]:
    if fd.type == F.TYPE_ENUM:
        return _enum_values(fd, hostile=hostile)
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type == F.TYPE_STRING:
        if hostile:
            return page_tokens() | hostile_strings() if fd.name.endswith("page_token") else hostile_strings()
        return seeds.strings_for(fd.name)
    if fd.type == F.TYPE_BYTES:
        return st.binary(max_size=64) if not hostile else st.binary(max_size=64) | st.sampled_from((70_000, 300)).map(lambda n: b"\xff" * n)
    if fd.type == F.TYPE_DOUBLE:
        return st.sampled_from(_FLOAT_EDGES) | st.floats() if hostile else st.floats(0, 100)
    if fd.type == F.TYPE_FLOAT:
        return st.sampled_from(_FLOAT_EDGES[:4]) | st.floats(width=32) if hostile else st.floats(0, 100, width=32)
    low, high = _int_range(fd)
    if not hostile:
        return st.sampled_from((1, 0, 2, 5, 10, 100))
    return _edge_ints(low, high)


@dataclass
class Seeds:
    """Plausible values per field name (``subject_id``, ``rule_set``, …) and
    example messages per message type, which plausible messages draw from.

    :meth:`harvest` adds every string of a message (for example the ids in a
    response), so that later requests name things that exist.
    """

    strings: dict[str, list[str]] = field(default_factory=dict)
    """Plausible strings per field name."""
    messages: dict[str, list[Message]] = field(default_factory=dict)
    """Example messages per message full name."""
    per_field: int = 20
    """How many strings to keep per field name (the first ones win)."""

    def add(self, name: str, *values: str) -> None:
        """Remember *values* as plausible for fields called *name*."""
        known = self.strings.setdefault(name, [])
        for value in values:
            if value and value not in known and len(known) < self.per_field:
                known.append(value)

    def add_message(self, message: Message) -> None:
        """Remember *message* as a plausible value of its type (and harvest its strings)."""
        self.messages.setdefault(message.DESCRIPTOR.full_name, []).append(message)
        self.harvest(message)

    def harvest(self, message: Message) -> None:
        """Remember every non-empty, printable string field of *message*, at any
        depth, under its field name; a ``name`` field also counts as the
        snake-case name of its message type (``Journey.name`` as ``journey``)."""
        for fd, value in message.ListFields():
            if _is_map(fd):
                continue
            if fd.type == F.TYPE_STRING:
                for text in value if fd.is_repeated else [value]:
                    if text.isprintable() and len(text) <= 256:
                        self.add(fd.name, text)
                        if fd.name == "name":
                            self.add(_snake(message.DESCRIPTOR.name), text)
            elif fd.type == F.TYPE_MESSAGE and not _sub(fd).full_name.startswith("google.protobuf."):
                for item in value if fd.is_repeated else [value]:
                    self.harvest(item)

    def snapshot(self) -> Seeds:
        """A copy that later :meth:`add` calls do not change."""
        return Seeds({k: list(v) for k, v in self.strings.items()}, {k: list(v) for k, v in self.messages.items()}, self.per_field)

    def strings_for(self, name: str) -> st.SearchStrategy[str]:
        """Plausible strings for a field called *name*: known ones first, else
        a fresh resource-like name (ids and request ids are unique)."""
        fresh = st.from_regex(re.compile(r"[a-z][a-z0-9-]{0,11}"), fullmatch=True)
        if name in ("request_id", "idempotency_key") or name.endswith("request_id"):
            fresh = st.uuids().map(str)
        known = self.strings.get(name)
        return st.one_of(st.sampled_from(known), st.sampled_from(known), st.sampled_from(known), fresh) if known else fresh


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _well_known(descriptor: Descriptor, *, hostile: bool) -> st.SearchStrategy[Message] | None:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamps(descriptor, hostile=hostile)
    if name == "google.protobuf.Duration":
        return _durations(descriptor, hostile=hostile)
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return _structs(descriptor, hostile=hostile)
    if name == "google.protobuf.FieldMask":
        cls = message_factory.GetMessageClass(descriptor)
        return st.lists(hostile_strings(max_size=20) if hostile else st.sampled_from([f.name for f in descriptor.fields]), max_size=4).map(
            lambda paths: cls(paths=paths))
    if name == "google.protobuf.Any":
        cls = message_factory.GetMessageClass(descriptor)
        return st.builds(lambda url, value: cls(type_url=url, value=value),
                         hostile_strings(max_size=40) | st.just("type.googleapis.com/google.protobuf.Struct"), st.binary(max_size=64))
    return None


_CACHE: dict[tuple[str, str, int, int], tuple[Seeds | None, st.SearchStrategy[Any]]] = {}
"""Strategies per (kind, message type, depth, seeds); the entry holds its seeds, so their id is never reused."""


def _cached(kind: str, descriptor: Descriptor, depth: int, seeds: Seeds | None, build: Callable[[], st.SearchStrategy[Any]]
            ) -> st.SearchStrategy[Any]:
    key = (kind, descriptor.full_name, depth, id(seeds))
    if key not in _CACHE:
        _CACHE[key] = (seeds, build())
    return _CACHE[key][1]


def hostile_field(fd: FieldDescriptor, *, depth: int = 0, seeds: Seeds | None = None) -> st.SearchStrategy[Any]:
    """Hostile values for one field: a list for a repeated field, a dict for a
    map, a message for a message field, else a scalar."""
    seeds = seeds if seeds is not None else _NO_SEEDS
    if _is_map(fd):
        key_fd, value_fd = _sub(fd).fields_by_name["key"], _sub(fd).fields_by_name["value"]
        return st.dictionaries(_single(key_fd, depth, seeds, hostile=True), _single(value_fd, depth + 1, seeds, hostile=True), max_size=4)
    element = _single(fd, depth, seeds, hostile=True)
    if not fd.is_repeated:
        return element
    many = st.tuples(element, st.sampled_from((101, 1001))).map(lambda pair: [pair[0]] * (pair[1] if _size(pair[0]) <= 2048 else 2))
    return st.one_of(st.lists(element, max_size=4), many)


def _size(value: Any) -> int:
    """Roughly how many bytes *value* takes on the wire."""
    if isinstance(value, Message):
        return int(value.ByteSize())
    return len(value) if isinstance(value, (str, bytes)) else 8


MAX_REQUEST_BYTES = 6 * 1024 * 1024
"""Requests larger than this are not built: every server refuses anything past 4 MiB the same way,
and copies of a large item in a long repeated field could otherwise take gigabytes."""


def serialize(message: Message) -> bytes | None:
    """*message* on the wire, or None when it would exceed :data:`MAX_REQUEST_BYTES`."""
    return message.SerializeToString() if message.ByteSize() <= MAX_REQUEST_BYTES else None


def _single(fd: FieldDescriptor, depth: int, seeds: Seeds, *, hostile: bool) -> st.SearchStrategy[Any]:
    if fd.type == F.TYPE_MESSAGE:
        maker = hostile_messages if hostile else plausible_messages
        return maker(_sub(fd), depth=depth + 1, seeds=seeds)
    return _scalar(fd, hostile=hostile, seeds=seeds)


def _assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    """Set *fd* of *message* to *value* (a list, dict, message or scalar)."""
    message.ClearField(fd.name)
    target = getattr(message, fd.name)
    if _is_map(fd):
        value_fd = _sub(fd).fields_by_name["value"]
        for key, item in value.items():
            if value_fd.type == F.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif fd.is_repeated:
        if fd.type == F.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif fd.type == F.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, fd.name, value)


def _build(descriptor: Descriptor, choices: Sequence[tuple[FieldDescriptor, Any]]) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for fd, value in choices:
        _assign(message, fd, value)
    return message


def _groups(descriptor: Descriptor) -> tuple[list[FieldDescriptor], list[list[FieldDescriptor]]]:
    """The fields outside real oneofs, and the members of each real oneof
    (proto3 ``optional`` fields are their own synthetic oneof: counted as plain)."""
    plain = [fd for fd in descriptor.fields if fd.containing_oneof is None or len(fd.containing_oneof.fields) == 1]
    oneofs = [list(o.fields) for o in descriptor.oneofs if len(o.fields) > 1]
    return plain, oneofs


def _tagged(fd: FieldDescriptor, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[FieldDescriptor, Any]]:
    """Values of *fd* paired with the field."""
    return values.map(lambda value: (fd, value))


def hostile_messages(descriptor: Descriptor, *, depth: int = 0, seeds: Seeds | None = None) -> st.SearchStrategy[Message]:
    """Messages of *descriptor* with any subset of fields set to hostile
    values, at most one member per oneof, nesting to :data:`FIELD_MAX_DEPTH`."""
    seeds = seeds if seeds is not None else _NO_SEEDS
    known = _well_known(descriptor, hostile=True)
    if known is not None:
        return known
    if depth > FIELD_MAX_DEPTH:
        return st.just(message_factory.GetMessageClass(descriptor)())

    def build() -> st.SearchStrategy[Message]:
        plain, oneofs = _groups(descriptor)
        optional = {fd.name: _tagged(fd, hostile_field(fd, depth=depth, seeds=seeds)) for fd in plain}
        for members in oneofs:
            oneof = members[0].containing_oneof
            assert oneof is not None
            optional[f"oneof:{oneof.name}"] = st.one_of([_tagged(fd, hostile_field(fd, depth=depth, seeds=seeds)) for fd in members])
        return st.fixed_dictionaries({}, optional=optional).map(lambda chosen: _build(descriptor, list(chosen.values())))

    return _cached("hostile", descriptor, depth, seeds, build)


def plausible_messages(descriptor: Descriptor, *, depth: int = 0, seeds: Seeds | None = None) -> st.SearchStrategy[Message]:
    """Messages of *descriptor* that look valid: strings from *seeds* by
    field name, defined non-zero enum values, small counts, times near now,
    JSON-safe Structs, one member per oneof; or a copy of an example message
    of this type from *seeds*. Every field is likely to be set."""
    seeds = seeds if seeds is not None else _NO_SEEDS
    known = _well_known(descriptor, hostile=False)
    if known is not None:
        return known
    if depth > FIELD_MAX_DEPTH:
        return st.just(message_factory.GetMessageClass(descriptor)())

    def build() -> st.SearchStrategy[Message]:
        plain, oneofs = _groups(descriptor)

        @st.composite
        def draw_message(draw: st.DrawFn) -> Message:
            chosen: list[tuple[FieldDescriptor, Any]] = []
            for fd in plain:
                if draw(st.integers(0, 9)) == 0:  # nearly always set; shrinks towards unset
                    continue
                chosen.append((fd, draw(_plausible_field(fd, depth, seeds))))
            for members in oneofs:
                fd = draw(st.sampled_from(members))
                chosen.append((fd, draw(_plausible_field(fd, depth, seeds))))
            return _build(descriptor, chosen)

        examples = seeds.messages.get(descriptor.full_name)
        if examples:
            return st.one_of(st.sampled_from(examples).map(_copy), draw_message())
        return draw_message()

    return _cached("plausible", descriptor, depth, seeds, build)


def _copy(message: Message) -> Message:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _plausible_field(fd: FieldDescriptor, depth: int, seeds: Seeds) -> st.SearchStrategy[Any]:
    if _is_map(fd):
        key_fd, value_fd = _sub(fd).fields_by_name["key"], _sub(fd).fields_by_name["value"]
        return st.dictionaries(_single(key_fd, depth, seeds, hostile=False), _single(value_fd, depth + 1, seeds, hostile=False), max_size=2)
    element = _single(fd, depth, seeds, hostile=False)
    return st.lists(element, min_size=1, max_size=3) if fd.is_repeated else element


Path = tuple[tuple[Any, int | None], ...]
"""A field path: each step is a field and, for a repeated field, an element index (None: the whole field)."""


def _paths(message: Message, prefix: Path = (), depth: int = 0, *, first_only: bool = False) -> Iterable[Path]:
    """Every field of *message* that a mutation may replace: each field, and
    the fields inside set sub-messages and repeated elements (not maps; with
    *first_only*, inside the first element of each repeated field only)."""
    if depth > FIELD_MAX_DEPTH or message.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return
    for fd in message.DESCRIPTOR.fields:
        yield (*prefix, (fd, None))
        if fd.type != F.TYPE_MESSAGE or _is_map(fd):
            continue
        if fd.is_repeated:
            for index, item in enumerate(getattr(message, fd.name)):
                yield (*prefix, (fd, index))
                yield from _paths(item, (*prefix, (fd, index)), depth + 1, first_only=first_only)
                if first_only:
                    break
        elif message.HasField(fd.name):
            yield from _paths(getattr(message, fd.name), (*prefix, (fd, None)), depth + 1, first_only=first_only)


def _replace(message: Message, path: Path, value: Any) -> None:
    (fd, index), rest = path[0], path[1:]
    if rest:
        child = getattr(message, fd.name)[index] if index is not None else getattr(message, fd.name)
        _replace(child, rest, value)
    elif index is not None:
        container = getattr(message, fd.name)
        if fd.type == F.TYPE_MESSAGE:
            container[index].CopyFrom(value)
        else:
            container[index] = value
    else:
        _assign(message, fd, value)


def describe_path(path: Path) -> str:
    """A path as text, ``events[1].attributes``."""
    return ".".join(fd.name + (f"[{index}]" if index is not None else "") for fd, index in path)


def mutated_messages(descriptor: Descriptor, *, seeds: Seeds | None = None) -> st.SearchStrategy[tuple[str, Message]]:
    """A plausible message with one field (at any depth) replaced by a
    hostile value, and the path of that field."""
    seeds = seeds if seeds is not None else _NO_SEEDS

    @st.composite
    def draw_mutated(draw: st.DrawFn) -> tuple[str, Message]:
        message = draw(plausible_messages(descriptor, seeds=seeds))
        paths = list(_paths(message))
        if not paths:
            return "", message
        path = draw(st.sampled_from(paths))
        fd, index = path[-1]
        if index is not None:
            value = draw(_single(fd, len(path), seeds, hostile=True))
        else:
            value = draw(hostile_field(fd, depth=len(path), seeds=seeds))
        _replace(message, path, value)
        return describe_path(path), message

    return draw_mutated()


def field_paths(message: Message) -> list[Path]:
    """Every field path of *message* that a mutation may replace (see :func:`mutated_messages`)."""
    return list(_paths(message))


def replace(message: Message, path: Path, value: Any) -> Message:
    """A copy of *message* with the field at *path* set to *value* (None clears it)."""
    result = _copy(message)
    if value is None:
        *parents, (fd, index) = path
        holder = result
        for parent, position in parents:
            holder = getattr(holder, parent.name)[position] if position is not None else getattr(holder, parent.name)
        if index is None:
            holder.ClearField(fd.name)
        elif fd.type == F.TYPE_MESSAGE:
            getattr(holder, fd.name)[index].Clear()
        return result
    _replace(result, path, value)
    return result


def canonical_message(descriptor: Descriptor, *, seeds: Seeds | None = None, depth: int = 0) -> Message:
    """One plausible message of *descriptor*, the same every time: the first
    example of its type in *seeds*, else every field set to a first plausible
    value (the first seed string of its name, the first non-zero enum value,
    1, now, a minute, ``{"plan": "pro"}``, one element per repeated field and
    map, the first member of each oneof)."""
    seeds = seeds if seeds is not None else _NO_SEEDS
    examples = seeds.messages.get(descriptor.full_name)
    if examples:
        return _copy(examples[0])
    message = message_factory.GetMessageClass(descriptor)()
    known = _well_known(descriptor, hostile=False)
    if known is not None:
        return _canonical_well_known(descriptor)
    if depth > FIELD_MAX_DEPTH:
        return message
    plain, oneofs = _groups(descriptor)
    for fd in [*plain, *(members[0] for members in oneofs)]:
        _assign(message, fd, _canonical_field(fd, seeds, depth))
    return message


def _canonical_well_known(descriptor: Descriptor) -> Message:
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _set(cls, seconds=int(dt.datetime.now(dt.UTC).timestamp()))
    if name == "google.protobuf.Duration":
        return _set(cls, seconds=60)
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return struct_of(descriptor, {"plan": "pro"} if name == "google.protobuf.Struct" else "pro")
    return cls()


def _canonical_scalar(fd: FieldDescriptor, seeds: Seeds) -> Any:
    if fd.type == F.TYPE_ENUM:
        return next((v.number for v in _enum(fd).values if v.number != 0), 0)
    if fd.type == F.TYPE_STRING:
        known = seeds.strings.get(fd.name)
        return known[0] if known else "fuzz"
    if fd.type == F.TYPE_BYTES:
        return b"fuzz"
    if fd.type == F.TYPE_BOOL:
        return False
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return 1.0
    return 1


def _canonical_single(fd: FieldDescriptor, seeds: Seeds, depth: int) -> Any:
    if fd.type == F.TYPE_MESSAGE:
        return canonical_message(_sub(fd), seeds=seeds, depth=depth + 1)
    return _canonical_scalar(fd, seeds)


def _canonical_field(fd: FieldDescriptor, seeds: Seeds, depth: int) -> Any:
    if _is_map(fd):
        key_fd, value_fd = _sub(fd).fields_by_name["key"], _sub(fd).fields_by_name["value"]
        return {_canonical_single(key_fd, seeds, depth): _canonical_single(value_fd, seeds, depth)}
    value = _canonical_single(fd, seeds, depth)
    return [value] if fd.is_repeated else value


def _page_token(cursor: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


_EDGE_STRINGS: tuple[tuple[str, str], ...] = (
    ("empty", ""), ("a NUL", "a\x00b"), ("an escape sequence", "\x1b[31m"), ("65 characters", "x" * 65),
    ("300 characters", "x" * 300), ("1,025 characters", "x" * 1025), ("70,000 characters", "x" * 70_000),
)
_EDGE_PAGE_TOKENS: tuple[tuple[str, str], ...] = (
    ("not base64", "%%%"), ('{"before": 5}', _page_token({"before": 5})), ('{"after": "x"}', _page_token({"after": "x"})),
    ('{"offset": "x"}', _page_token({"offset": "x"})), ('{"before": null}', _page_token({"before": None})),
    ('{"after": 1e30}', _page_token({"after": 1e30})), ('{"offset": -1}', _page_token({"offset": -1})), ("[]", _page_token([])),
    ('{"before": [1]}', _page_token({"before": [1]})),
)


def _edge_singles(fd: FieldDescriptor) -> list[tuple[str, Any]]:
    """The values one element of *fd* is swept through."""
    if fd.type == F.TYPE_MESSAGE:
        descriptor = _sub(fd)
        cls = message_factory.GetMessageClass(descriptor)
        name = descriptor.full_name
        now = int(dt.datetime.now(dt.UTC).timestamp())
        if name == "google.protobuf.Timestamp":
            return [("nanos -1", _set(cls, seconds=now, nanos=-1)), ("nanos 10^9", _set(cls, seconds=now, nanos=1_000_000_000)),
                    ("after 9999-12-31", _set(cls, seconds=TIMESTAMP_MAX + 1)), ("before 0001-01-01", _set(cls, seconds=TIMESTAMP_MIN - 1)),
                    ("2^63-1 seconds", _set(cls, seconds=2**63 - 1)), ("0001-01-01", _set(cls, seconds=TIMESTAMP_MIN)),
                    ("9999-12-31T23:59:59", _set(cls, seconds=TIMESTAMP_MAX))]
        if name == "google.protobuf.Duration":
            return [("2^63-1 seconds", _set(cls, seconds=2**63 - 1)), ("-1 second", _set(cls, seconds=-1)),
                    ("mixed signs", _set(cls, seconds=1, nanos=-1)), ("past 10,000 years", _set(cls, seconds=DURATION_MAX + 1)),
                    ("nanos 10^9", _set(cls, nanos=1_000_000_000)), ("10,000 years", _set(cls, seconds=DURATION_MAX)), ("zero", cls())]
        if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
            return [("NaN", struct_of(descriptor, {"x": math.nan})), ("Infinity", struct_of(descriptor, {"x": math.inf})),
                    ("-Infinity", struct_of(descriptor, [-math.inf])), ("1e308", struct_of(descriptor, {"x": 1e308})),
                    ("a NUL in a key", struct_of(descriptor, {"a\x00b": 1})), ("a NUL in a value", struct_of(descriptor, {"x": "a\x00b"})),
                    ("an empty key", struct_of(descriptor, {"": 1})), ("17 levels deep", _nested(descriptor, 17, 1, False)),
                    ("45 levels deep", _nested(descriptor, 45, 1, True)), ("40 KB", struct_of(descriptor, {"blob": "x" * 40_000})),
                    ("5,000 keys", struct_of(descriptor, {f"k{i}": i for i in range(5000)})),
                    ("400 NaN values", struct_of(descriptor, {f"k{i}": math.nan for i in range(400)}))]
        return []
    if fd.type == F.TYPE_STRING:
        return [*_EDGE_STRINGS, *(_EDGE_PAGE_TOKENS if fd.name.endswith("page_token") else ())]
    if fd.type == F.TYPE_ENUM:
        defined = {v.number for v in _enum(fd).values}
        return [(f"unknown {n}", n) for n in (999, -1, max(defined) + 1) if n not in defined]
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return [("NaN", math.nan), ("Infinity", math.inf), ("-Infinity", -math.inf)]
    if fd.type == F.TYPE_BYTES:
        return [("70,000 bytes", b"\xff" * 70_000)]
    if fd.type == F.TYPE_BOOL:
        return [("true", True)]
    low, high = _int_range(fd)
    return [(str(v), v) for v in sorted({-1, low, high, 2**31 - 1, 10**6} ) if low <= v <= high]


def edge_values(fd: FieldDescriptor, *, element: bool = False, seeds: Seeds | None = None) -> list[tuple[str, Any]]:
    """The values a field is swept through, each with a label: a cleared
    field, and per type the edges that break parsers and databases (see
    :func:`sweep`). With *element*, the values of one element of a repeated field."""
    seeds = seeds if seeds is not None else _NO_SEEDS
    if element:
        return _edge_singles(fd)
    if _is_map(fd):
        key_fd, value_fd = _sub(fd).fields_by_name["key"], _sub(fd).fields_by_name["value"]
        value = _canonical_single(value_fd, seeds, 0)
        keys = [(label, key) for label, key in _edge_singles(key_fd) if label != "70,000 characters"]
        return [("empty", {}), *((f"key {label}", {key: value}) for label, key in keys)]
    if fd.is_repeated:
        element_value = _canonical_single(fd, seeds, 0)
        many_bad = [("400 items with a NUL", ["a\x00b"] * 400)] if fd.type == F.TYPE_STRING else []
        return [("empty", []), ("1,001 items", [element_value] * 1001), *many_bad, *((f"one item {label}", [v]) for label, v in _edge_singles(fd))]
    return [("cleared", None), *_edge_singles(fd)]


def sweep(message: Message, *, seeds: Seeds | None = None) -> Iterable[tuple[str, Message]]:
    """Copies of *message*, each with one field (at any depth) set to one of
    its :func:`edge_values`, labelled ``events[0].occurred_at = nanos -1``
    (inside the first element of each repeated field only).

    Sub-messages that *message* leaves out (another member of a oneof, an
    empty repeated field, an unset message) are filled with their
    :func:`canonical_message` in turn, and swept inside too, so that the
    sweep covers every field of the type, not only those of the example."""
    yield from _sweep_within(message, (), seeds, 0)


def _sweep_within(message: Message, prefix: Path, seeds: Seeds | None, depth: int) -> Iterable[tuple[str, Message]]:
    inner = _at(message, prefix)
    for path in _paths(inner, prefix, len(prefix), first_only=True):
        fd, index = path[-1]
        for label, value in edge_values(fd, element=index is not None, seeds=seeds):
            yield f"{describe_path(path)} = {label}", replace(message, path, value)
    if depth >= 3:
        return
    for gap in _gaps(inner, prefix, len(prefix)):
        fd, _ = gap[-1]
        filled_value = canonical_message(_sub(fd), seeds=seeds)
        filled = replace(message, gap, [filled_value] if fd.is_repeated else filled_value)
        yield from _sweep_within(filled, (*gap[:-1], (fd, 0)) if fd.is_repeated else gap, seeds, depth + 1)


def _at(message: Message, path: Path) -> Message:
    for fd, index in path:
        message = getattr(message, fd.name)[index] if index is not None else getattr(message, fd.name)
    return message


def _gaps(message: Message, prefix: Path, depth: int) -> Iterable[Path]:
    """Paths to the sub-messages (not well-known types or maps) that *message* leaves unset or empty, at any depth."""
    if depth > FIELD_MAX_DEPTH:
        return
    for fd in message.DESCRIPTOR.fields:
        if fd.type != F.TYPE_MESSAGE or _is_map(fd) or _sub(fd).full_name.startswith("google.protobuf."):
            continue
        if fd.is_repeated:
            items = getattr(message, fd.name)
            if not items:
                yield (*prefix, (fd, None))
            else:
                yield from _gaps(items[0], (*prefix, (fd, 0)), depth + 1)
        elif message.HasField(fd.name):
            yield from _gaps(getattr(message, fd.name), (*prefix, (fd, None)), depth + 1)
        else:
            yield (*prefix, (fd, None))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        out.append(bits | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


_BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"a\xe2\x82", b"\xf4\x90\x80\x80", b"\x80")
"""Invalid UTF-8: stray bytes, an overlong NUL, lone surrogates (CESU-8), a truncated sequence, past U+10FFFF."""


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[tuple[FieldDescriptor, ...]]:
    """Paths through message fields down to every string field (map keys included)."""
    found: list[tuple[FieldDescriptor, ...]] = []
    if depth > 4:
        return found
    for fd in descriptor.fields:
        if fd.type == F.TYPE_STRING:
            found.append((fd,))
        elif fd.type == F.TYPE_MESSAGE:
            found += [(fd, *rest) for rest in _string_paths(_sub(fd), depth + 1)]
    return found


def _splice(path: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    """Wire bytes that, appended to a message, set the string at *path* to
    *payload* (singular sub-messages merge; repeated ones gain an element)."""
    data = _tag(path[-1].number, 2) + _varint(len(payload)) + payload
    for fd in reversed(path[:-1]):
        data = _tag(fd.number, 2) + _varint(len(data)) + data
    return data


def wire_requests(descriptor: Descriptor, messages: st.SearchStrategy[Message]) -> st.SearchStrategy[tuple[str, bytes]]:
    """Request bytes with a label: a serialized message from *messages*, or
    one damaged on the wire (invalid UTF-8 in a string field at any depth,
    truncated, a flipped byte, a wrong wire type, an unknown field), or random bytes."""
    strings = _string_paths(descriptor)
    serialized = messages.map(lambda m: serialize(m) or b"")
    kinds: list[st.SearchStrategy[tuple[str, bytes]]] = [serialized.map(lambda b: ("message", b))]
    if strings:
        kinds.append(st.builds(
            lambda base, path, bad: (f"invalid UTF-8 in {'.'.join(f.name for f in path)}", base + _splice(path, bad)),
            serialized, st.sampled_from(strings), st.sampled_from(_BAD_UTF8)))
    kinds.append(st.builds(lambda base, cut: ("truncated", base[: max(0, len(base) - cut)]), serialized, st.integers(1, 8)))
    kinds.append(st.builds(lambda base, at, byte: ("flipped byte", _flip(base, at, byte)), serialized, st.integers(0, 2**16), st.integers(0, 255)))
    if descriptor.fields:
        kinds.append(st.builds(lambda base, fd, wt: (f"wire type {wt} for {fd.name}", base + _tag(fd.number, wt) + b"\x01\x01"),
                               serialized, st.sampled_from(list(descriptor.fields)), st.sampled_from((0, 1, 2, 3, 4, 5, 6, 7))))
    kinds.append(st.builds(lambda base, number: ("unknown field", base + _tag(number, 0) + b"\x01"), serialized, st.integers(1000, 2**29 - 1)))
    kinds.append(st.binary(max_size=256).map(lambda b: ("random bytes", b)))
    return st.one_of(kinds)


def _flip(data: bytes, at: int, byte: int) -> bytes:
    if not data:
        return bytes([byte])
    at %= len(data)
    return data[:at] + bytes([byte]) + data[at + 1:]


class Method:
    """One RPC of the generated code. (Not a dataclass, so that hypothesis
    prints it as its path, not field by field.)"""

    __slots__ = ("descriptor", "service")

    def __init__(self, service: ServiceDescriptor, descriptor: MethodDescriptor) -> None:
        self.service = service
        """Its service."""
        self.descriptor = descriptor
        """Its descriptor."""

    @property
    def path(self) -> str:
        """The gRPC method path, ``/overture.rules.v1.RulesService/Evaluate``."""
        return f"/{self.service.full_name}/{self.descriptor.name}"

    @property
    def package(self) -> str:
        """The second part of the package, ``rules`` for ``overture.rules.v1``."""
        return self.service.full_name.split(".")[1]

    @property
    def unary(self) -> bool:
        """Whether the RPC takes one request and answers one response."""
        return not (self.descriptor.client_streaming or self.descriptor.server_streaming)

    @property
    def request_class(self) -> type[Message]:
        """The request message class."""
        return message_factory.GetMessageClass(self.descriptor.input_type)

    @property
    def response_class(self) -> type[Message]:
        """The response message class."""
        return message_factory.GetMessageClass(self.descriptor.output_type)

    def option(self, extension: Any) -> Any:
        """The value of a method option (an extension of ``MethodOptions``)."""
        return self.descriptor.GetOptions().Extensions[extension]

    def __str__(self) -> str:
        return self.path.lstrip("/")

    def __repr__(self) -> str:
        return f"Method({self})"


def _modules(package: ModuleType) -> Iterable[ModuleType]:
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(info.name)


def rpc_methods(package: ModuleType, *, prefix: str = "overture.") -> list[Method]:
    """Every RPC of every service in the ``*_pb2`` modules under *package*
    whose full name starts with *prefix*, in a stable order."""
    found: dict[str, Method] = {}
    for module in _modules(package):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name.startswith(prefix):
                for method in service.methods:
                    found[f"{service.full_name}/{method.name}"] = Method(service, method)
    return [found[key] for key in sorted(found)]


def fuzz_settings(*, max_examples: int, deadline: dt.timedelta, **overrides: Any) -> settings:
    """Hypothesis settings for a bounded fuzz: no example database and a
    derandomized search, so CI runs the same examples every time.

    ``OVERTURE_FUZZ_SEED=random`` searches with a fresh seed (hypothesis
    prints it with any failure); ``OVERTURE_FUZZ_SEED=<n>`` replays seed *n*
    (decorate the test with :func:`seeded`); ``OVERTURE_FUZZ_EXAMPLES=<factor>``
    multiplies *max_examples* for a longer local run.
    """
    factor = float(os.environ.get("OVERTURE_FUZZ_EXAMPLES", "1"))
    seeded = os.environ.get("OVERTURE_FUZZ_SEED", "")
    values: dict[str, Any] = dict(
        max_examples=max(1, int(max_examples * factor)), deadline=deadline, database=None, derandomize=not seeded,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
        print_blob=bool(seeded),
    )
    values.update(overrides)
    return settings(**values)


def seeded(test: _T) -> _T:
    """Apply ``OVERTURE_FUZZ_SEED=<n>`` to a hypothesis test (a no-op otherwise)."""
    value = os.environ.get("OVERTURE_FUZZ_SEED", "")
    return seed(int(value))(test) if value.isdigit() else test


_NO_SEEDS = Seeds()
