"""What every console route shares: the session, CSRF, roles, errors and
security headers.

:func:`view` wraps a handler. In order, before the handler runs: no
session is a redirect to the sign-in page (GET) or 401 (anything else); a
POST whose form lacks the session's CSRF token is 403; a person without
every role that the route's RPCs declare in the proto is 403 (the services
refuse such a call anyway; the console does not even make it). A
:class:`~overture_console.services.ServiceError` that escapes the handler
becomes an error page with the matching status, and UNAUTHENTICATED (the
token was revoked) ends the session.

:class:`SecurityHeaders` gives every answer a strict Content-Security-Policy
(no inline script or style at all: scripts and styles are files served by
the console), ``nosniff``, no framing and no referrer.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overture_runtime.auth import TokenTable
from overture_runtime.config import Settings

from .library import JourneyLibrary
from .render import page
from .services import Caller, ServiceError, Services, role_of
from .sessions import COOKIE, Session, SessionStore

__all__ = ["CSP", "BadInput", "Console", "Handler", "SecurityHeaders", "Visit", "view"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The Content-Security-Policy of every answer: nothing inline, nothing from elsewhere."""
MAX_FIELDS = 4000


class BadInput(Exception):
    """A request the console cannot use (a bad query parameter or form field); answered 400 with the message."""


@dataclass(frozen=True)
class Console:
    """What the routes share, built once per process."""

    settings: Settings
    services: Services
    sessions: SessionStore
    tokens: TokenTable
    library: JourneyLibrary


@dataclass
class Visit:
    """One request of a signed-in person."""

    request: Request
    session: Session
    call: Caller
    form: FormData | None
    console: Console

    def notice(self, text: str, kind: str = "ok") -> None:
        """Show *text* on the next page (after the redirect)."""
        self.session.notices.append((kind, text))
        self.request.scope["console.session_dirty"] = True

    def field(self, name: str, default: str = "") -> str:
        """A form field, or *default*."""
        value = self.form.get(name) if self.form is not None else None
        return value if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        """Every value of a repeated form field."""
        return [v for v in (self.form.getlist(name) if self.form is not None else []) if isinstance(v, str)]

    def query(self, name: str, default: str = "") -> str:
        """A query parameter, or *default*."""
        return self.request.query_params.get(name, default)

    def can(self, rpc: str) -> bool:
        """Whether the person may call *rpc*."""
        return self.session.can(role_of(rpc))


Handler = Callable[[Visit], Awaitable[Response]]


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _redirect_to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='')}", status_code=303)


def view(*rpcs: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Make *handler* a route needing a session and the roles of *rpcs* (``orchestrator.PauseJourney``)."""
    roles = tuple(role_of(rpc) for rpc in rpcs)

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            console = _console(request)
            session = await console.sessions.load(request.cookies.get(COOKIE))
            if session is None:
                if request.method in ("GET", "HEAD"):
                    return _redirect_to_sign_in(request)
                return page(request, "error.html", status=401, title="Not signed in", message="Sign in first.")
            request.scope["console.session"] = session
            form = None
            try:
                if request.method == "POST":
                    form = await read_form(request)
                    sent = form.get("csrf")
                    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                        return page(request, "error.html", status=403, title="Refused",
                                    message="This form is stale or did not come from the console (CSRF check failed). Reload the page and try again.")
                missing = [r for r in roles if not session.can(r)]
                if missing:
                    return page(request, "error.html", status=403, title="Not allowed",
                                message=f"This needs the role{'s' if len(missing) > 1 else ''} {', '.join(sorted(set(missing)))}, which your token does not hold.")
                visit = Visit(request=request, session=session, call=console.services.caller(session.token), form=form, console=console)
                response = await handler(visit)
            except ServiceError as error:
                if error.code == "UNAUTHENTICATED":
                    await console.sessions.delete(session)
                    return _redirect_to_sign_in(request)
                response = page(request, "error.html", status=error.http_status, title="The service refused", message=error.notice,
                                violations=error.violations)
            except BadInput as error:
                response = page(request, "error.html", status=400, title="Bad request", message=str(error))
            if request.scope.get("console.session_dirty"):
                await console.sessions.save(session)
            return response

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


async def read_form(request: Request) -> FormData:
    """The request's form, bounded (no files, at most 4,000 fields); anything unreadable is :class:`BadInput`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise BadInput("expected a form (application/x-www-form-urlencoded)")
    try:
        return await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=256 * 1024)
    except Exception as error:  # noqa: BLE001 - multipart and Starlette raise several types for malformed bodies
        raise BadInput(f"the form could not be read ({error.__class__.__name__})") from None


def choice(value: str, allowed: Sequence[str], what: str) -> str:
    """*value* when it is one of *allowed* (or empty), else :class:`BadInput`."""
    if value and value not in allowed:
        raise BadInput(f"{what} must be one of: {', '.join(allowed)}")
    return value


def number(value: str, what: str, *, low: int = 0, high: int = 2**62) -> int:
    """*value* as an integer in [low, high] (empty is *low*), else :class:`BadInput`."""
    if not value:
        return low
    if not (value.isascii() and value.lstrip("-").isdigit()) or len(value) > 19:
        raise BadInput(f"{what} must be a whole number")
    found = int(value)
    if not low <= found <= high:
        raise BadInput(f"{what} must be between {low} and {high}")
    return found


class SecurityHeaders:
    """ASGI middleware: the security headers of every HTTP answer."""

    HEADERS: Sequence[tuple[bytes, bytes]] = (
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *self.HEADERS]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

