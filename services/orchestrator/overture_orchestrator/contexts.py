"""A run's context as steps read it: ``steps.<step id>.<key>``.

The context is stored flat, ``<step id>.<key>`` -> value (a webhook's kept
``response``, the ``event`` that ended a wait, an ``approval`` decision),
plus counters no step reads: the loop heads' ``visits:<step id>``, and
``done:<step id>``, how many times the run has left an action step it may
take again (:func:`effect_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DONE", "effect_key", "effect_step", "steps_of"]

DONE = "done:"
"""The prefix of the counters of :func:`effect_key`."""


def steps_of(context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{step id: {key: value}}`` from the flat context (loop counters left out)."""
    scope: dict[str, dict[str, Any]] = {}
    for key, value in context.items():
        step_id, dot, what = key.partition(".")
        if dot and not key.startswith("visits:"):
            scope.setdefault(step_id, {})[what] = value
    return scope


def effect_key(run_id: str, step_id: str, context: Mapping[str, Any]) -> str:
    """The key of a step's effects (its decision, message, profile change):
    ``run_id:step_id`` the first time the run takes the step, and
    ``run_id:step_id#<n>`` the n-th time a loop brings it back, so that each
    time acts once. It stays the same while the step is retried, deferred or
    executed again after a crash: the count moves only when the run leaves
    the step."""
    done = int(context.get(f"{DONE}{step_id}", 0))
    return f"{run_id}:{step_id}#{done + 1}" if done else f"{run_id}:{step_id}"


def effect_step(key: str) -> tuple[str, str]:
    """The (run id, step id) of an :func:`effect_key`."""
    run_id, _, step = key.partition(":")
    return run_id, step.partition("#")[0]
