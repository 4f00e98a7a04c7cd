"""The journey builder's form: a :class:`JourneySpec` as form fields and
back, driven by the contract's descriptors, so every trigger and step kind
(and every field a kind gains later) has its inputs without new code.

A form field is named by its path in the spec's JSON mapping
(``steps.2.split.branches.0.weight``), with a suffix for what the input
holds: ``@kind`` the chosen member of a oneof (a trigger or step kind),
``@csv`` a list of words, ``@json`` a mapping or structure as JSON,
``@key`` the key of a map entry. :func:`read_form` turns the fields into
the YAML a file would hold and reads it with the CLI's spec reader
(:func:`overture_cli.specfile.parse_spec`), so the builder produces exactly
the spec the same YAML would, with the same conveniences (``2d``,
``channel: email``) and the same messages. Problems, whether found here,
by the reader or by the orchestrator (``spec.steps[2].send.template``), are
keyed by :func:`form_path` so the page shows each next to its field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from overture.orchestrator.v1 import journey_pb2
from overture_cli.specfile import SpecFileError, parse_spec

__all__ = ["STEP_REFERENCES", "Widget", "form_path", "read_form", "spec_values", "widgets"]

STEP_REFERENCES = frozenset({"next", "then_step", "else_step", "on_event_step", "on_timeout_step", "on_reject_step", "on_true_step",
                             "default_step", "step", "join", "on_missing_step"})
"""Fields that name another step: drawn as a choice of the journey's steps."""
_EXPRESSIONS = frozenset({"expression", "filter", "profile_condition"})
_TEXTAREAS = frozenset({"text_body", "html_body", "message", "description"})
_FORM_KEY = re.compile(r"^[a-z_0-9.@]{1,300}$")
MAX_STEPS = 200


_TOKEN = re.compile(r"""\.?([^.\[\]]+)|\[(?:"([^"]*)"|'([^']*)'|([^\]]*))\]""")
_JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def _whole(fd: FieldDescriptor | None) -> bool:
    """Whether the form holds *fd* as one JSON input: a Struct or a map of plain values."""
    message = fd.message_type if fd is not None else None
    if message is None:
        return False
    if message.GetOptions().map_entry:
        return message.fields_by_name["value"].message_type is None
    return message.full_name in _JSON_TYPES


def form_path(field_path: str, values: Mapping[str, Any] | None = None) -> str:
    """A violation's field (``spec.steps[2].send.template``, ``steps[2].send.template``) as a form path (``steps.2.send.template``).

    A field inside an input (a key of a JSON structure, an item of a list of words) is that input's path; a template, a row by
    number in the form, is the number of its row among *values*' templates (the values the form is drawn from)."""
    path = field_path.removeprefix("spec.")
    if path == "name":
        return "name"
    tokens = [next(g for g in m.groups() if g is not None) for m in _TOKEN.finditer(path)]
    descriptor: Descriptor | None = journey_pb2.JourneySpec.DESCRIPTOR
    node: Any = values
    found: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        found.append(token)
        i += 1
        fd = descriptor.fields_by_name.get(token) if descriptor is not None else None
        node = node.get(token) if isinstance(node, Mapping) else None
        if fd is None:
            descriptor = None
            continue
        if _whole(fd) or (fd.is_repeated and fd.message_type is None):
            break  # one input: a JSON field, or a list of words
        message = fd.message_type
        if message is not None and message.GetOptions().map_entry and i < len(tokens):
            keys = list(node) if isinstance(node, Mapping) else []
            found.append(str(keys.index(tokens[i])) if tokens[i] in keys else tokens[i])
            node = node.get(tokens[i]) if isinstance(node, Mapping) else None
            descriptor = message.fields_by_name["value"].message_type
            i += 1
        elif fd.is_repeated and i < len(tokens):
            found.append(tokens[i])
            node = node[int(tokens[i])] if isinstance(node, list) and tokens[i].isdigit() and int(tokens[i]) < len(node) else None
            descriptor = message
            i += 1
        else:
            descriptor = message
    return ".".join(found)


def _short(enum_value: str, fd: FieldDescriptor) -> str:
    assert fd.enum_type is not None
    prefix = fd.enum_type.values[0].name.removesuffix("UNSPECIFIED")
    return str(enum_value).removeprefix(prefix).lower()


def _pretty_duration(value: str) -> str:
    match = re.fullmatch(r"(\d+)(?:\.0+)?s", value or "")
    if not match:
        return value
    seconds = int(match.group(1))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def spec_values(spec: journey_pb2.JourneySpec) -> dict[str, Any]:
    """*spec* as the builder's values (the JSON mapping)."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


@dataclass
class Widget:
    """One input, or a group of them, as the page draws it."""

    kind: str
    """``text``, ``textarea``, ``number``, ``checkbox``, ``select``, ``json``, ``group``, ``rows`` or ``oneof``."""
    path: str
    label: str
    value: Any = ""
    help: str = ""
    required: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)
    children: list[Widget] = field(default_factory=list)
    expression: bool = False
    """An expression field: the page offers the condition builder next to it."""
    removable: bool = False

    @property
    def id(self) -> str:
        """The input's element id."""
        return "f-" + self.path.replace(".", "-").replace("@", "")


class _Build:
    def __init__(self, step_ids: list[str], help: Mapping[str, Mapping[str, tuple[str, bool]]]) -> None:
        self.steps = step_ids
        self.help = help  # kind -> field -> (description, required)

    def message(self, descriptor: Descriptor, values: Mapping[str, Any], path: str, kind: str = "") -> list[Widget]:
        found: list[Widget] = []
        done: set[str] = set()
        for fd in descriptor.fields:
            oneof = fd.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if oneof.name in done:
                    continue
                done.add(oneof.name)
                found.append(self.oneof(oneof.fields, values, path))
                continue
            if descriptor.full_name == "overture.orchestrator.v1.Step" and fd.name in ("id",):
                continue  # drawn by the step's own heading
            found.append(self.field(fd, values.get(fd.name), f"{path}.{fd.name}" if path else fd.name, kind))
        return found

    def oneof(self, members: Any, values: Mapping[str, Any], path: str) -> Widget:
        chosen = next((m.name for m in members if m.name in values), "")
        options = [(m.name, m.name.replace("_", " ")) for m in members]
        widget = Widget("oneof", f"{path}.@kind" if path else "@kind", "Kind", value=chosen, options=options)
        if chosen:
            member = next(m for m in members if m.name == chosen)
            assert member.message_type is not None
            inner = values.get(chosen) or {}
            widget.children = self.message(member.message_type, inner if isinstance(inner, dict) else {},
                                           f"{path}.{chosen}" if path else chosen, kind=chosen)
        return widget

    def field(self, fd: FieldDescriptor, value: Any, path: str, kind: str) -> Widget:
        description, required = self.help.get(kind, {}).get(fd.name, ("", False))
        label = fd.name.replace("_", " ")
        common: dict[str, Any] = {"help": description, "required": required}
        message = fd.message_type
        if message is not None and message.GetOptions().map_entry:
            value_fd = message.fields_by_name["value"]
            if value_fd.message_type is not None and value_fd.message_type.full_name == "overture.orchestrator.v1.MessageTemplate":
                rows = []
                for i, (key, item) in enumerate((value or {}).items()):
                    row = Widget("group", f"{path}.{i}", f"{label} {key}", removable=True,
                                 children=[Widget("text", f"{path}.{i}.@key", "name", value=key, required=True),
                                           *self.message(value_fd.message_type, item or {}, f"{path}.{i}")])
                    rows.append(row)
                return Widget("rows", path, label, children=rows, **common)
            return Widget("json", f"{path}.@json", f"{label} (JSON)", value=json.dumps(value) if value else "", **common)
        if fd.is_repeated:
            if message is not None:
                rows = [Widget("group", f"{path}.{i}", f"{label} {i + 1}", removable=True,
                               children=self.message(message, item or {}, f"{path}.{i}", kind)) for i, item in enumerate(value or [])]
                return Widget("rows", path, label, children=rows, **common)
            if fd.name == "branches" and kind == "parallel":
                return Widget("text", f"{path}.@csv", f"{label} (step ids, comma-separated)", value=", ".join(value or []), **common)
            return Widget("text", f"{path}.@csv", f"{label} (comma-separated)", value=", ".join(str(v) for v in value or []), **common)
        if message is not None:
            full = message.full_name
            if full in ("google.protobuf.Struct", "google.protobuf.Value"):
                return Widget("json", f"{path}.@json", f"{label} (JSON)", value=json.dumps(value) if value else "", **common)
            if full == "google.protobuf.Duration":
                return Widget("text", path, f"{label} (30s, 15m, 2h, 7d)", value=_pretty_duration(value or ""), **common)
            if full == "google.protobuf.Timestamp":
                return Widget("text", path, f"{label} (RFC 3339)", value=value or "", **common)
            return Widget("group", path, label, children=self.message(message, value or {}, path, kind), **common)
        if fd.name in STEP_REFERENCES:
            options = [("", "(end of the run)"), *((s, s) for s in self.steps)]
            return Widget("select", path, f"{label} (step)", value=value or "", options=options, **common)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            options = [("", "(not set)"), *((_short(v.name, fd), _short(v.name, fd)) for v in fd.enum_type.values if v.number)]
            return Widget("select", path, label, value=_short(value, fd) if value else "", options=options, **common)
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return Widget("checkbox", path, label, value=bool(value), **common)
        if fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_DOUBLE):
            return Widget("number", path, label, value="" if value in (None, "") else value, **common)
        kind_of = "textarea" if fd.name in _TEXTAREAS else "text"
        return Widget(kind_of, path, label, value=value or "", expression=fd.name in _EXPRESSIONS, **common)


