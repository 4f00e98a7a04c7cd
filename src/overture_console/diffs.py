"""The differences between two versions of a journey's definition, as the
rules service reports those of rule sets: a JSON path, added, removed or
changed, and the values before and after.

Lists of objects with an ``id`` (steps) are matched by id, so that
inserting a step shows one added step rather than every later step changed;
the same ids in another order are one change of the list (the first step
is where runs start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "diff"]


@dataclass(frozen=True)
class Change:
    """One difference."""

    path: str
    kind: str
    """``added``, ``removed`` or ``changed``."""
    before: str
    after: str


def _text(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _keyed(items: list[Any]) -> dict[str, Any] | None:
    if items and all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in items):
        keyed = {i["id"]: i for i in items}
        return keyed if len(keyed) == len(items) else None
    return None


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every difference between *before* and *after* (JSON values), in document order."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in [*before, *(k for k in after if k not in before)]:
            sub = f"{path}.{key}" if path else key
            if key not in after:
                found.append(Change(sub, "removed", _text(before[key]), ""))
            elif key not in before:
                found.append(Change(sub, "added", "", _text(after[key])))
            else:
                found += diff(before[key], after[key], sub)
        return found
    if isinstance(before, list) and isinstance(after, list):
        old, new = _keyed(before), _keyed(after)
        if old is not None and new is not None:
            found = []
            kept = [k for k in old if k in new]
            if kept != [k for k in new if k in old]:  # the same steps in another order: another first step, another journey
                found.append(Change(path or "(all)", "changed", _text(list(old)), _text(list(new))))
            for key in [*old, *(k for k in new if k not in old)]:
                sub = f"{path}[id={key}]"
                if key not in new:
                    found.append(Change(sub, "removed", _text(old[key]), ""))
                elif key not in old:
                    found.append(Change(sub, "added", "", _text(new[key])))
                else:
                    found += diff(old[key], new[key], sub)
            return found
        if len(before) == len(after):
            return [c for i, (b, a) in enumerate(zip(before, after, strict=True)) for c in diff(b, a, f"{path}[{i}]")]
    return [Change(path or "(all)", "changed", _text(before), _text(after))]
