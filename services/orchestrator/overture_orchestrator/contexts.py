"""A run's context as steps read it: ``steps.<step id>.<key>``.

The context is stored flat, ``<step id>.<key>`` -> value (a webhook's kept
``response``, the ``event`` that ended a wait, an ``approval`` decision),
plus the loop heads' ``visits:<step id>`` counters, which no step reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["steps_of"]


def steps_of(context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{step id: {key: value}}`` from the flat context (loop counters left out)."""
    scope: dict[str, dict[str, Any]] = {}
    for key, value in context.items():
        step_id, dot, what = key.partition(".")
        if dot and not key.startswith("visits:"):
            scope.setdefault(step_id, {})[what] = value
    return scope