def widgets(values: Mapping[str, Any], help: Mapping[str, Mapping[str, tuple[str, bool]]]) -> dict[str, Any]:
    """The builder's widgets for *values*: the journey's settings, its trigger, and each step."""
    steps = [s for s in values.get("steps", []) if isinstance(s, dict)]
    build = _Build([str(s.get("id", "")) for s in steps if s.get("id")], help)
    d = journey_pb2.JourneySpec.DESCRIPTOR
    top = [build.field(d.fields_by_name[n], values.get(n), n, "") for n in ("description", "rule_set")]
    trigger = build.field(d.fields_by_name["trigger"], values.get("trigger"), "trigger", "trigger")
    trigger.children = [build.oneof(journey_pb2.JourneyTrigger.DESCRIPTOR.oneofs[0].fields, values.get("trigger") or {}, "trigger")]
    step_widgets = []
    for i, step in enumerate(steps):
        group = Widget("group", f"steps.{i}", f"Step {i + 1}", removable=True,
                       children=[Widget("text", f"steps.{i}.id", "step id", value=step.get("id", ""), required=True),
                                 *build.message(journey_pb2.Step.DESCRIPTOR, step, f"steps.{i}")])
        step_widgets.append(group)
    rest = [build.field(d.fields_by_name[n], values.get(n), n, "") for n in ("templates", "entry", "goal", "settings")]
    return {"top": top, "trigger": trigger, "steps": step_widgets, "rest": rest}


# --- reading the form back ---------------------------------------------------------------


