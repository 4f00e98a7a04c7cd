"""Reading rule sets and journeys from YAML into their protos.

The YAML is the proto's JSON mapping, with conveniences for people writing
it by hand: enum values may be given by their short name in any case
(``channel: email`` for ``CHANNEL_EMAIL``), durations may use ``s``, ``m``,
``h`` or ``d`` (``delay: {duration: 2d}``), and text fields take what was
written (``start: 22:00`` is the text ``22:00``, not YAML's sexagesimal
number).

The file is read as a YAML node tree (PyYAML's ``compose``), so every
value keeps its line and column. Each problem, whether found here or
reported by a server as a field path (``spec.steps[2].send.template``), is
shown as ``file:line:column: steps[2].send.template: what is wrong``, in
the file's own field names.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from .output import Problem

__all__ = ["SpecFile", "SpecFileError", "load_spec", "parse_message", "parse_spec", "read_spec"]

_M = TypeVar("_M", bound=Message)
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)([smhd])")  # negative for an offset before a time (a trait date's)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NULL = "tag:yaml.org,2002:null"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
_PLAIN = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")


class SpecFileError(Exception):
    """A file could not be read as the expected definition; :attr:`problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.text() for p in problems))
        self.problems = tuple(problems)
        """Every problem found, in file order, each with its line and column when known."""


@dataclass(frozen=True)
class SpecFile(Generic[_M]):
    """A spec file read into its message, able to place any field path back in the file."""

    path: Path
    """The file."""
    name: str
    """The top-level ``name``."""
    message: _M
    """The rest of the file, as the message."""
    root: yaml.MappingNode
    """The file's YAML node tree, which knows where everything is."""

    def locate(self, field: str, description: str) -> Problem:
        """A problem with *field* (a path as servers and compilers name it: ``spec.steps[2].send.template``) placed in the file.

        ``spec.`` (the request field holding the message) is dropped, and the
        request's name field (``name``, ``rule_set``) is the file's ``name``.
        A field the file does not have is placed at its nearest enclosing
        value that it does have.
        """
        tokens = _tokens(field)
        if tokens[:1] == ["spec"]:
            tokens = tokens[1:]
        elif tokens in (["name"], ["rule_set"], ["journey"]):
            tokens = ["name"]
        else:
            return Problem(field, description, file=str(self.path))
        node: yaml.Node = self.root
        anchor: yaml.Node = self.root  # the key naming *node*, where a missing field under it is shown
        shown: list[str | int] = []
        for i, token in enumerate(tokens):
            child = _child(node, token)
            if child is None:
                return self._problem(anchor, _display([*shown, *tokens[i:]]), description)
            key, key_node, node = child
            anchor = key_node or node
            shown.append(key)
        return self._problem(node, _display(shown), description)

    def _problem(self, node: yaml.Node, field: str, description: str) -> Problem:
        return Problem(field, description, file=str(self.path), line=node.start_mark.line + 1, column=node.start_mark.column + 1)


def read_spec(path: Path, message_type: type[_M]) -> SpecFile[_M]:
    """Read *path*: a top-level ``name`` and the fields of *message_type*; raise :class:`SpecFileError` with every problem."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecFileError([Problem("", f"cannot read: {error.strerror or error}", file=str(path))]) from None
    return parse_spec(text, message_type, path=path)


def parse_spec(text: str, message_type: type[_M], *, path: Path) -> SpecFile[_M]:
    """Read *text*, the content of a spec file (*path* names it in problems): as :func:`read_spec`. The console's
    builder reads its form this way, so that a form and a file are read with the same conveniences and checks."""
    return _parse(text, message_type, path=path, named=True)


def parse_message(text: str, message_type: type[_M], *, path: Path) -> _M:
    """Read *text* (YAML or JSON) as one *message_type*, with the conveniences of spec files (enum short names,
    durations like ``2d``) and no ``name``; raise :class:`SpecFileError` with every problem, placed in *path*."""
    return _parse(text, message_type, path=path, named=False).message


def _parse(text: str, message_type: type[_M], *, path: Path, named: bool) -> SpecFile[_M]:
    file = str(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = " ".join(part for part in (error.context, error.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise SpecFileError([Problem("", f"cannot read: not valid YAML: {what}", file=file, line=line, column=column)]) from None
    except yaml.YAMLError as error:
        raise SpecFileError([Problem("", f"cannot read: not valid YAML: {error}", file=file)]) from None
    if not isinstance(root, yaml.MappingNode):
        at = (root.start_mark.line + 1, root.start_mark.column + 1) if root is not None else (0, 0)
        raise SpecFileError([Problem("", "expected a mapping (key: value lines) at the top level", file=file, line=at[0], column=at[1])])
    reader = _Reader(file)
    name, body = "", root
    if named:
        name_node = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "name"), None)
        name = name_node.value if isinstance(name_node, yaml.ScalarNode) and name_node.tag == "tag:yaml.org,2002:str" else ""
        if not name:
            reader.add(name_node or root, "name", "a top-level 'name' is required (text, for example name: marketing-email)")
        body = yaml.MappingNode(root.tag, [(k, v) for k, v in root.value if not (isinstance(k, yaml.ScalarNode) and k.value == "name")],
                                start_mark=root.start_mark, end_mark=root.end_mark)
    data = reader.message(body, message_type.DESCRIPTOR, [])  # type: ignore[arg-type]
    if reader.problems:
        raise SpecFileError(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    message = message_type()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as error:  # not expected: the reader checks what ParseDict would
        raise SpecFileError([Problem("", str(error).rstrip("."), file=file)]) from None
    return SpecFile(path=path, name=name, message=message, root=root)


def load_spec(path: Path, message_type: type[_M]) -> tuple[str, _M]:
    """Read *path*: its top-level ``name`` and the rest as *message_type*."""
    spec = read_spec(path, message_type)
    return spec.name, spec.message


# --- reading the node tree -----------------------------------------------------------


class _Skip:
    """A value that is left out of the message (null, or in error)."""


_SKIP = _Skip()


class _Reader:
    """Turns a YAML node tree into the proto JSON mapping of a message, collecting every problem."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def add(self, node: yaml.Node, field: str, description: str) -> _Skip:
        self.problems.append(Problem(field, description, file=self.file, line=node.start_mark.line + 1, column=node.start_mark.column + 1))
        return _SKIP

    def message(self, node: yaml.Node, descriptor: Descriptor, path: list[str | int]) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self.add(node, _display(path), f"expected a mapping (key: value), got {_kind(node)}")
        _merge(self._constructor, node)
        result: dict[str, Any] = {}
        seen: dict[str, str] = {}
        oneofs: dict[str, str] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(key_node, _display(path), "a key must be a plain name")
                continue
            key = key_node.value
            here = [*path, key]
            fd = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
            if fd is None:
                self.add(key_node, _display(here), _unknown_field(key, descriptor))
                continue
            if fd.name in seen:
                self.add(key_node, _display(here), f"is given twice (also as {seen[fd.name]!r})")
                continue
            seen[fd.name] = key
            oneof = fd.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if oneof.name in oneofs:
                    self.add(key_node, _display(here), f"{oneofs[oneof.name]!r} and {key!r} are both given, "
                                                       f"but only one of {_choices(f.name for f in oneof.fields)} may be")
                    continue
                oneofs[oneof.name] = key
            if value_node.tag == _NULL:
                continue
            value = self.field(value_node, fd, here)
            if value is not _SKIP:
                result[fd.name] = value
        return result

    def field(self, node: yaml.Node, fd: FieldDescriptor, path: list[str | int]) -> Any:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if not isinstance(node, yaml.MappingNode):
                return self.add(node, _display(path), f"expected a mapping of names to values, got {_kind(node)}")
            _merge(self._constructor, node)
            value_fd = fd.message_type.fields_by_name["value"]
            items: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
                if not key:
                    self.add(key_node, _display(path), "a key must be a plain name")
                    continue
                value = self.single(value_node, value_fd, [*path, key])
                if value is not _SKIP:
                    items[key] = value
            return items
        if fd.is_repeated:
            if not isinstance(node, yaml.SequenceNode):
                return self.add(node, _display(path), f"expected a list, got {_kind(node)}")
            values = [self.single(item, fd, [*path, i]) for i, item in enumerate(node.value)]
            return [v for v in values if v is not _SKIP]
        return self.single(node, fd, path)

    def single(self, node: yaml.Node, fd: FieldDescriptor, path: list[str | int]) -> Any:
        at = _display(path)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            assert fd.message_type is not None
            full = fd.message_type.full_name
            if full in _PLAIN:
                return self.plain(node, at, full)
            if full == "google.protobuf.Duration":
                return self.duration(node, at)
            if full == "google.protobuf.Timestamp":
                return self.timestamp(node, at)
            return self.message(node, fd.message_type, path)
        if not isinstance(node, yaml.ScalarNode):
            return self.add(node, at, f"expected {_scalar_kind(fd)}, got {_kind(node)}")
        if fd.type == FieldDescriptor.TYPE_STRING:
            return node.value
        if fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            return self.enum(node, fd.enum_type, at)
        value = self._constructor.construct_object(node)
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return value if isinstance(value, bool) else self.add(node, at, f"expected true or false, got {node.value!r}")
        if fd.type in _INT_RANGES:
            low, high = _INT_RANGES[fd.type]
            if isinstance(value, bool) or not isinstance(value, int):
                return self.add(node, at, f"expected a whole number, got {node.value!r}")
            if not low <= value <= high:
                return self.add(node, at, f"{value} is out of range ({low} to {high})")
            return value
        if fd.type in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return self.add(node, at, f"expected a finite number, got {node.value!r}")
            return value
        return node.value  # bytes: base64 text, as in the JSON mapping

    def enum(self, node: yaml.ScalarNode, enum: EnumDescriptor, at: str) -> Any:
        text = node.value
        prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
        if text in enum.values_by_name:
            return text
        if node.tag == "tag:yaml.org,2002:int" and text.isdigit() and int(text) in enum.values_by_number:
            return int(text)  # the JSON mapping's number form
        candidate = prefix + text.upper().replace("-", "_").replace("/", "_").replace(" ", "_")
        if candidate in enum.values_by_name and not candidate.endswith("_UNSPECIFIED"):
            return candidate
        names = [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]
        close = difflib.get_close_matches(text.lower(), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return self.add(node, at, f"unknown value {text!r}{hint}; expected one of: {', '.join(names)}")

    def duration(self, node: yaml.Node, at: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.add(node, at, f"expected a duration such as 30s, 15m, 2h or 7d, got {_kind(node)}")
        match = _DURATION.fullmatch(node.value.strip())
        if not match:
            unitless = re.fullmatch(r"-?\d+(?:\.\d+)?", node.value.strip())
            why = "needs a unit" if unitless else "is not a duration"
            return self.add(node, at, f"{node.value!r} {why}: write it as a number and s, m, h or d, for example 30s, 15m, 2h or 7d")
        seconds = Decimal(match.group(1)) * _UNITS[match.group(2)]
        return f"{seconds.normalize():f}s"

    def timestamp(self, node: yaml.Node, at: str) -> Any:
        from google.protobuf import timestamp_pb2

        value = self._constructor.construct_object(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, dt.datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        elif isinstance(node, yaml.ScalarNode):
            value = node.value
        try:
            timestamp_pb2.Timestamp().FromJsonString(str(value))
        except (ValueError, TypeError):
            return self.add(node, at, "expected an RFC 3339 time, for example 2026-01-31T09:00:00Z")
        return value

    def plain(self, node: yaml.Node, at: str, full: str) -> Any:
        if full == "google.protobuf.Struct" and not isinstance(node, yaml.MappingNode):
            return self.add(node, at, f"expected a mapping (key: value), got {_kind(node)}")
        if full == "google.protobuf.ListValue" and not isinstance(node, yaml.SequenceNode):
            return self.add(node, at, f"expected a list, got {_kind(node)}")
        before = len(self.problems)
        for where, inner in _walk(node, at):
            if isinstance(inner, yaml.MappingNode):
                for key_node, _ in inner.value:
                    if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                        self.add(key_node, where, f"keys must be text; quote {getattr(key_node, 'value', '')!r}")
            elif isinstance(inner, yaml.ScalarNode):
                value = self._constructor.construct_object(inner)
                if isinstance(value, float) and not math.isfinite(value):
                    self.add(inner, where, f"{inner.value!r} is not a finite number")
                elif isinstance(value, bytes):
                    self.add(inner, where, "binary values are not supported")
        if len(self.problems) > before:
            return _SKIP
        return _jsonable(self._constructor.construct_object(node, deep=True))


def _merge(constructor: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    """Resolve YAML merge keys (``<<: *defaults``) in place; keys written in *node* itself win over merged ones."""
    if not any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        return
    own = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"}
    explicit = {id(k) for k, _ in node.value}
    constructor.flatten_mapping(node)
    merged: set[str] = set()
    kept = []
    for key_node, value_node in node.value:
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if id(key_node) not in explicit and name is not None:
            if name in own or name in merged:
                continue
            merged.add(name)
        kept.append((key_node, value_node))
    node.value = kept


def _walk(node: yaml.Node, at: str) -> Iterator[tuple[str, yaml.Node]]:
    yield at, node
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield from _walk(value_node, f"{at}.{getattr(key_node, 'value', '?')}")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, f"{at}[{i}]")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _unknown_field(key: str, descriptor: Descriptor) -> str:
    names = [f.name for f in descriptor.fields]
    close = difflib.get_close_matches(key, names, n=1) or difflib.get_close_matches(key.lower().replace("-", "_"), names, n=1)
    if close:
        return f"unknown field {key!r}; did you mean {close[0]!r}?"
    return f"unknown field {key!r}; expected one of: {', '.join(names)}" if names else f"unknown field {key!r}; nothing is expected here"


def _choices(names: Iterator[str] | Any) -> str:
    items = [repr(n) for n in names]
    return ", ".join(items[:-1]) + f" or {items[-1]}" if len(items) > 1 else "".join(items)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}" if isinstance(node, yaml.ScalarNode) else "something else"


def _scalar_kind(fd: FieldDescriptor) -> str:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if fd.type in _INT_RANGES:
        return "a whole number"
    if fd.type in _FLOATS:
        return "a number"
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return "a name"
    return "text"


# --- field paths ------------------------------------------------------------------------

_TOKEN = re.compile(r"""\.?([^.\[\]]+)|\[(?:"([^"]*)"|'([^']*)'|([^\]]*))\]""")


def _tokens(field: str) -> list[str | int]:
    """``spec.steps[2].send.template`` as ``["spec", "steps", 2, "send", "template"]``; ``templates[welcome]`` keys stay text."""
    tokens: list[str | int] = []
    for match in _TOKEN.finditer(field):
        name, quoted, single, bare = match.groups()
        if name is not None:
            tokens.append(name)
        elif bare is not None and bare.isdigit():
            tokens.append(int(bare))
        else:
            tokens.append(quoted if quoted is not None else single if single is not None else bare or "")
    return tokens


def _display(tokens: list[str | int]) -> str:
    """A path as written in YAML terms: names joined by dots, list indexes in brackets."""
    text = ""
    for token in tokens:
        if isinstance(token, int):
            text += f"[{token}]"
        elif _IDENT.fullmatch(token):
            text += f".{token}" if text else token
        else:
            text += f"[{token!r}]"
    return text


def _same(key: str, token: str) -> bool:
    return key == token or key.replace("_", "").lower() == token.replace("_", "").lower()


def _child(node: yaml.Node, token: str | int) -> tuple[str | int, yaml.Node | None, yaml.Node] | None:
    """The child of *node* that *token* names: its name as the file writes it, its key node (None in a list), and its value."""
    if isinstance(node, yaml.SequenceNode) and isinstance(token, int):
        return (token, None, node.value[token]) if 0 <= token < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and _same(key_node.value, str(token)):
                return key_node.value, key_node, value_node
    return None
