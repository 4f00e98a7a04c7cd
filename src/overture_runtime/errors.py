"""The one root exception of Overture, and its mapping to ``google.rpc.Status``.

Domain code raises these; it never touches gRPC. The server's error
interceptor turns them into a status with an ``ErrorInfo`` (reason and
domain), plus ``BadRequest`` field violations or ``RetryInfo`` where they fit.
Any other exception is a bug: it becomes ``INTERNAL`` with a logged id, and
no traceback reaches the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "OvertureError",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violations",
    "to_rpc_status",
]


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of an input."""

    field: str
    """The path of the field, for example ``events[3].event_type``."""
    description: str
    """What is wrong, for a human. Never contains personal data."""
    reason: str = "INVALID"
    """A machine-readable reason, UPPER_SNAKE_CASE."""


class OvertureError(Exception):
    """The root of every error Overture raises on purpose.

    Subclasses fix the gRPC status code. ``reason`` is an UPPER_SNAKE
    machine-readable cause, stable across releases.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_after: timedelta | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = tuple(violations)
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})


class InvalidArgument(OvertureError):
    """The input is invalid; ``violations`` says where and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(OvertureError):
    """The named resource does not exist (for the caller's tenant)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(OvertureError):
    """The resource to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(OvertureError):
    """The system is not in the state the operation needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(OvertureError):
    """The caller presented no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(OvertureError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(OvertureError):
    """A quota or limit is exceeded; retry after ``retry_after``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(OvertureError):
    """A dependency cannot be reached right now; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Unimplemented(OvertureError):
    """The operation is part of the contract but not built yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


@dataclass
class Violations:
    """Collects field violations, to report every problem of an input at once.

    >>> v = Violations()
    >>> v.require("event_type", "")
    >>> v.raise_if_any("invalid event")  # raises InvalidArgument
    """

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str, reason: str = "INVALID") -> None:
        """Record one problem."""
        self.items.append(FieldViolation(field_path, description, reason))

    def require(self, field_path: str, value: object) -> bool:
        """Record a REQUIRED violation when *value* is empty; return whether it was set."""
        if value in (None, "", 0, b"") or (hasattr(value, "__len__") and len(value) == 0):  # type: ignore[arg-type]
            self.add(field_path, f"{field_path} is required", "REQUIRED")
            return False
        return True

    def extend(self, other: Iterable[FieldViolation], prefix: str = "") -> None:
        """Add *other*'s violations, with their field paths under *prefix*."""
        for v in other:
            path = f"{prefix}.{v.field}" if prefix and v.field else (prefix or v.field)
            self.items.append(FieldViolation(path, v.description, v.reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "the request is invalid") -> None:
        """Raise :class:`InvalidArgument` carrying every recorded violation."""
        if self.items:
            raise InvalidArgument(f"{message}: {self.items[0].description}", violations=self.items)


MAX_REPORTED_VIOLATIONS = 50
"""Field violations one error reports at most; a note says how many more there were."""
_VIOLATION_BYTES = 6 * 1024  # base64 in a trailer: well under the 16 KiB clients accept


def to_rpc_status(error: OvertureError, *, domain: str) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` of *error*, with its details packed."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    details.append(_pack(info))
    if error.violations:
        # The status travels in a trailer, and clients refuse trailers past
        # 16 KiB: a request with hundreds of problems reports the first ones.
        shown: list[error_details_pb2.BadRequest.FieldViolation] = []
        size = 0
        for v in error.violations[:MAX_REPORTED_VIOLATIONS]:
            item = error_details_pb2.BadRequest.FieldViolation(field=v.field[:256], description=v.description[:256], reason=v.reason[:64])
            size += item.ByteSize() + 4
            if size > _VIOLATION_BYTES and shown:
                break
            shown.append(item)
        if len(error.violations) > len(shown):
            more = len(error.violations) - len(shown)
            shown.append(error_details_pb2.BadRequest.FieldViolation(
                field="", description=f"and {more} more problem(s) of the same request", reason="MORE_VIOLATIONS"))
        details.append(_pack(error_details_pb2.BadRequest(field_violations=shown)))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=error.code.value[0], message=error.message[:1024], details=details)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed

