"""``POST /callbacks/{provider}/{tenant}``: a provider's status callback
(an SMS provider reporting a message delivered or failed).

Providers cannot present Overture's bearer tokens, so this door does not
ask for one: the callback is authenticated by the provider's own
signature, which only the connectors service can check (it holds the
provider's secret and knows the callback URL it gave the provider, which
names the tenant). The door checks the path's shape, bounds the body
(64 KiB) and the headers, and hands the body and headers as received to
``ConnectorService.ReportProviderCallback`` with the service's token, for
the path's tenant. The answers: 204 when taken, 401 when the signature does
not verify, 404 for an unknown provider or tenant, 400 for a malformed
callback, and 503 with ``Retry-After`` when it should be posted again.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    OvertureError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

from .http import TooLarge, read_body

__all__ = ["CALLBACK_PATH", "callback_routes"]

CALLBACK_PATH = "/callbacks/{provider}/{tenant}"
_MAX_BODY = 64 * 1024
_MAX_HEADERS = 64
_MAX_HEADER = 8 * 1024
_PROVIDER = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _passed_on(code: grpc.StatusCode, message: str) -> OvertureError:
    """The door's answer to the connectors service's error *code*."""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message, reason="BAD_SIGNATURE")
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):  # an unknown tenant is PERMISSION_DENIED
        return NotFound("no such provider or tenant", reason="UNKNOWN_PROVIDER")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message, reason="MALFORMED_CALLBACK")
    return Unavailable(f"the callback could not be handed on ({code.name}); post it again", reason="DOWNSTREAM_UNAVAILABLE",
                       retry_after=dt.timedelta(seconds=5))


def callback_routes(*, settings: Settings, connectors: connector_service_pb2_grpc.ConnectorServiceStub | None,
                    error_response: Callable[[OvertureError], JSONResponse]) -> list[Route]:
    """The route of the provider callback door."""

    async def callback(request: Request) -> Response:
        try:
            provider, tenant = request.path_params["provider"], request.path_params["tenant"]
            if not _PROVIDER.match(provider) or not _TENANT.match(tenant):
                raise NotFound("no such provider or tenant", reason="UNKNOWN_PROVIDER")
            headers = {k.lower(): v for k, v in request.headers.items()}
            if len(headers) > _MAX_HEADERS or any(len(k) > 256 or len(v) > _MAX_HEADER for k, v in headers.items()):
                raise InvalidArgument("too many or too large headers", reason="HEADERS_TOO_LARGE",
                                      violations=[FieldViolation("headers", "too many or too large headers", "TOO_LARGE")])
            try:
                body = await read_body(request, limit=_MAX_BODY)
            except TooLarge:
                raise ResourceExhausted(f"a callback is at most {_MAX_BODY} bytes", reason="BODY_TOO_LARGE") from None
            if connectors is None:
                raise Unavailable("no connectors service is configured", reason="NOT_CONFIGURED")
            try:
                await connectors.ReportProviderCallback(
                    connector_service_pb2.ReportProviderCallbackRequest(provider=provider, headers=headers, body=body),
                    metadata=call_metadata(settings, tenant), timeout=settings.rpc_timeout_seconds)
            except grpc.aio.AioRpcError as error:
                raise _passed_on(error.code(), (error.details() or "")[:300]) from None
        except OvertureError as error:
            return error_response(error)
        return Response(status_code=204)

    return [Route(CALLBACK_PATH, callback, methods=["POST"])]
