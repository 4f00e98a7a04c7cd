"""The doors behind the links in messages (:mod:`overture_runtime.links`):

- ``GET /l/unsubscribe/{token}``: a page that asks to confirm, with a button
  that POSTs to the same URL (link scanners GET links; they must not
  unsubscribe anyone).
- ``POST /l/unsubscribe/{token}`` with ``List-Unsubscribe=One-Click``
  (RFC 8058, what mailbox providers send): revokes the consent the link
  names through the pipeline every ``consent.revoked`` event takes, so the
  profile is updated before the answer, and the next decision sees it.
- ``GET /l/open/{token}``: a 1x1 GIF; the delivery is reported OPENED.
- ``GET /l/click/{token}``: a redirect to the URL sealed in the token; the
  delivery is reported CLICKED. Only a sealed URL is ever redirected to.

Opens and clicks go to the orchestrator's ``ReportDeliveryStatus``, which
turns them into ``email.opened`` / ``email.clicked`` events (once per
delivery) after the answer is sent: tracking never delays the reader, and a
report that fails is logged and dropped (tracking is best effort; consent
is not, and the unsubscribe answers only once the consent is revoked).
No credentials: the sealed token is the authority, and it names its tenant.
"""

from __future__ import annotations

import base64
import html
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from overture.common.v1 import event_pb2, messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, OvertureError
from overture_runtime.links import CLICK_PATH, OPEN_PATH, UNSUBSCRIBE_PATH, BadToken, Links

from .pipeline import REJECTED, IngestPipeline

__all__ = ["link_routes"]

log = structlog.get_logger("overture.ingest.links")
_T = TypeVar("_T")
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A transparent 1x1 GIF."""
_NO_STORE = {"cache-control": "no-store, max-age=0", "referrer-policy": "no-referrer"}
_MAX_FORM = 4096
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em"><h1>{title}</h1>{body}</body></html>"""


def link_routes(*, pipeline: IngestPipeline, links: Links, settings: Settings, clock: Clock,
                orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub | None,
                error_response: Callable[[OvertureError], JSONResponse]) -> list[Route]:
    """The routes of the link doors."""

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except OvertureError as error:
                return error_response(error)

        return endpoint

    def token_of(request: Request) -> str:
        return str(request.path_params["token"])

    async def unsubscribe_page(request: Request) -> Response:
        what = _read(links.read_unsubscribe, token_of(request), clock)
        body = (f"<p>Stop receiving {html.escape(what.purpose)} {html.escape(what.channel)} messages?</p>"
                '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                '<button type="submit">Unsubscribe</button></form>')
        return HTMLResponse(_PAGE.format(title="Unsubscribe", body=body), headers=_NO_STORE)

    async def unsubscribe(request: Request) -> Response:
        what = _read(links.read_unsubscribe, token_of(request), clock)
        form = await _one_click_form(request)
        if form.get("List-Unsubscribe") != "One-Click":
            raise InvalidArgument("the body must be List-Unsubscribe=One-Click (RFC 8058)", reason="NOT_ONE_CLICK",
                                  violations=[FieldViolation("List-Unsubscribe", "must be One-Click", "NOT_ONE_CLICK")])
        event = event_pb2.Event(event_type="consent.revoked", subject_id=what.subject_id, source="list-unsubscribe")
        event.attributes.update({"channel": what.channel, "purpose": what.purpose, "message": what.idempotency_key})
        (outcome,) = await pipeline.ingest(what.tenant, [event], source="list-unsubscribe")
        if outcome.status == REJECTED:
            raise InvalidArgument("the unsubscribe could not be recorded", reason="UNSUBSCRIBE_REJECTED", violations=outcome.violations)
        log.info("links.unsubscribed", tenant=what.tenant, channel=what.channel, purpose=what.purpose)
        if "text/html" in request.headers.get("accept", ""):
            body = f"<p>You will no longer receive {html.escape(what.purpose)} {html.escape(what.channel)} messages.</p>"
            return HTMLResponse(_PAGE.format(title="Unsubscribed", body=body), headers=_NO_STORE)
        return JSONResponse({"status": "unsubscribed", "channel": what.channel, "purpose": what.purpose}, headers=_NO_STORE)

    async def opened(request: Request) -> Response:
        what = _read(links.read_open, token_of(request), clock)
        report = BackgroundTask(_report, orchestrator, settings, what.tenant, what.idempotency_key, messaging_pb2.DELIVERY_STATUS_OPENED, "")
        return Response(PIXEL, media_type="image/gif", headers=_NO_STORE, background=report)

    async def clicked(request: Request) -> Response:
        what = _read(links.read_click, token_of(request), clock)
        target = urllib.parse.urlsplit(what.url)
        detail = urllib.parse.urlunsplit((target.scheme, target.netloc, target.path, "", ""))  # the query may hold personal data
        report = BackgroundTask(_report, orchestrator, settings, what.tenant, what.idempotency_key, messaging_pb2.DELIVERY_STATUS_CLICKED, detail)
        return RedirectResponse(what.url, status_code=302, headers=_NO_STORE, background=report)

    return [
        Route(UNSUBSCRIBE_PATH, guarded(unsubscribe_page), methods=["GET"]),
        Route(UNSUBSCRIBE_PATH, guarded(unsubscribe), methods=["POST"]),
        Route(OPEN_PATH, guarded(opened), methods=["GET"]),
        Route(CLICK_PATH, guarded(clicked), methods=["GET"]),
    ]


def _read(reader: Callable[..., _T], token: str, clock: Clock) -> _T:
    try:
        return reader(token, now=clock.now())
    except BadToken as error:
        raise NotFound(f"this link is not valid: {error}", reason="INVALID_LINK") from None


async def _one_click_form(request: Request) -> dict[str, str]:
    """The POSTed form, bounded; RFC 8058 allows urlencoded and multipart bodies."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise InvalidArgument("the body is too large for a one-click unsubscribe", reason="BODY_TOO_LARGE")
    if content_type == "multipart/form-data":
        text = body.decode("utf-8", "replace")
        return {"List-Unsubscribe": "One-Click"} if 'name="List-Unsubscribe"' in text and "One-Click" in text else {}
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), strict_parsing=False, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


async def _report(orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub | None, settings: Settings, tenant: str,
                  key: str, status: messaging_pb2.DeliveryStatus.ValueType, detail: str) -> None:
    """Report a delivery's open or click; failures are logged, not raised (the reader already has the answer)."""
    if orchestrator is None:
        return
    try:
        await orchestrator.ReportDeliveryStatus(
            orchestrator_service_pb2.ReportDeliveryStatusRequest(idempotency_key=key, status=status, detail=detail),
            metadata=call_metadata(settings, tenant), timeout=settings.rpc_timeout_seconds)
    except grpc.aio.AioRpcError as error:
        log.warning("links.report_failed", tenant=tenant, status=messaging_pb2.DeliveryStatus.Name(status), code=error.code().name)
