"""Everything the CLI prints: results and errors, for people and for machines.

Every command hands its result here twice over: the data (a proto message
or a JSON-ready dict) and, for people, a list of blocks (:class:`Fields`
for one thing, ``key: value`` aligned; :class:`Table` for many, columns
aligned). ``--json`` prints the data alone as one JSON document with sorted
keys (proto field names, every field present), so scripts can rely on it.
Errors go to stderr in the same two forms.

Importing this module is cheap: protobuf, grpc and asyncio are imported
when first needed, so that ``overture --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = [
    "CliError",
    "Fields",
    "Problem",
    "Progress",
    "Table",
    "each_page",
    "emit",
    "fail",
    "flatten",
    "flatten_data",
    "human_value",
    "print_error",
    "render",
    "run_async",
    "short",
    "to_data",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located in its file when it came from one."""

    field: str
    """The field's path (in a spec file, as the file names it: ``steps[2].send.template``)."""
    description: str
    """What is wrong, in a sentence."""
    file: str = ""
    """The file the field is in, if any."""
    line: int = 0
    """1-based line of the field in *file* (0: not located)."""
    column: int = 0
    """1-based column of the field in *file*."""

    @property
    def where(self) -> str:
        """``file:line:column``, the form editors and terminals can jump to; empty when not located."""
        if not self.file:
            return ""
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file

    def text(self) -> str:
        """The problem as one line."""
        head = f"{self.where}: " if self.where else ""
        return f"{head}{self.field}: {self.description}" if self.field else f"{head}{self.description}"

    def data(self) -> dict[str, Any]:
        """The problem for ``--json``."""
        return {"field": self.field, "description": self.description, "file": self.file, "line": self.line, "column": self.column}


class CliError(Exception):
    """A command failed; the message and problems are shown to the user, and the exit code is *exit_code*."""

    def __init__(self, message: str, *, code: str = "", problems: Sequence[Problem] = (), retry_after: float | None = None,
                 exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        """What failed, in a sentence."""
        self.code = code
        """The gRPC status name (``NOT_FOUND``) when a call failed, else empty."""
        self.problems = tuple(problems)
        """The field violations, located when they came from a file."""
        self.retry_after = retry_after
        """Seconds the server asked the caller to wait before retrying, if it did."""
        self.exit_code = exit_code
        """The process exit code."""

    def data(self) -> dict[str, Any]:
        """The error for ``--json``."""
        error: dict[str, Any] = {"code": self.code or "FAILED", "message": self.message, "problems": [p.data() for p in self.problems]}
        if self.retry_after is not None:
            error["retry_after_seconds"] = self.retry_after
        return {"error": error}


def fail(message: str, *, problems: Sequence[Problem] = (), exit_code: int = 1) -> NoReturn:
    """Stop the command with *message* (and *problems*); :func:`print_error` shows it."""
    raise CliError(message, problems=problems, exit_code=exit_code)


# --- blocks --------------------------------------------------------------------


@dataclass(frozen=True)
class Fields:
    """A ``key: value`` block, keys aligned; for one thing."""

    items: Sequence[tuple[str, object]]
    """The keys and values, in order."""
    title: str = ""
    """A heading line above the block, if any."""


@dataclass(frozen=True)
class Table:
    """Rows under upper-case column headings, columns aligned; for many things."""

    columns: Sequence[str]
    """The column headings."""
    rows: Sequence[Sequence[object]]
    """The rows, one value per column."""
    title: str = ""
    """A heading line above the table, if any."""
    empty: str = "none"
    """What to print instead of an empty table."""


Block = Fields | Table | str


def human_value(value: object) -> str:
    """A value as a person reads it: yes/no, comma lists, compact JSON for nested data, ``-`` for nothing."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(human_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return str(value)


def _fields(block: Fields) -> list[str]:
    items = [(f"{key}:", human_value(value)) for key, value in block.items]
    width = max((len(key) for key, _ in items), default=0)
    lines = [block.title] if block.title else []
    for key, value in items:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key:<{width}}  {first}".rstrip())
        lines += [f"{'':<{width}}  {line}".rstrip() for line in rest]
    return lines


def _table(block: Table) -> list[str]:
    lines = [block.title] if block.title else []
    if not block.rows:
        return [*lines, block.empty]
    cells = [[h.upper() for h in block.columns]] + [[human_value(v).replace("\n", " ") for v in row] for row in block.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(block.columns))]
    for row in cells:
        lines.append("  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row)).rstrip())
    return lines


def render(blocks: Iterable[Block]) -> str:
    """The blocks as text, separated by blank lines."""
    parts = []
    for block in blocks:
        if isinstance(block, Fields):
            parts.append("\n".join(_fields(block)))
        elif isinstance(block, Table):
            parts.append("\n".join(_table(block)))
        else:
            parts.append(block)
    return "\n\n".join(parts)


# --- data ------------------------------------------------------------------------


def to_data(value: Message | Mapping[str, Any] | Sequence[Any] | Any) -> Any:
    """*value* as JSON-ready data: messages in the proto JSON mapping with proto field names and every field present."""
    from google.protobuf import json_format
    from google.protobuf.message import Message

    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    return value


def short(enum: Any, value: int) -> str:
    """An enum value's short name in lower case: ``CHANNEL_EMAIL`` is ``email``; 0 is ``-``."""
    if value == 0:
        return "-"
    name: str = enum.Name(value)
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix).lower()


