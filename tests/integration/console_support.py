"""The console in this process, over a running cluster, and an HTTP client
that signs in the way a browser does (the sign-in form's double-submit
value, then the session cookie; each form's CSRF token read from the page)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx

from overture_console.app import create_app
from overture_console.library import JourneyLibrary
from overture_console.services import Services
from overture_console.sessions import SessionStore
from overture_console.web import Console
from overture_runtime.auth import TokenTable
from overture_runtime.clock import SystemClock
from overture_runtime.config import Settings
from overture_runtime.redis import Keys, create_redis
from overture_runtime.sealing import Sealer

from .cluster import Cluster

SIGNING_KEY = "console-test-signing-key-0123456789"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextlib.asynccontextmanager
async def console_app(cluster: Cluster, make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    """The console over *cluster*; yields a factory of HTTP clients (each its own cookie jar, like a browser)."""
    settings = make_settings(signing_keys=SIGNING_KEY, console_journey_templates=str(EXAMPLES),
                             **{f"{svc}_address": address for svc, address in cluster.addresses.items()})
    redis = create_redis(settings.redis_url)
    console = Console(settings=settings, services=Services(settings),
                      sessions=SessionStore(redis=redis, keys=Keys(settings.redis_namespace), sealer=Sealer([SIGNING_KEY]), clock=SystemClock(),
                                            idle_seconds=600),
                      tokens=TokenTable(settings.auth_tokens), library=JourneyLibrary(EXAMPLES))
    app = create_app(settings, console=console)
    clients: list[httpx.AsyncClient] = []

    def client() -> httpx.AsyncClient:
        made = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test", timeout=60)
        clients.append(made)
        return made

    try:
        yield client
    finally:
        for made in clients:
            await made.aclose()
        await console.services.close()
        await redis.aclose()


def hidden(html: str, name: str) -> str:
    """The value of the first hidden input *name* in *html*."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in the page"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """Sign *client* in with *token*; returns the answer to the form."""
    form = await client.get("/sign-in")
    return await client.post("/sign-in", data={"login": hidden(form.text, "login"), "token": token, "next": "/journeys"})


async def post_form(client: httpx.AsyncClient, path: str, fields: list[tuple[str, str]]) -> httpx.Response:
    """POST *fields* (repeated names allowed, in order) as a browser posts a form."""
    return await client.post(path, content=urlencode(fields), headers={"content-type": "application/x-www-form-urlencoded"})


async def csrf(client: httpx.AsyncClient, page: str = "/journeys") -> str:
    """The session's CSRF token, as a page's forms carry it."""
    return hidden((await client.get(page)).text, "csrf")
