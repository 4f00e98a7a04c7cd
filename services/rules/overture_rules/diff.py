"""The changes between two rule set specs, for auditors.

Lists of items with ids (rules, caps, attributes, test cases) are matched by
id, so that reordering is not reported as a change of every item.
"""

from __future__ import annotations

import json
from typing import Any

from overture.rules.v1 import rule_set_pb2
from overture_runtime.protojson import to_dict

__all__ = ["diff_specs"]

_KEYS = {"rules": "id", "frequency_caps": "id", "attributes": "name", "test_cases": "name"}
C = rule_set_pb2


def diff_specs(before: rule_set_pb2.RuleSetSpec, after: rule_set_pb2.RuleSetSpec) -> list[rule_set_pb2.RuleSetChange]:
    """The changes from *before* to *after*, in document order."""
    changes: list[rule_set_pb2.RuleSetChange] = []
    _diff(to_dict(before), to_dict(after), "", changes)
    return changes


def _j(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _diff(a: Any, b: Any, path: str, out: list[rule_set_pb2.RuleSetChange]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a.keys(), *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else key
            if key not in b:
                out.append(C.RuleSetChange(path=sub, kind=C.RULE_SET_CHANGE_KIND_REMOVED, before=_j(a[key])))
            elif key not in a:
                out.append(C.RuleSetChange(path=sub, kind=C.RULE_SET_CHANGE_KIND_ADDED, after=_j(b[key])))
            elif key in _KEYS and isinstance(a[key], list) and isinstance(b[key], list):
                _diff_keyed(a[key], b[key], sub, _KEYS[key], out)
            else:
                _diff(a[key], b[key], sub, out)
    elif a != b:
        out.append(C.RuleSetChange(path=path, kind=C.RULE_SET_CHANGE_KIND_CHANGED, before=_j(a), after=_j(b)))


def _diff_keyed(a: list[Any], b: list[Any], path: str, key: str, out: list[rule_set_pb2.RuleSetChange]) -> None:
    left = {item.get(key, ""): item for item in a}
    right = {item.get(key, ""): item for item in b}
    for ident in [*left, *(k for k in right if k not in left)]:
        sub = f"{path}[{key}={ident}]"
        if ident not in right:
            out.append(C.RuleSetChange(path=sub, kind=C.RULE_SET_CHANGE_KIND_REMOVED, before=_j(left[ident])))
        elif ident not in left:
            out.append(C.RuleSetChange(path=sub, kind=C.RULE_SET_CHANGE_KIND_ADDED, after=_j(right[ident])))
        else:
            _diff(left[ident], right[ident], sub, out)
