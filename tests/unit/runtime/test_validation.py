"""Unit tests of :mod:`overture_runtime.validation`: shared input checks and page tokens."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from overture.rules.v1 import profile_pb2
from overture_runtime.errors import FieldViolation, InvalidArgument, Violations
from overture_runtime.validation import (
    check_identifier,
    check_name,
    check_read_mask,
    check_struct,
    decode_page_token,
    encode_page_token,
    page_size,
)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _nested(levels: int) -> dict[str, Any]:
    """A dict of *levels* nested dicts: _nested(1) == {"leaf": 1}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"child": value}
    return value


def _reasons(violations: Violations) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in violations.items]


@pytest.mark.parametrize("name", ["a", "marketing-email", "r2d2", "a" * 63, "x-"])
def test_check_name_accepts_valid_names(name: str) -> None:
    """Lower-case letters, digits and dashes starting with a letter, up to 63 characters, are valid names."""
    violations = Violations()
    check_name(violations, "name", name)
    assert not violations


@pytest.mark.parametrize("name", ["Marketing", "1abc", "-abc", "a_b", "a b", "a" * 64, "abc\n", "é"])
def test_check_name_rejects_invalid_names(name: str) -> None:
    """Anything outside the name pattern is INVALID_NAME on the given field."""
    violations = Violations()
    check_name(violations, "rule_set", name)
    assert _reasons(violations) == [("rule_set", "INVALID_NAME")]


def test_check_name_empty_is_required_unless_optional() -> None:
    """An empty name is REQUIRED, unless the field is optional."""
    violations = Violations()
    check_name(violations, "journey", "")
    check_name(violations, "after", "", required=False)
    assert _reasons(violations) == [("journey", "REQUIRED")]


@pytest.mark.parametrize("identifier", ["s", "user 42", "ünïcødé", "a" * 256, "{braces}:and:colons"])
def test_check_identifier_accepts_printable_ids(identifier: str) -> None:
    """Any printable text of 1 to 256 characters is a valid identifier."""
    violations = Violations()
    check_identifier(violations, "subject_id", identifier)
    assert not violations


def test_check_identifier_rejects_too_long() -> None:
    """An identifier over 256 characters is TOO_LONG."""
    violations = Violations()
    check_identifier(violations, "subject_id", "a" * 257)
    assert _reasons(violations) == [("subject_id", "TOO_LONG")]


@pytest.mark.parametrize("identifier", ["a\nb", "tab\there", "nul\x00"])
def test_check_identifier_rejects_control_characters(identifier: str) -> None:
    """An identifier with control characters is INVALID_CHARACTERS."""
    violations = Violations()
    check_identifier(violations, "event_id", identifier)
    assert _reasons(violations) == [("event_id", "INVALID_CHARACTERS")]


def test_check_identifier_empty_is_required_unless_optional() -> None:
    """An empty identifier is REQUIRED, unless the field is optional."""
    violations = Violations()
    check_identifier(violations, "subject_id", "")
    check_identifier(violations, "event_id", "", required=False)
    assert _reasons(violations) == [("subject_id", "REQUIRED")]


def test_check_struct_accepts_a_struct_within_limits() -> None:
    """A struct within the size and depth limits records nothing."""
    violations = Violations()
    check_struct(violations, "attributes", _struct({"plan": "pro", "seats": 3, "tags": ["a", "b"]}), max_bytes=1024)
    assert not violations


def test_check_struct_rejects_a_struct_over_the_size_limit() -> None:
    """A struct larger than max_bytes is TOO_LARGE, with both sizes in the description."""
    value = _struct({"blob": "x" * 200})
    violations = Violations()
    check_struct(violations, "attributes", value, max_bytes=100)
    assert _reasons(violations) == [("attributes", "TOO_LARGE")]
    assert str(value.ByteSize()) in violations.items[0].description and "100" in violations.items[0].description


def test_check_struct_size_limit_is_inclusive() -> None:
    """A struct of exactly max_bytes is accepted."""
    value = _struct({"blob": "x" * 50})
    violations = Violations()
    check_struct(violations, "attributes", value, max_bytes=value.ByteSize())
    assert not violations


def test_check_struct_depth_limit_is_inclusive() -> None:
    """A struct nested exactly max_depth levels deep is accepted, one more is TOO_DEEP."""
    ok, too_deep = Violations(), Violations()
    check_struct(ok, "context", _struct(_nested(4)), max_bytes=10_000, max_depth=4)
    check_struct(too_deep, "context", _struct(_nested(5)), max_bytes=10_000, max_depth=4)
    assert not ok
    assert _reasons(too_deep) == [("context", "TOO_DEEP")]


def test_check_struct_counts_lists_as_levels() -> None:
    """Nesting through lists counts towards the depth limit like nesting through structs."""
    violations = Violations()
    check_struct(violations, "context", _struct({"a": [[[{"b": 1}]]]}), max_bytes=10_000, max_depth=4)
    assert _reasons(violations) == [("context", "TOO_DEEP")]


def test_check_struct_default_depth_is_sixteen() -> None:
    """Without max_depth, sixteen levels are accepted and seventeen are not."""
    ok, too_deep = Violations(), Violations()
    check_struct(ok, "context", _struct(_nested(16)), max_bytes=10_000)
    check_struct(too_deep, "context", _struct(_nested(17)), max_bytes=10_000)
    assert not ok
    assert _reasons(too_deep) == [("context", "TOO_DEEP")]


