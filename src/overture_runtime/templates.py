"""Message templates: what they may reference, the sandbox they render in,
and the check that every name a template reads can exist.

This module is the one owner of a template's scope. The renderer builds
its scope with :func:`template_scope`, which returns exactly the names of
:data:`SCOPE`; :func:`check_template`, run at publish and at preview, walks
a template's syntax tree against the same :data:`SCOPE`. So a name the
renderer does not provide (``first_name`` instead of
``profile.traits.first_name``, or the misspelt namespace ``profile.trait``)
is refused before anything is sent, and cannot drift from what sending
provides.

What the check cannot know is data: any key under ``profile.traits`` or
``event.attributes`` may exist for one subject and not another. Rendering
is therefore strict too (:class:`MissingValue`): a value missing at send
time is an error, not a blank, unless the template says what to do without
it (``| default(...)``, ``is defined``, or ``{% if ... %}``).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from overture.common.v1 import event_pb2

from .protojson import struct_to_dict

__all__ = [
    "SCOPE",
    "UNSUBSCRIBE_URL_MARKER",
    "Kind",
    "MissingValue",
    "TemplateProblem",
    "check_template",
    "event_scope",
    "html_environment",
    "profile_scope",
    "run_scope",
    "template_scope",
    "text_environment",
]


class Kind(enum.Enum):
    """What a name in a template's scope holds, below which nothing is checked."""

    VALUE = "value"
    """Text, a number or a list: its own methods and filters apply."""
    MAPPING = "mapping"
    """A mapping whose keys the data chooses (traits, attributes): any key may be read."""


Shape: TypeAlias = "Kind | Mapping[str, Shape]"

SCOPE: Mapping[str, Shape] = MappingProxyType({
    "profile": MappingProxyType({"subject_id": Kind.VALUE, "traits": Kind.MAPPING, "segments": Kind.VALUE, "timezone": Kind.VALUE,
                                 "tags": Kind.VALUE}),
    "event": MappingProxyType({"event_id": Kind.VALUE, "event_type": Kind.VALUE, "attributes": Kind.MAPPING, "occurred_at": Kind.VALUE}),
    "run": MappingProxyType({"run_id": Kind.VALUE, "journey": Kind.VALUE, "step_id": Kind.VALUE}),
    # What earlier steps left, by step id: a webhook's kept ``response``
    # (``status`` and ``body``), the ``event`` that ended a wait.
    "steps": Kind.MAPPING,
})
"""Every name a template may read, and what each holds. The renderer's
scope (:func:`template_scope`) has exactly these keys."""

# Methods of the mapping namespaces that a template may call, e.g. `profile.items()`.
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})


class MissingValue(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """What a missing name or key evaluates to: StrictUndefined, so rendering,
    iterating or comparing it fails the render, with two exceptions that let
    a template say what to do without a value. A chain stays undefined
    (``profile.traits.address.city | default("")`` works when ``address`` is
    missing), and its truth value is false (``{% if event.attributes.plan %}``
    tests for presence)."""

    __slots__ = ()

    # StrictUndefined types __bool__ as never returning; this one returns.
    def __bool__(self) -> bool:  # type: ignore[override]
        return False


UNSUBSCRIBE_URL_MARKER = "%%overture:unsubscribe_url%%"
"""What ``{{ unsubscribe_url }}`` renders to. The link itself is sealed per
message by the email connector, which replaces this marker in the text and
HTML bodies with the message's one-click unsubscribe URL (the one its
``List-Unsubscribe`` header carries); it is made of characters no escaping
changes, and a preview shows it as it is."""


def _whole_numbers(value: Any) -> Any:
    """What ``{{ ... }}`` prints: a whole number as one (``1200``, not
    ``1200.0``). JSON and protobuf's Struct carry every number as a double,
    so an event's or a profile's integers arrive as floats."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


text_environment = ImmutableSandboxedEnvironment(autoescape=False, undefined=MissingValue, finalize=_whole_numbers)
"""The sandbox subjects, text bodies and addresses render in: no access to
Python internals, no mutation of the scope, strict about missing values."""

html_environment = ImmutableSandboxedEnvironment(autoescape=True, undefined=MissingValue, finalize=_whole_numbers)
"""The same sandbox for HTML bodies, which also escapes every value it inserts."""

for _environment in (text_environment, html_environment):
    # A global, not part of SCOPE: the renderer cannot know the link (the connector seals it), and
    # check_template accepts the environment's globals.
    _environment.globals["unsubscribe_url"] = UNSUBSCRIBE_URL_MARKER


def profile_scope(*, subject_id: str, traits: Mapping[str, Any], segments: Sequence[str], timezone: str,
                  tags: Sequence[str] = ()) -> dict[str, Any]:
    """The ``profile`` a template and a condition read."""
    return {"subject_id": subject_id, "traits": dict(traits), "segments": list(segments), "timezone": timezone, "tags": list(tags)}


def event_scope(event: event_pb2.Event) -> dict[str, Any]:
    """The ``event`` a template and a condition read: the event that started the run."""
    return {"event_id": event.event_id, "event_type": event.event_type, "attributes": struct_to_dict(event.attributes),
            "occurred_at": event.occurred_at.ToJsonString() if event.HasField("occurred_at") else ""}


def run_scope(*, run_id: str, journey: str, step_id: str) -> dict[str, Any]:
    """The ``run`` a template reads."""
    return {"run_id": run_id, "journey": journey, "step_id": step_id}


def template_scope(*, profile: Mapping[str, Any], event: Mapping[str, Any], run: Mapping[str, Any],
                   steps: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole scope a template renders with; each part comes from the builders above."""
    return {"profile": profile, "event": event, "run": run, "steps": dict(steps or {})}


@dataclass(frozen=True)
class TemplateProblem:
    """A name a template reads that cannot exist when it renders."""

    variable: str
    """The name or attribute chain as the template writes it, e.g. ``profile.trait``."""
    line: int
    """The template line it is on, from 1."""
    description: str
    """What is wrong, for a human; names the variable and the line."""


def check_template(source: str, *, environment: jinja2.Environment = text_environment) -> list[TemplateProblem]:
    """The names *source* reads that :data:`SCOPE` cannot provide: unknown
    top-level names, and keys of ``profile``, ``event`` or ``run`` that they
    do not have. Keys under a :attr:`Kind.MAPPING` are data and are not
    checked. Raises :class:`jinja2.TemplateSyntaxError` if *source* does not parse."""
    tree = environment.parse(source)
    problems: list[TemplateProblem] = []
    for statement in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        problems.append(TemplateProblem(
            "", statement.lineno, f"line {statement.lineno}: a message template cannot extend, include or import other templates"))
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    unknown = meta.find_undeclared_variables(tree) - SCOPE.keys() - environment.globals.keys()
    for name in sorted(unknown):
        line = min(n.lineno for n in tree.find_all(nodes.Name) if n.name == name)
        hint = _suggest(name, list(SCOPE)) or _suggest_inside(name)
        problems.append(TemplateProblem(
            name, line, f"line {line}: {name!r} is not defined; a template can read {', '.join(SCOPE)}{hint}"))
    seen: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        chain = _chain(node)
        if chain is None or chain[0] in assigned or chain[0] not in SCOPE:
            continue
        found = _walk(chain[0], chain[1])
        if found is not None and found[0] not in seen:
            seen.add(found[0])
            problems.append(TemplateProblem(found[0], node.lineno, f"line {node.lineno}: {found[1]}"))
    return sorted(problems, key=lambda p: (p.line, p.variable))


def _chain(node: nodes.Node) -> tuple[str, list[str]] | None:
    """``profile.traits["x"]`` as ``("profile", ["traits", "x"])``; None when
    the chain does not start at a name or uses a computed key."""
    keys: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            keys.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, keys[::-1]
        else:
            return None


def _walk(root: str, keys: list[str]) -> tuple[str, str] | None:
    """The first key of the chain that cannot exist, as (chain, description)."""
    shape: Shape = SCOPE[root]
    path = root
    for key in keys:
        if isinstance(shape, Kind):
            return None
        if key in shape:
            shape, path = shape[key], f"{path}.{key}"
            continue
        if key in _MAPPING_METHODS:
            return None
        written = f"{path}.{key}"
        hint = _suggest(key, list(shape), prefix=f"{path}.")
        return written, f"{written} cannot exist: {path} has {', '.join(shape)}{hint}"
    return None


def _suggest(word: str, choices: list[str], *, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _suggest_inside(name: str) -> str:
    """For a bare ``first_name``: it is probably a trait or an attribute."""
    for root, fields in SCOPE.items():
        if not isinstance(fields, Kind) and name in fields:
            return f" (did you mean {root}.{name}?)"
    return f" (a trait is profile.traits.{name}, an event attribute event.attributes.{name})"
