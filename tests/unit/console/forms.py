"""Helpers of the console's unit tests: the journey files of the repository
as specs, and what a browser submits from the builder's widgets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overture.orchestrator.v1 import journey_pb2 as J
from overture_cli.specfile import load_spec
from overture_console.builder import Widget, spec_values, widgets

__all__ = ["JOURNEY_FILES", "ROOT", "form_of", "journey_file", "submitted", "widget_paths"]

ROOT = Path(__file__).resolve().parents[3]
JOURNEY_FILES = sorted([*(ROOT / "examples" / "journeys").glob("*.yaml"), *(ROOT / "tests" / "integration" / "journeys").glob("*.yaml")])
"""The journeys of examples/journeys and of the integration tests: realistic specs of every kind."""


def journey_file(name: str) -> tuple[str, J.JourneySpec]:
    """The journey of examples/journeys/*name*.yaml or, failing that, tests/integration/journeys/*name*.yaml."""
    for folder in (ROOT / "examples" / "journeys", ROOT / "tests" / "integration" / "journeys"):
        if (folder / f"{name}.yaml").exists():
            return load_spec(folder / f"{name}.yaml", J.JourneySpec)
    raise FileNotFoundError(name)


def submitted(widget: Widget) -> Iterator[tuple[str, str]]:
    """The (name, value) pairs a browser posts for *widget*, as builder.html draws it: a checked box posts ``on``, an unchecked
    one nothing; a select posts its selected option (the first when none is); groups and rows post their children."""
    if widget.kind in ("group", "rows"):
        for child in widget.children:
            yield from submitted(child)
    elif widget.kind == "oneof":
        yield widget.path, str(widget.value)
        for child in widget.children:
            yield from submitted(child)
    elif widget.kind == "checkbox":
        if widget.value:
            yield widget.path, "on"
    elif widget.kind == "select":
        options = [value for value, _ in widget.options]
        yield widget.path, widget.value if widget.value in options else options[0]
    else:
        yield widget.path, str(widget.value)


def _all(form: dict[str, object]) -> list[Widget]:
    trigger = form["trigger"]
    assert isinstance(trigger, Widget)
    return [*form["top"], *trigger.children, *form["steps"], *form["rest"]]  # type: ignore[misc]


def form_of(name: str, spec: J.JourneySpec | dict[str, Any]) -> list[tuple[str, str]]:
    """What the builder's form posts for *spec* (or the builder's values), as drawn with no field help."""
    fields = [("name", name)]
    for widget in _all(widgets(spec_values(spec) if isinstance(spec, J.JourneySpec) else spec, {})):
        fields += submitted(widget)
    return fields


def widget_paths(values: dict[str, object]) -> set[str]:
    """Every path the builder draws for *values*, with a suffixed path (``.@json``) also under its field's own path."""
    found: set[str] = set()

    def walk(widget: Widget) -> None:
        found.update({widget.path, widget.path.rsplit(".@", 1)[0]})
        for child in widget.children:
            walk(child)

    for widget in _all(widgets(values, {})):
        walk(widget)
    return found