def _set(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[parts[-1]] = value


def _listify(node: Any, descriptor: Descriptor | None) -> Any:
    """Dicts keyed by row numbers become lists (maps of templates become mappings by their @key; maps of plain values, such as
    an update's ``increment``, come whole from their JSON field); oneofs keep their chosen member."""
    if not isinstance(node, dict):
        return node
    kind = node.pop("@kind", None)
    if descriptor is not None and kind is not None:
        members = {m.name for o in descriptor.oneofs if not o.name.startswith("_") for m in o.fields}
        for name in list(node):
            if name in members and name != kind:
                del node[name]
        if kind in members and kind not in node:
            node[kind] = {}
    result: dict[str, Any] = {}
    for key, value in node.items():
        fd = descriptor.fields_by_name.get(key) if descriptor is not None else None
        inner = fd.message_type if fd is not None else None
        is_map = inner is not None and inner.GetOptions().map_entry
        if is_map and inner is not None and inner.fields_by_name["value"].message_type is None:
            result[key] = value  # a map of plain values, whole from its JSON field
        elif fd is not None and inner is not None and is_map and isinstance(value, dict):
            value_type = inner.fields_by_name["value"].message_type
            mapping = {}
            for _, row in sorted(((int(k), v) for k, v in value.items() if k.isdigit()), key=lambda kv: kv[0]):
                if isinstance(row, dict) and row.get("@key"):
                    row_key = str(row.pop("@key")).strip()
                    mapping[row_key] = _listify(row, value_type)
            result[key] = mapping
        elif fd is not None and fd.is_repeated and isinstance(value, dict):
            rows = [v for _, v in sorted(((int(k), v) for k, v in value.items() if k.isdigit()), key=lambda kv: kv[0])]
            result[key] = [_listify(r, inner) for r in rows]
        else:
            result[key] = _listify(value, inner)
    return result


def _prune(value: Any, descriptor: Descriptor | None = None) -> Any:
    """Drop empty values, as a file would leave them out (a chosen kind with no fields stays, as ``{}``); what a JSON input
    holds (a webhook's body, traits, an increment) is kept as written, its ``false``, ``0`` and ``""`` included."""
    if isinstance(value, dict):
        pruned = {}
        for k, v in value.items():
            fd = descriptor.fields_by_name.get(k) if descriptor is not None else None
            inner = fd.message_type if fd is not None else None
            if _whole(fd):
                pruned[k] = v
            elif inner is not None and inner.GetOptions().map_entry and isinstance(v, dict):
                entries = {key: _prune(item, inner.fields_by_name["value"].message_type) for key, item in v.items()}
                pruned[k] = {key: item for key, item in entries.items() if not _empty(key, item)}
            else:
                pruned[k] = _prune(v, inner)
        return {k: v for k, v in pruned.items() if not _empty(k, v)}
    if isinstance(value, list):
        return [_prune(v, descriptor) for v in value]
    return value


def _empty(key: str, value: Any) -> bool:
    return value is False or value in ("", None, []) or (isinstance(value, dict) and not value and key not in _KINDS)


_KINDS = frozenset({*(f.name for f in journey_pb2.Step.DESCRIPTOR.oneofs_by_name["kind"].fields),
                    *(f.name for f in journey_pb2.JourneyTrigger.DESCRIPTOR.oneofs_by_name["kind"].fields)})


def read_form(fields: list[tuple[str, str]]) -> tuple[str, dict[str, Any], journey_pb2.JourneySpec | None, dict[str, str]]:
    """The journey's name, the builder's values, the spec (None when it does not read) and the problems by form path."""
    tree: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, raw in fields:
        if not key.startswith(("name", "description", "rule_set", "trigger", "steps.", "templates", "entry", "goal", "settings")):
            continue
        if not _FORM_KEY.match(key):
            continue
        parts = key.split(".")
        if parts[-1] == "@csv":
            _set(tree, parts[:-1], [w.strip() for w in raw.split(",") if w.strip()])
        elif parts[-1] == "@json":
            if raw.strip():
                try:
                    _set(tree, parts[:-1], json.loads(raw))
                except ValueError:
                    problems[".".join(parts[:-1])] = "is not valid JSON"
        else:
            # As typed (a browser sends a textarea's line ends as CRLF), except that one-line values lose stray blanks.
            text = raw.replace("\r\n", "\n")
            _set(tree, parts, text if "\n" in text else text.strip())
    name = str(tree.pop("name", "") or "")
    values = _prune(_listify(tree, journey_pb2.JourneySpec.DESCRIPTOR), journey_pb2.JourneySpec.DESCRIPTOR)
    if len(values.get("steps", [])) > MAX_STEPS:
        problems["steps"] = f"at most {MAX_STEPS} steps"
        return name, values, None, problems
    typed = _typed(values, journey_pb2.JourneySpec.DESCRIPTOR, "", problems)
    text = yaml.safe_dump({"name": name or "unnamed", **typed}, sort_keys=False, allow_unicode=True)
    try:
        spec = parse_spec(text, journey_pb2.JourneySpec, path=Path("<builder>")).message
    except SpecFileError as error:
        for problem in error.problems:
            problems.setdefault(form_path(problem.field, values), problem.description)
        spec = None
    return name, values, spec if not problems else None, problems


def _typed(value: Any, descriptor: Descriptor | None, path: str, problems: dict[str, str]) -> Any:
    """Form text made into the numbers and booleans the YAML would hold, by each field's type."""
    if not isinstance(value, dict) or descriptor is None:
        return value
    result: dict[str, Any] = {}
    for key, item in value.items():
        fd = descriptor.fields_by_name.get(key)
        here = f"{path}.{key}" if path else key
        if fd is None:
            result[key] = item
            continue
        inner = fd.message_type
        if inner is not None and inner.GetOptions().map_entry:
            value_type = inner.fields_by_name["value"].message_type
            result[key] = {k: _typed(v, value_type, f"{here}.{k}", problems) for k, v in item.items()} if isinstance(item, dict) else item
        elif fd.is_repeated and isinstance(item, list):
            result[key] = [_typed(v, inner, f"{here}.{i}", problems) if inner is not None else v for i, v in enumerate(item)]
        elif inner is not None:
            plain = inner.full_name.startswith("google.protobuf.")
            result[key] = item if plain else _typed(item, inner, here, problems)
        elif fd.type == FieldDescriptor.TYPE_BOOL:
            result[key] = item in ("on", "true", True)
        elif fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64) and isinstance(item, str):
            try:
                result[key] = int(item)
            except ValueError:
                problems[here] = "expected a whole number"
        elif fd.type == FieldDescriptor.TYPE_DOUBLE and isinstance(item, str):
            try:
                result[key] = float(item)
            except ValueError:
                problems[here] = "expected a number"
        else:
            result[key] = item
    return result
