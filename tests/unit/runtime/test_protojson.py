"""Unit tests of :mod:`overture_runtime.protojson`: canonical JSON, digests and parsing."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_runtime.protojson import canonical_json, digest, from_json, struct_from_dict, struct_to_dict, to_dict

CANONICAL = (
    '{"channel":"CHANNEL_EMAIL","content":{"data":{"a":{"b":[1.0,"x"],"y":true},"z":1.0},"subject":"Héllo"},'
    '"idempotency_key":"run-1:step-a","metadata":{"journey":"welcome","run_id":"r1"},"tags":["b","a"]}'
)


def _message(metadata: list[tuple[str, str]], data: dict[str, Any]) -> delivery_pb2.Message:
    """A message whose map and Struct entries are inserted in the given order."""
    message = delivery_pb2.Message(idempotency_key="run-1:step-a", channel=messaging_pb2.CHANNEL_EMAIL, tags=["b", "a"])
    for key, value in metadata:
        message.metadata[key] = value
    message.content.subject = "Héllo"
    for key, value in data.items():
        message.content.data[key] = value
    return message


@pytest.fixture
def forward() -> delivery_pb2.Message:
    """The example message, entries inserted in one order."""
    return _message([("run_id", "r1"), ("journey", "welcome")], {"z": 1, "a": {"y": True, "b": [1, "x"]}})


@pytest.fixture
def backward() -> delivery_pb2.Message:
    """The same message, every map and Struct entry inserted in the reverse order."""
    return _message([("journey", "welcome"), ("run_id", "r1")], {"a": {"b": [1, "x"], "y": True}, "z": 1})


def test_canonical_json_is_sorted_compact_and_uses_proto_names(forward: delivery_pb2.Message) -> None:
    """The canonical form has sorted keys, no whitespace, proto field names, enum names and unescaped text."""
    assert canonical_json(forward) == CANONICAL


def test_canonical_json_ignores_map_and_struct_insertion_order(forward: delivery_pb2.Message, backward: delivery_pb2.Message) -> None:
    """Messages equal up to map and Struct entry order have the same canonical JSON and digest."""
    assert canonical_json(forward) == canonical_json(backward)
    assert digest(forward) == digest(backward)


def test_canonical_json_keeps_repeated_field_order(forward: delivery_pb2.Message) -> None:
    """Reordering a repeated field changes the canonical form: list order is content."""
    reordered = delivery_pb2.Message()
    reordered.CopyFrom(forward)
    reordered.tags[:] = ["a", "b"]
    assert canonical_json(reordered) != canonical_json(forward)


def test_canonical_json_omits_defaults() -> None:
    """Fields at their default value are left out, so an empty message is {}."""
    assert canonical_json(delivery_pb2.Message()) == "{}"
    assert canonical_json(delivery_pb2.Message(subject_id="s", tags=[], channel=messaging_pb2.CHANNEL_UNSPECIFIED)) == '{"subject_id":"s"}'


def test_digest_is_the_sha256_of_the_canonical_form(forward: delivery_pb2.Message) -> None:
    """The digest is the lower-case hex sha256 of the canonical JSON's UTF-8 bytes, so it is stable."""
    assert digest(forward) == hashlib.sha256(CANONICAL.encode()).hexdigest()


def test_digest_changes_with_content(forward: delivery_pb2.Message) -> None:
    """A change of any value changes the digest."""
    changed = delivery_pb2.Message()
    changed.CopyFrom(forward)
    changed.metadata["run_id"] = "r2"
    assert digest(changed) != digest(forward)


def test_to_dict_uses_proto_field_names(forward: delivery_pb2.Message) -> None:
    """to_dict keys are proto field names, not lowerCamelCase JSON names."""
    result = to_dict(forward)
    assert "idempotency_key" in result and "idempotencyKey" not in result
    assert result["metadata"] == {"run_id": "r1", "journey": "welcome"}


def test_from_json_round_trips_text(forward: delivery_pb2.Message) -> None:
    """Parsing the canonical JSON gives back an equal message."""
    assert from_json(canonical_json(forward), delivery_pb2.Message) == forward


def test_from_json_round_trips_a_dict(forward: delivery_pb2.Message) -> None:
    """Parsing to_dict's output gives back an equal message."""
    parsed = from_json(to_dict(forward), delivery_pb2.Message)
    assert isinstance(parsed, delivery_pb2.Message)
    assert parsed == forward


def test_from_json_accepts_json_names() -> None:
    """lowerCamelCase JSON names parse as well as proto names."""
    assert from_json('{"idempotencyKey": "k"}', delivery_pb2.Message).idempotency_key == "k"


def test_from_json_rejects_unknown_fields() -> None:
    """A field the message does not have is a parse error."""
    with pytest.raises(json_format.ParseError):
        from_json('{"no_such_field": 1}', delivery_pb2.Message)


def test_struct_dict_round_trip() -> None:
    """struct_from_dict and struct_to_dict are inverses for JSON-like data (numbers as floats)."""
    data = {"plan": "pro", "seats": 3.0, "flags": [True, None], "nested": {"a": "b"}}
    assert struct_to_dict(struct_from_dict(data)) == data


def test_struct_from_dict_of_nothing_is_empty() -> None:
    """None and {} give an empty Struct."""
    assert struct_from_dict(None).fields == {}
    assert struct_from_dict({}).fields == {}


_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False))
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=25)


@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=6))
def test_struct_to_dict_gives_what_message_to_dict_gives(data: dict[str, object]) -> None:
    """The direct walk is MessageToDict's answer, value for value and type for type."""
    struct = struct_from_dict(data)
    ours, theirs = struct_to_dict(struct), json_format.MessageToDict(struct)
    assert ours == theirs
    assert repr(ours) == repr(theirs)  # the same types (floats stay floats), in the same order


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_struct_to_dict_refuses_what_json_cannot_hold_as_message_to_dict_does(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.update({"deep": [{"n": number}]})
    with pytest.raises(ValueError):
        json_format.MessageToDict(struct)
    with pytest.raises(ValueError):
        struct_to_dict(struct)
    unset = struct_pb2.Struct()
    unset.fields["empty"].SetInParent()  # a Value with no kind: null, as MessageToDict says
    assert struct_to_dict(unset) == json_format.MessageToDict(unset) == {"empty": None}