@pytest.mark.parametrize(("requested", "expected"), [(0, 20), (1, 1), (50, 50), (100, 100)])
def test_page_size_within_bounds(requested: int, expected: int) -> None:
    """A page size from 1 to the maximum is kept, and 0 means the default."""
    violations = Violations()
    assert page_size(violations, requested) == expected
    assert not violations


@pytest.mark.parametrize("requested", [-1, 101])
def test_page_size_out_of_bounds_is_a_violation(requested: int) -> None:
    """A negative page size or one above the maximum is OUT_OF_RANGE on page_size, and the default is used."""
    violations = Violations()
    assert page_size(violations, requested, default=7, maximum=100) == 7
    assert _reasons(violations) == [("page_size", "OUT_OF_RANGE")]


def test_page_size_honours_custom_default_and_maximum() -> None:
    """Custom defaults and maxima replace 20 and 100."""
    violations = Violations()
    assert page_size(violations, 0, default=5, maximum=10) == 5
    assert page_size(violations, 10, default=5, maximum=10) == 10
    assert not violations


@pytest.mark.parametrize(("cursor", "fields"), [
    ({"after": "marketing-email"}, {"after": str}), ({"before": 42}, {"before": int}),
    ({"after": "ünïcødé", "seq": 7}, {"after": str, "seq": int}),
])
def test_page_token_round_trip(cursor: dict[str, Any], fields: dict[str, type]) -> None:
    """decode_page_token gives back the cursor encode_page_token was given, when its fields have the expected types."""
    token = encode_page_token(cursor)
    assert "=" not in token
    assert decode_page_token(token, **fields) == cursor


@pytest.mark.parametrize(("cursor", "fields"), [
    ({"before": 5}, {"before": str}), ({"after": "x"}, {"after": int}), ({"after": True}, {"after": int}),
    ({"after": -1}, {"after": int}), ({"after": 2**70}, {"after": int}), ({"after": ""}, {"after": str}),
    ({"after": "a\x00b"}, {"after": str}), ({"after": "x" * 300}, {"after": str}), ({}, {"after": str}),
    ({"after": "x", "extra": 1}, {"after": str}), ({"after": ["x"]}, {"after": str}), ({"after": 1.5}, {"after": int}),
])
def test_page_token_of_the_wrong_shape_is_invalid_argument(cursor: dict[str, Any], fields: dict[str, type]) -> None:
    """A page token whose fields are missing, extra or of the wrong type never reaches SQL: it is INVALID_PAGE_TOKEN."""
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(encode_page_token(cursor), **fields)
    assert [v.reason for v in caught.value.violations] == ["INVALID_PAGE_TOKEN"]


def test_empty_page_token_is_the_first_page() -> None:
    """An empty page token decodes to an empty cursor."""
    assert decode_page_token("") == {}


def _garbage_tokens() -> list[str]:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return ["not a token!", "abcde", b64(b"not json"), b64(b"[1, 2]"), b64(b'"text"'), b64(b"\xff\xfe"), b64(b"null")]


@pytest.mark.parametrize("token", _garbage_tokens())
def test_garbage_page_token_is_invalid_argument(token: str) -> None:
    """A page token this service did not issue is InvalidArgument with a page_token violation."""
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, after=str)
    assert caught.value.violations == (
        FieldViolation("page_token", "page_token is not a token this service issued", "INVALID_PAGE_TOKEN"),
    )


def test_deeply_nested_page_token_is_invalid_argument() -> None:
    """A client-made page token holding deeply nested JSON is InvalidArgument, not an internal error."""
    token = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, after=str)
    assert [v.field for v in caught.value.violations] == ["page_token"]


def test_check_read_mask_is_none_for_all_fields_else_the_named_ones() -> None:
    """An unset or empty mask asks for every field (None); otherwise the set of top-level names."""
    v = Violations()
    assert check_read_mask(v, "read_mask", field_mask_pb2.FieldMask(), profile_pb2.Profile.DESCRIPTOR) is None
    named = check_read_mask(v, "read_mask", field_mask_pb2.FieldMask(paths=["traits", "tags"]), profile_pb2.Profile.DESCRIPTOR)
    assert named == {"traits", "tags"} and not v


@pytest.mark.parametrize(("paths", "field", "reason"), [
    (["traits", "nope"], "read_mask.paths[1]", "UNKNOWN_FIELD"),
    (["traits.email"], "read_mask.paths[0]", "UNKNOWN_FIELD"),
    (["\x00\n" * 100], "read_mask.paths[0]", "UNKNOWN_FIELD"),
    (["erased", "erased"], "read_mask.paths[1]", "DUPLICATE"),
    (["traits"] * 10, "read_mask.paths", "TOO_MANY"),
])
def test_check_read_mask_names_each_bad_path(paths: list[str], field: str, reason: str) -> None:
    """Unknown or nested paths, repeats and more paths than fields are violations of the path (or the list)."""
    v = Violations()
    check_read_mask(v, "read_mask", field_mask_pb2.FieldMask(paths=paths), profile_pb2.Profile.DESCRIPTOR)
    assert [(x.field, x.reason) for x in v.items] == [(field, reason)]
    assert all(len(x.description) < 200 and "\n" not in x.description for x in v.items)
