"""Hostile input on every console route: no answer is a 500.

The routes are read from the console app (every GET and POST route), so a
new page is fuzzed without new test code. Each is called, signed in as an
operator (with the session's CSRF token on POSTs), with hostile path
parameters, hostile values for every query parameter the console reads and
for every form field it reads, and malformed bodies; and without a session.
A 4xx must come as a page naming the problem; the console still serves
afterwards.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from overture_console.app import ROUTES
from overture_runtime.config import Settings
from tests.conftest import ADMIN_TOKEN

from .cluster import running_cluster
from .console_support import console_app, hidden, post_form, sign_in
from .test_thin_path import publish_tour

HOSTILE = ["", "x" * 10_000, "\x00", "a\x00b", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "../../etc/passwd", "%00",
           "<script>alert(1)</script>", "-1", "99999999999999999999999", "1e999", "NaN", "0", "welcome", "🎉" * 50, "{}", "[1]",
           "2026-13-45T99:99", "0001-01-01T00:00", "9999-12-31T23:59", "' OR 1=1 --", "latest", "approve", "events"]
SHARP = ["x" * 10_000, "a\x00b", HOSTILE[4], "99999999999999999999999", "2026-13-45T99:99"]
"""The values that reach past the console's own checks into the services (sizes, NUL, surrogates, numbers, times, JSON)."""
PARAMS = ["journey", "state", "subject", "since", "until", "page", "version", "from", "to", "candidate", "kind", "template", "skip", "next"]
FIELDS = ["reason", "version", "decision", "run_ids", "entry_ids", "journey", "event_type", "subject_id", "event_id", "attributes", "op",
          "new_kind", "name", "steps.0.@kind", "steps.0.id", "steps.0.send.channel", "steps.0.retry.max_attempts", "templates.0.@key",
          "trigger.@kind", "trigger.event.filter", "settings.max_actions", "steps.0.update_profile.traits.@json", "sample_attributes",
          "sample_traits", "back", "request_id", "cond-attr:trigger.event.filter", "cond-op:trigger.event.filter"]
OPS = ["refresh", "add-step", "remove:steps.0", "up:steps.1", "add:templates", "add:steps.0.split.branches", "cond:trigger.event.filter",
       "preview", "publish", "draft", "remove:x.y.z", "add:nowhere", "bogus"]


@pytest.fixture
async def browser(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    async with running_cluster(make_settings, tmp_path / "mail") as cluster:
        await publish_tour(cluster)
        async with console_app(cluster, make_settings) as make:
            yield make


def _routes(method: str) -> list[str]:
    return [r.path for r in ROUTES if isinstance(r, Route) and method in (r.methods or ())]


def _fill(path: str, value: str) -> str:
    from urllib.parse import quote

    return re.sub(r"\{[^}]+\}", quote(value, safe="") or "x", path)


def _bad(response: httpx.Response, what: str) -> list[str]:
    if response.status_code == 500:
        return [f"{what}: HTTP 500 {response.text[:200]}"]
    if response.status_code >= 400 and "<h1>" not in response.text:
        return [f"{what}: HTTP {response.status_code} without a page naming the problem"]
    return []


@pytest.mark.timeout(900)
async def test_no_console_route_answers_500_to_hostile_input(browser: Callable[[], httpx.AsyncClient]) -> None:
    """Every route, with hostile path parameters, query parameters, form fields and bodies, signed in or not, answers a page or a
    redirect, never a 500, and the console still serves."""
    client = browser()
    await sign_in(client, ADMIN_TOKEN)
    csrf = hidden((await client.get("/journeys")).text, "csrf")
    anonymous = browser()
    failures: list[str] = []
    for path in _routes("GET"):
        for value in HOSTILE[:12]:
            url = _fill(path, value)
            failures += _bad(await client.get(url), f"GET {url[:80]}")
        for param in PARAMS:
            for value in SHARP:
                response = await client.get(_fill(path, "welcome"), params={param: value})
                failures += _bad(response, f"GET {path}?{param}={value[:20]!r}")
        failures += _bad(await anonymous.get(_fill(path, "welcome")), f"GET {path} without a session")
    for path in [p for p in _routes("POST") if p != "/sign-out"]:  # signing out is tried last: the rest needs the session
        assert (await client.get("/journeys")).status_code == 200, f"the session ended before {path}"
        for value in HOSTILE[:12]:
            url = _fill(path, value)
            failures += _bad(await post_form(client, url, [("csrf", csrf), ("reason", "fuzz")]), f"POST {url[:80]}")
        for field in FIELDS:
            for value in SHARP:
                fields = [("csrf", csrf), ("name", "fuzzed"), ("trigger.@kind", "event"), (field, value)]
                if path == "/builder":
                    for op in OPS if value == SHARP[0] else OPS[:1]:
                        response = await post_form(client, path, [*fields, ("op", op)])
                        failures += _bad(response, f"POST {path} op={op} {field}={value[:20]!r}")
                else:
                    response = await post_form(client, _fill(path, "welcome"), fields)
                    failures += _bad(response, f"POST {path} {field}={value[:20]!r}")
        for body, content_type in ((b"\xff\xfe\x00", "application/x-www-form-urlencoded"), (b"--x\r\n", "multipart/form-data; boundary=x"),
                                   (b'{"csrf": "' + csrf.encode() + b'"}', "application/json"), (b"a=" + b"b" * 300_000, "application/x-www-form-urlencoded"),
                                   (b"&".join(b"f%d=1" % i for i in range(5000)), "application/x-www-form-urlencoded")):
            response = await client.post(_fill(path, "welcome"), content=body, headers={"content-type": content_type})
            failures += _bad(response, f"POST {path} with a malformed body ({content_type}, {len(body)} bytes)")
        failures += _bad(await anonymous.post(_fill(path, "welcome"), data={"csrf": "x"}), f"POST {path} without a session")
    assert (await client.get("/journeys")).status_code == 200
    for value in HOSTILE:
        failures += _bad(await post_form(client, "/sign-out", [("csrf", value)]), f"POST /sign-out csrf={value[:20]!r}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:40])
