"""``POST /email/feedback``: a provider (or a mail server's pipe) posts a
bounce (RFC 3464) or a complaint (ARF, RFC 5965) as the raw message it
received, with a bearer token holding ``deliveries.report``. The body goes
as is to the connectors service's ``ReportEmailFeedback``, which finds the
delivery and reports it; the answer says what the report was. A report the
connectors service could not hand on is a 503 with ``Retry-After``: post it
again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc
from overture_runtime.auth import TokenTable
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.errors import FieldViolation, InvalidArgument, OvertureError, ResourceExhausted, Unavailable

from .http import TooLarge, credentials, read_body

__all__ = ["FEEDBACK_PATH", "feedback_routes"]

FEEDBACK_PATH = "/email/feedback"
_ACCEPTED = {"message/rfc822", "multipart/report", "text/plain", "application/octet-stream"}


def feedback_routes(*, tokens: TokenTable, settings: Settings, connectors: connector_service_pb2_grpc.ConnectorServiceStub | None,
                    error_response: Callable[[OvertureError], JSONResponse]) -> list[Route]:
    """The route of the feedback door."""

    async def feedback(request: Request) -> Response:
        try:
            principal = tokens.authenticate(credentials(request))
            tokens.authorize(principal, "deliveries.report")
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in _ACCEPTED:
                raise InvalidArgument(f"post the report as one of {', '.join(sorted(_ACCEPTED))}", reason="UNSUPPORTED_MEDIA_TYPE",
                                      violations=[FieldViolation("content-type", "not a mail message type", "UNSUPPORTED_MEDIA_TYPE")])
            try:
                raw = await read_body(request)
            except TooLarge:
                raise ResourceExhausted("the report is too large", reason="BODY_TOO_LARGE") from None
            if not raw:
                raise InvalidArgument("the body must be the report", reason="REQUIRED",
                                      violations=[FieldViolation("body", "the body must be the report", "REQUIRED")])
            if connectors is None:
                raise Unavailable("no connectors service is configured", reason="NOT_CONFIGURED")
            try:
                answer = await connectors.ReportEmailFeedback(connector_service_pb2.ReportEmailFeedbackRequest(raw_message=raw),
                                                              metadata=call_metadata(settings, principal.tenant),
                                                              timeout=settings.rpc_timeout_seconds)
            except grpc.aio.AioRpcError as error:
                raise Unavailable(f"the report could not be handed on ({error.code().name}); post it again", reason="DOWNSTREAM_UNAVAILABLE",
                                  retry_after=dt.timedelta(seconds=5)) from None
        except OvertureError as error:
            return error_response(error)
        kind = connector_service_pb2.EmailFeedbackKind.Name(answer.kind).removeprefix("EMAIL_FEEDBACK_KIND_").lower()
        return JSONResponse({"kind": kind, "delivery_id": answer.delivery_id, "detail": answer.detail})

    return [Route(FEEDBACK_PATH, feedback, methods=["POST"])]
