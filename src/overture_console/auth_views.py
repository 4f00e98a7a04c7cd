"""Signing in with an Overture token, and signing out.

The sign-in form is protected against login CSRF by a double submit: the
page sets a random value in an HttpOnly, SameSite=Strict cookie and in a
hidden field, and the POST must carry both, equal. The token is checked
against the token table the services use (the same ``OVERTURE_AUTH_TOKENS``)
to learn its tenant and roles, which decide what the console shows; the
services still authorize every call themselves. Service tokens (tenant
``*``) cannot sign in.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture_runtime.errors import OvertureError

from .render import page
from .sessions import COOKIE, LOGIN_COOKIE
from .web import BadInput, Console, Visit, read_form, view

__all__ = ["routes"]


def _safe_next(value: str) -> str:
    """Only a path of this console (no scheme, no host, no ``//``): never an open redirect."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(c) < 32 for c in value) or len(value) > 2000:
        return "/journeys"
    return value


def _cookie(response: Response, console: Console, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=console.settings.console_secure_cookies,
                        path="/")


def _form(request: Request, *, status: int = 200, error: str = "") -> Response:
    console: Console = request.app.state.console
    login = secrets.token_urlsafe(32)
    response = page(request, "sign_in.html", status=status, login=login, error=error, next=_safe_next(request.query_params.get("next", "")))
    _cookie(response, console, LOGIN_COOKIE, login, max_age=3600)
    return response


async def sign_in_page(request: Request) -> Response:
    """The sign-in form."""
    return _form(request)


async def sign_in(request: Request) -> Response:
    """Check the token, start a session, and go where the person was going."""
    console: Console = request.app.state.console
    try:
        form = await read_form(request)
    except BadInput as error:
        return _form(request, status=400, error=str(error))
    sent, kept = form.get("login"), request.cookies.get(LOGIN_COOKIE, "")
    if not isinstance(sent, str) or not kept or not hmac.compare_digest(sent.encode(), kept.encode()):
        return _form(request, status=403, error="The sign-in form expired or did not come from this console; try again.")
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    if not token or len(token) > 4096 or not token.isascii() or not token.isprintable():
        return _form(request, status=400, error="Enter your Overture token.")
    try:
        principal = console.tokens.authenticate({"authorization": f"Bearer {token}"})
    except OvertureError:
        return _form(request, status=401, error="This token is not valid here (a service token cannot sign in to the console).")
    session_id, _ = await console.sessions.create(token=token, tenant=principal.tenant, principal=principal.name, roles=principal.roles)
    nxt = form.get("next")
    response = RedirectResponse(_safe_next(nxt if isinstance(nxt, str) else ""), status_code=303)
    _cookie(response, console, COOKIE, session_id, max_age=None)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@view()
async def sign_out(visit: Visit) -> Response:
    """End the session."""
    await visit.console.sessions.delete(visit.session)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    visit.request.scope.pop("console.session_dirty", None)
    return response


routes = [
    Route("/sign-in", sign_in_page, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/sign-out", sign_out, methods=["POST"]),
]