def flatten(message: Message, prefix: str = "") -> list[tuple[str, object]]:
    """The set fields of *message* as ``(path, value)`` pairs, nested ones as ``a.b``, ``steps[0].id``, ``traits.plan``.

    Enums are short names, timestamps RFC 3339 and durations in the largest
    whole unit (``2d``), so any message reads as one :class:`Fields` block.
    """
    from google.protobuf.descriptor import FieldDescriptor

    pairs: list[tuple[str, object]] = []
    for fd, value in message.ListFields():
        key = f"{prefix}{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for k in sorted(value):
                pairs += _flatten_value(f"{key}.{k}", value[k], value_fd)
        elif fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_leaf(fd):
                for i, item in enumerate(value):
                    pairs += _flatten_value(f"{key}[{i}]", item, fd)
            else:
                pairs.append((key, [_leaf(fd, v) for v in value]))
        else:
            pairs += _flatten_value(key, value, fd)
    return pairs


def _is_leaf(fd: Any) -> bool:
    return fd.message_type is not None and fd.message_type.full_name in _LEAVES


_LEAVES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


def _flatten_value(key: str, value: Any, fd: Any) -> list[tuple[str, object]]:
    from google.protobuf.descriptor import FieldDescriptor

    if fd.type != FieldDescriptor.TYPE_MESSAGE or _is_leaf(fd):
        return [(key, _leaf(fd, value))]
    if fd.message_type.full_name == "google.protobuf.Struct":
        return flatten_data(key, to_data(value))
    if fd.message_type.full_name in ("google.protobuf.Value", "google.protobuf.ListValue"):
        return [(key, to_data(value))]
    inner = flatten(value, f"{key}.")
    return inner or [(key, "{}")]


def flatten_data(key: str, data: Any) -> list[tuple[str, object]]:
    """Plain nested data as ``(path, value)`` pairs under *key*: ``{"a": {"b": 1}}`` is ``a.b = 1``."""
    if isinstance(data, dict) and data:
        return [pair for k in sorted(data) for pair in flatten_data(f"{key}.{k}" if key else str(k), data[k])]
    return [(key, data)]


def _leaf(fd: Any, value: Any) -> object:
    from google.protobuf.descriptor import FieldDescriptor

    if fd.type == FieldDescriptor.TYPE_ENUM:
        values = fd.enum_type.values_by_number
        name = values[value].name if value in values else str(value)
        prefix = fd.enum_type.values[0].name.removesuffix("UNSPECIFIED")
        return name.removeprefix(prefix).lower()
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
        return value.ToJsonString()
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Duration":
        return duration_text(value.ToTimedelta().total_seconds())
    return value


def duration_text(seconds: float) -> str:
    """*seconds* in the largest unit that divides it, the spec files' form: ``2d``, ``90m``, ``1.5s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- printing ----------------------------------------------------------------------


def emit(data: Any, *, as_json: bool, human: Callable[[], Iterable[Block]]) -> None:
    """Print a result: *data* as JSON with ``--json``, else the blocks *human* returns."""
    if as_json:
        print(json.dumps(to_data(data), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(render(human()))


def print_error(error: CliError, *, as_json: bool) -> None:
    """Print a failed command's error to stderr."""
    if as_json:
        print(json.dumps(error.data(), indent=2, sort_keys=True, ensure_ascii=False), file=sys.stderr)
        return
    head = f"{error.code}: {error.message}" if error.code else error.message
    lines = [f"error: {head}"] + [f"  {p.text()}" for p in error.problems]
    if error.retry_after is not None:
        lines.append(f"  retry after {error.retry_after:g}s")
    print("\n".join(lines), file=sys.stderr)


class Progress:
    """A one-line progress bar on stderr, for long work (``label [####    ] 45% 4,500/10,000 events``).

    Drawn only when stderr is a terminal, so that scripts and ``--json`` get
    nothing but the result; :meth:`close` ends the line."""

    def __init__(self, label: str, *, unit: str, width: int = 30) -> None:
        self._label = label
        self._unit = unit
        self._width = width
        self._shown = sys.stderr.isatty()
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        """Show *done* of *total* (an estimate may change as the work goes)."""
        if not self._shown:
            return
        total = max(total, done, 1)
        filled = self._width * done // total
        bar = "#" * filled + " " * (self._width - filled)
        sys.stderr.write(f"\r{self._label} [{bar}] {100 * done // total:3d}% {done:,}/{total:,} {self._unit}")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line, if one was drawn."""
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


async def each_page(fetch: Callable[[str], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Every page of a List call: *fetch* takes a page token and returns a response with ``next_page_token``."""
    token = ""
    while True:
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return


def run_async(factory: Callable[[], Awaitable[int | None]], *, locate: Callable[[str, str], Problem] | None = None) -> int:
    """Run a CLI coroutine; an RPC error becomes a :class:`CliError` (its field violations located by *locate*, if given)."""
    import asyncio

    import grpc

    from .client import rpc_error

    async def main() -> int | None:
        try:
            return await factory()
        except grpc.aio.AioRpcError as error:
            raise rpc_error(error, locate=locate) from None

    return asyncio.run(main()) or 0
