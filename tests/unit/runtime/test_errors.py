"""Unit tests of :mod:`overture_runtime.errors`: the error hierarchy and its ``google.rpc.Status``."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from overture_runtime import errors
from overture_runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OvertureError,
    ResourceExhausted,
    Violations,
    to_rpc_status,
)

DOMAIN = "test.overture.dev"


def _unpack(details: list[any_pb2.Any], message_type: type) -> list:  # type: ignore[type-arg]
    """The details of *message_type* among packed *details*."""
    found = []
    for detail in details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_each_error_maps_to_its_grpc_code(error_type: type[OvertureError], code: grpc.StatusCode) -> None:
    """Each subclass fixes its status code, and the packed status carries the grpc code number."""
    error = error_type("something happened")
    assert error.code == code
    assert isinstance(error, OvertureError)
    status = to_rpc_status(error, domain=DOMAIN)
    assert status.code == code.value[0]
    assert status.message == "something happened"


def test_default_reason_is_the_code_name() -> None:
    """Without an explicit reason, an error's reason is its UPPER_SNAKE default."""
    assert NotFound("gone").reason == "NOT_FOUND"
    assert InvalidArgument("bad").reason == "INVALID_ARGUMENT"
    assert NotFound("gone", reason="RULE_SET_NOT_FOUND").reason == "RULE_SET_NOT_FOUND"


def test_status_packs_error_info_with_reason_domain_and_metadata() -> None:
    """The status always carries one ErrorInfo with the reason, the domain and the metadata."""
    error = FailedPrecondition("not yet", reason="NOT_PUBLISHED", metadata={"rule_set": "marketing"})
    status = to_rpc_status(error, domain=DOMAIN)
    [info] = _unpack(list(status.details), error_details_pb2.ErrorInfo)
    assert info.reason == "NOT_PUBLISHED"
    assert info.domain == DOMAIN
    assert dict(info.metadata) == {"rule_set": "marketing"}
    assert _unpack(list(status.details), error_details_pb2.BadRequest) == []
    assert _unpack(list(status.details), error_details_pb2.RetryInfo) == []


def test_status_packs_bad_request_field_violations_in_order() -> None:
    """Field violations become one BadRequest detail with every violation, in order."""
    error = InvalidArgument(
        "invalid event",
        violations=[FieldViolation("events[0].event_type", "event_type is required", "REQUIRED"), FieldViolation("events[1].subject_id", "too long")],
    )
    status = to_rpc_status(error, domain=DOMAIN)
    [bad] = _unpack(list(status.details), error_details_pb2.BadRequest)
    assert [(v.field, v.description, v.reason) for v in bad.field_violations] == [
        ("events[0].event_type", "event_type is required", "REQUIRED"),
        ("events[1].subject_id", "too long", "INVALID"),
    ]


def test_a_status_with_hundreds_of_violations_stays_small_enough_for_a_trailer() -> None:
    """Past MAX_REPORTED_VIOLATIONS the status reports the first ones and how many more, so the trailer stays under 16 KiB."""
    error = InvalidArgument("bad tags", violations=[FieldViolation(f"message.tags[{i}]", "must not contain NUL characters " * 20,
                                                                   "INVALID_CHARACTERS") for i in range(400)])
    status = to_rpc_status(error, domain=DOMAIN)
    [bad] = _unpack(list(status.details), error_details_pb2.BadRequest)
    assert 1 < len(bad.field_violations) <= errors.MAX_REPORTED_VIOLATIONS + 1
    reported = len(bad.field_violations) - 1
    assert bad.field_violations[-1].reason == "MORE_VIOLATIONS" and f"{400 - reported} more" in bad.field_violations[-1].description
    assert len(status.SerializeToString()) < 12 * 1024  # base64 in the trailer: under the 16 KiB clients accept


def test_status_packs_retry_info() -> None:
    """retry_after becomes a RetryInfo detail with the same delay."""
    error = ResourceExhausted("slow down", retry_after=timedelta(seconds=2, milliseconds=500))
    status = to_rpc_status(error, domain=DOMAIN)
    [retry] = _unpack(list(status.details), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=2.5)


def test_violations_collects_and_reports_truthiness() -> None:
    """A Violations collector is falsy until a problem is added, and keeps every problem."""
    violations = Violations()
    assert not violations
    violations.add("name", "name is bad")
    violations.add("size", "size is too big", "OUT_OF_RANGE")
    assert violations
    assert violations.items == [FieldViolation("name", "name is bad", "INVALID"), FieldViolation("size", "size is too big", "OUT_OF_RANGE")]


def test_raise_if_any_does_nothing_without_violations() -> None:
    """raise_if_any returns quietly when nothing was recorded."""
    Violations().raise_if_any("never raised")


def test_raise_if_any_raises_invalid_argument_with_all_violations() -> None:
    """raise_if_any raises InvalidArgument carrying every violation, its message naming the first."""
    violations = Violations()
    violations.add("a", "a is wrong")
    violations.add("b", "b is wrong")
    with pytest.raises(InvalidArgument) as caught:
        violations.raise_if_any("invalid thing")
    assert caught.value.message == "invalid thing: a is wrong"
    assert [v.field for v in caught.value.violations] == ["a", "b"]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("empty", [None, "", 0, b"", [], {}, ()])
def test_require_records_required_for_empty_values(empty: object) -> None:
    """require records a REQUIRED violation and returns False for an empty value."""
    violations = Violations()
    assert violations.require("field", empty) is False
    assert violations.items == [FieldViolation("field", "field is required", "REQUIRED")]


@pytest.mark.parametrize("present", ["x", 1, -1, b"\x00", [0], {"k": None}, 0.5])
def test_require_accepts_present_values(present: object) -> None:
    """require records nothing and returns True for a non-empty value."""
    violations = Violations()
    assert violations.require("field", present) is True
    assert not violations


def test_extend_prefixes_field_paths() -> None:
    """extend nests the other violations' paths under the prefix, and uses the prefix for pathless ones."""
    inner = [FieldViolation("event_type", "missing", "REQUIRED"), FieldViolation("", "whole item is bad")]
    violations = Violations()
    violations.extend(inner, prefix="events[3]")
    violations.extend([FieldViolation("x", "bad")])
    assert [v.field for v in violations.items] == ["events[3].event_type", "events[3]", "x"]
    assert violations.items[0].reason == "REQUIRED"
