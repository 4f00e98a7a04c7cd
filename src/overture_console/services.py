"""The four services as the signed-in person sees them: every call goes
through the generated stubs with that person's own token, so each service
authorizes it as it would any client (the console never uses the service
token).

A failed call becomes a :class:`ServiceError` carrying the gRPC code, the
message, the field violations and the ``ErrorInfo`` reason, so that a page
can show a form's errors next to their fields, or a clear notice for a
part of Overture that a server does not implement yet (UNIMPLEMENTED).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.connectors.v1 import connector_service_pb2_grpc
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from overture.rules.v1 import rules_service_pb2_grpc
from overture_runtime.clients import open_channel
from overture_runtime.config import Settings
from overture_runtime.interceptors import required_role

__all__ = ["SERVICE_NAMES", "Caller", "ServiceError", "Services", "role_of"]

SERVICE_NAMES = {
    "ingest": "overture.ingest.v1.IngestService",
    "rules": "overture.rules.v1.RulesService",
    "orchestrator": "overture.orchestrator.v1.OrchestratorService",
    "connectors": "overture.connectors.v1.ConnectorService",
}
"""The gRPC service each console section talks to, by the short name the console uses."""

_HTTP = {
    "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "CANCELLED": 503,
}


def role_of(rpc: str) -> str:
    """The role an RPC declares in the proto, for ``orchestrator.PauseJourney`` style names."""
    service, _, method = rpc.partition(".")
    return required_role(f"/{SERVICE_NAMES[service]}/{method}")


@dataclass
class ServiceError(Exception):
    """A call that a service refused or could not answer."""

    code: str
    """The gRPC status code's name, for example ``INVALID_ARGUMENT``."""
    message: str
    """What the service said, for a human."""
    rpc: str = ""
    """The call, for example ``orchestrator.PublishJourney``."""
    reason: str = ""
    """The ``ErrorInfo`` reason, when the service gave one."""
    violations: list[tuple[str, str]] = field(default_factory=list)
    """Field violations as (field path, description)."""

    def __str__(self) -> str:
        return f"{self.rpc}: {self.code}: {self.message}"

    @property
    def http_status(self) -> int:
        """The HTTP status a page answers with when this error is the whole answer."""
        return _HTTP.get(self.code, 502)

    @property
    def unimplemented(self) -> bool:
        """Whether the server does not implement the call (yet)."""
        return self.code == "UNIMPLEMENTED"

    @property
    def notice(self) -> str:
        """One line for a page."""
        if self.unimplemented:
            return f"This part of Overture is not available on this server yet ({self.rpc} is not implemented)."
        if self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
            return f"The {self.rpc.partition('.')[0]} service cannot be reached right now; try again in a moment."
        if self.code in ("INTERNAL", "UNKNOWN", "DATA_LOSS"):
            return f"The {self.rpc.partition('.')[0]} service failed: {self.message}"
        return self.message or self.code.replace("_", " ").lower()


def _error(rpc: str, error: grpc.aio.AioRpcError) -> ServiceError:
    found = ServiceError(code=error.code().name, message=error.details() or "", rpc=rpc)
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # a status whose details do not match its code: keep the plain code and message
        status = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.reason = info.reason
    return found


class Services:
    """Channels to the four services, opened once per console process. Not fork-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channels = {name: open_channel(settings.address(name), settings)  # type: ignore[arg-type]
                          for name in SERVICE_NAMES}
        self.stubs: dict[str, Any] = {
            "ingest": ingest_service_pb2_grpc.IngestServiceStub(self._channels["ingest"]),
            "rules": rules_service_pb2_grpc.RulesServiceStub(self._channels["rules"]),
            "orchestrator": orchestrator_service_pb2_grpc.OrchestratorServiceStub(self._channels["orchestrator"]),
            "connectors": connector_service_pb2_grpc.ConnectorServiceStub(self._channels["connectors"]),
        }

    def caller(self, token: str) -> Caller:
        """The services as the holder of *token*."""
        return Caller(self.stubs, token, timeout=self._settings.rpc_timeout_seconds)

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels.values():
            await channel.close()


class Caller:
    """Calls RPCs with one person's token: ``await caller("orchestrator.ListJourneys", request)``."""

    def __init__(self, stubs: dict[str, Any], token: str, *, timeout: float) -> None:
        self._stubs = stubs
        self._metadata: Sequence[tuple[str, str]] = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout

    async def __call__(self, rpc: str, request: Any, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the gRPC deadline
        service, _, method = rpc.partition(".")
        stub = getattr(self._stubs[service], method)
        try:
            return await stub(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _error(rpc, error) from None
