"""Rendering what a step sends or writes: a template of the journey, an
inline template (an address, a URL, a trait value), or a whole structure of
them. Strict and all or nothing: a value the scope lacks fails the step
(:class:`RenderError`), so nothing half-rendered leaves the engine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jinja2

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.templates import text_environment

__all__ = ["RenderError", "message_of", "render", "render_message", "render_text", "render_value", "templates_env"]

templates_env = text_environment
"""The sandbox text templates render in (see :mod:`overture_runtime.templates`)."""


class RenderError(Exception):
    """A step's content could not be rendered. The message names the part and
    the missing name, never a value."""


def render(template: jinja2.Template | None, scope: Mapping[str, Any]) -> str:
    """Render a compiled template in the sandbox; empty for no template."""
    return template.render(**scope) if template is not None else ""


def _fail(where: str, error: Exception, scope: Mapping[str, Any]) -> RenderError:
    # Jinja's messages name the missing name and the type it was looked up
    # on. The name is a value when the template computed it from the data
    # (``prices[profile.traits.email]``), so any string of the scope that the
    # message quotes is masked (it fails rarely, so the walk costs nothing).
    # Other exceptions may quote values, so only their type is kept.
    if isinstance(error, jinja2.TemplateError) and error.message:
        why = error.message
        for value in _strings(scope):
            why = why.replace(repr(value), "<a value of the data>")
    else:
        why = type(error).__name__
    return RenderError(f"{where} failed to render: {why}"[:2000])


def _strings(value: Any) -> Iterator[str]:
    """Every string value inside *value* (dicts and lists walked)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def render_text(source: str, scope: Mapping[str, Any], *, where: str) -> str:
    """An inline template (an address, a URL), stripped; empty for none."""
    if not source:
        return ""
    try:
        return templates_env.from_string(source).render(**scope).strip()
    except Exception as error:  # noqa: BLE001 - every failure to render is reported the same way
        raise _fail(where, error, scope) from None


def render_value(value: Any, scope: Mapping[str, Any], *, where: str) -> Any:
    """A JSON-like value with every string in it rendered as a template."""
    if isinstance(value, str):
        if "{" not in value:
            return value
        try:
            return templates_env.from_string(value).render(**scope)
        except Exception as error:  # noqa: BLE001 - every failure to render is reported the same way
            raise _fail(where, error, scope) from None
    if isinstance(value, Mapping):
        return {k: render_value(v, scope, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, scope, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def render_message(templates: Mapping[str, Mapping[str, jinja2.Template]], template: str, to: str, scope: Mapping[str, Any],
                   *, step_id: str) -> dict[str, str]:
    """The rendered ``to`` (empty when the step has none), ``subject``,
    ``text_body`` and ``html_body`` of a message step, all or nothing."""
    rendered: dict[str, str] = {"to": render_text(to, scope, where=f"the address of step {step_id!r}")}
    parts = templates.get(template, {})
    for part in ("subject", "text_body", "html_body"):
        try:
            rendered[part] = render(parts.get(part), scope)
        except Exception as error:  # noqa: BLE001 - every failure to render is reported the same way
            raise _fail(f"template {template!r} {part}", error, scope) from None
    rendered["subject"] = rendered["subject"].strip()
    return rendered


def message_of(step: journey_pb2.Step) -> tuple[str, str]:
    """The (template, to) of a send or notify step."""
    if step.WhichOneof("kind") == "notify":
        return step.notify.template, step.notify.to
    return step.send.template, step.send.to
