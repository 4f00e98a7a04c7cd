"""The console over real services (in-process, on PostgreSQL and Redis):
access (sessions, roles, CSRF), masking, the builder's spec, and every page
with data."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from overture.orchestrator.v1 import journey_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.rules.v1 import rules_service_pb2 as R
from overture_console.app import ROUTES
from overture_console.library import JourneyLibrary
from overture_runtime.config import Settings
from overture_runtime.protojson import digest
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, SERVICE_TOKEN, admin_metadata
from tests.thinpath import EXAMPLES, eventually, example_journey, example_rule_set

from .cluster import Cluster, running_cluster
from .console_support import console_app, hidden, post_form, sign_in
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


@pytest.fixture
async def browser(cluster: Cluster, make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    async with console_app(cluster, make_settings) as make:
        yield make


def _pages() -> list[str]:
    """Every GET route, with made-up path parameters."""
    found = []
    for route in ROUTES:
        if isinstance(route, Route) and "GET" in (route.methods or ()) and route.path not in ("/", "/healthz", "/sign-in"):
            found.append(re.sub(r"\{[^}]+\}", "x", route.path))
    return found


def _actions() -> list[str]:
    return [re.sub(r"\{[^}]+\}", "x", r.path) for r in ROUTES if isinstance(r, Route) and "POST" in (r.methods or ()) and r.path != "/sign-in"]


async def test_nothing_is_served_without_a_session(browser: Callable[[], httpx.AsyncClient]) -> None:
    """Every page redirects to the sign-in form and every action is refused (401) without a session, or with a forged session cookie."""
    for cookie in (None, "forged-session-id"):
        client = browser()
        if cookie:
            client.cookies.set("overture_console", cookie)
        for path in _pages():
            response = await client.get(path)
            assert response.status_code == 303 and response.headers["location"].startswith("/sign-in?next="), (path, response.status_code)
        for path in _actions():
            response = await client.post(path, data={"csrf": "x"})
            assert response.status_code == 401, (path, response.status_code)


async def test_sign_in_keeps_the_token_server_side_in_a_strict_cookie(browser: Callable[[], httpx.AsyncClient]) -> None:
    """Signing in sets only a random, HttpOnly, SameSite=Strict session id; a bad token, a service token, or a form without the
    sign-in cookie's value is refused; signing out ends the session."""
    client = browser()
    for token in ("not-a-token", SERVICE_TOKEN):
        assert (await sign_in(client, token)).status_code == 401
    form = await client.get("/sign-in")
    assert (await client.post("/sign-in", data={"login": "forged", "token": ADMIN_TOKEN})).status_code == 403
    assert "login" in form.text
    answer = await sign_in(client, ADMIN_TOKEN)
    assert answer.status_code == 303 and answer.headers["location"] == "/journeys"
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith("overture_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN_TOKEN not in cookie
    page = await client.get("/journeys")
    assert page.status_code == 200 and ADMIN_TOKEN not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    out = await client.post("/sign-out", data={"csrf": hidden(page.text, "csrf")})
    assert out.status_code == 303
    assert (await client.get("/journeys")).status_code == 303


async def test_an_open_redirect_is_not_possible_after_sign_in(browser: Callable[[], httpx.AsyncClient]) -> None:
    """The page to go to after signing in is a path of the console, never another site."""
    client = browser()
    form = await client.get("/sign-in?next=//evil.example/x")
    answer = await client.post("/sign-in", data={"login": hidden(form.text, "login"), "token": ADMIN_TOKEN, "next": "https://evil.example"})
    assert answer.headers["location"] == "/journeys"


async def test_csrf_is_refused_and_a_reader_cannot_act(cluster: Cluster, browser: Callable[[], httpx.AsyncClient]) -> None:
    """A POST without the session's CSRF token changes nothing (403); a read-only token sees no action buttons and its forged
    POST, with a valid CSRF token, is refused (403); the operator's pause with a reason works."""
    await publish_tour(cluster)
    admin, reader = browser(), browser()
    await sign_in(admin, ADMIN_TOKEN)
    await sign_in(reader, READER_TOKEN)
    refused = await admin.post("/journeys/welcome/pause", data={"reason": "no token"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = await admin.post("/journeys/welcome/pause", data={"reason": "wrong", "csrf": "0" * 43})
    assert wrong.status_code == 403
    page = (await reader.get("/journeys")).text
    assert "welcome" in page and ">Pause<" not in page and "New journey" not in page
    forged = await reader.post("/journeys/welcome/pause", data={"reason": "forged", "csrf": hidden(page, "csrf")})
    assert forged.status_code == 403 and "journeys.operate" in forged.text
    for path in ("/runs/x/cancel", "/dead-letters/redrive", "/rule-sets/marketing-email/activate", "/approvals/x/y"):
        assert (await reader.post(path, data={"csrf": hidden(page, "csrf"), "decision": "approve"})).status_code == 403, path
    journey = (await cluster.orchestrator.GetJourney(O.GetJourneyRequest(name="welcome"), metadata=MD)).journey
    assert journey.state == journey_pb2.JOURNEY_STATE_ACTIVE
    admin_page = (await admin.get("/journeys")).text
    assert ">Pause<" in admin_page
    done = await admin.post("/journeys/welcome/pause", data={"reason": "copy review", "csrf": hidden(admin_page, "csrf"), "back": "/journeys"})
    assert done.status_code == 303
    after = await admin.get("/journeys")
    assert "welcome is paused." in after.text and ">Resume<" in after.text
    journey = (await cluster.orchestrator.GetJourney(O.GetJourneyRequest(name="welcome"), metadata=MD)).journey
    assert journey.state == journey_pb2.JOURNEY_STATE_PAUSED


async def test_the_builder_makes_the_same_spec_as_the_yaml_and_shows_problems_at_their_fields(
        cluster: Cluster, browser: Callable[[], httpx.AsyncClient]) -> None:
    """Publishing the welcome template through the builder's form gives the very spec the YAML file holds (same digest); a
    template name that does not exist is shown next to the send step's template field, and nothing is published."""
    name, spec = example_rule_set()
    created = await cluster.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="t"), metadata=MD)
    await cluster.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(rule_set=name, version=created.rule_set_version.version,
                                                                               reason="t"), metadata=MD)
    client = browser()
    await sign_in(client, ADMIN_TOKEN)
    page = await client.get("/builder?template=welcome-journey")
    assert page.status_code == 200, page.text[:500]
    fields = _form_fields(page.text)
    broken = [(k, "no-such-template" if k == "steps.0.send.template" else v) for k, v in fields]
    answer = await post_form(client, "/builder", [*broken, ("op", "publish"), ("reason", "builder")])
    assert answer.status_code == 400, answer.text[:300]
    assert re.search(r'id="f-steps-0-send-template-error"[^>]*>[^<]*no-such-template', answer.text), "the error is not at its field"
    journeys = await cluster.orchestrator.ListJourneys(O.ListJourneysRequest(), metadata=MD)
    assert not journeys.journeys
    answer = await post_form(client, "/builder", [*fields, ("op", "publish"), ("reason", "builder")])
    assert answer.status_code == 303 and answer.headers["location"] == "/journeys/welcome", answer.text[:2000]
    published = (await cluster.orchestrator.GetJourney(O.GetJourneyRequest(name="welcome"), metadata=MD)).journey
    assert published.digest == digest(example_journey()[1])


async def test_every_template_the_builder_offers_publishes_through_its_form_unchanged(
        cluster: Cluster, browser: Callable[[], httpx.AsyncClient]) -> None:
    """Each journey template of examples/ (the journey library included), opened in the builder and published through its
    form as it stands, is the very spec its file holds (same digest)."""
    name, spec = example_rule_set()
    created = await cluster.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="t"), metadata=MD)
    await cluster.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(rule_set=name, version=created.rule_set_version.version,
                                                                               reason="t"), metadata=MD)
    client = browser()
    await sign_in(client, ADMIN_TOKEN)
    templates = JourneyLibrary(EXAMPLES).templates()
    assert {t.key for t in templates} >= {"welcome-journey", "journeys/review-request", "journeys/vip-offer"}
    for template in templates:
        page = await client.get(f"/builder?template={template.key}")
        assert page.status_code == 200, (template.key, page.text[:500])
        answer = await post_form(client, "/builder", [*_form_fields(page.text), ("op", "publish"), ("reason", "builder")])
        assert answer.status_code == 303, (template.key, answer.text[:2000])
        published = (await cluster.orchestrator.GetJourney(O.GetJourneyRequest(name=template.name), metadata=MD)).journey
        assert published.digest == digest(template.spec), template.key


def _form_fields(html: str) -> list[tuple[str, str]]:
    """What a browser would submit from the builder form (inputs, selected options, textareas, checked boxes)."""
    form = html[html.index('id="builder"'):html.index("</form>", html.index('id="builder"'))]
    found: list[tuple[str, str]] = []
    for tag in re.finditer(r"<input ([^>]*)>", form):
        attrs = dict(re.findall(r'(\w[\w-]*)="([^"]*)"', tag.group(1)))
        if "name" in attrs and (attrs.get("type") != "checkbox" or "checked" in tag.group(1)):
            found.append((attrs["name"], _unescape(attrs.get("value", ""))))
    for select in re.finditer(r'<select [^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', select.group(2)) or re.search(r'<option value="([^"]*)"', select.group(2))
        found.append((select.group(1), _unescape(chosen.group(1) if chosen else "")))
    for area in re.finditer(r'<textarea [^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', form, re.S):
        found.append((area.group(1), _unescape(area.group(2))))
    return [(k, v) for k, v in found if not k.startswith(("cond-", "new_kind"))]


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


async def test_every_page_renders_with_data_and_personal_data_is_masked_without_profiles_read(
        cluster: Cluster, browser: Callable[[], httpx.AsyncClient]) -> None:
    """With a journey run, a denied decision and audit entries, every page answers 200; the reader (no profiles.read) sees
    email addresses masked where the operator sees them."""
    c = cluster
    await publish_tour(c)
    from overture.ingest.v1 import ingest_service_pb2 as I

    await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
        _event("identify", "bob@example.com", traits={"email": "bob@example.com", "plan": "pro"}),
        _event("user.signed_up", "bob@example.com", "signup-bob")]), metadata=MD)

    async def denied() -> bool | None:
        runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="bob@example.com"), metadata=MD)).runs
        return bool(runs and runs[0].steps and runs[0].steps[-1].decision_id) or None

    await eventually(denied, what="bob's run to be decided")
    admin, reader = browser(), browser()
    await sign_in(admin, ADMIN_TOKEN)
    await sign_in(reader, READER_TOKEN)
    run_id = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="bob@example.com"), metadata=MD)).runs[0].run_id
    pages = ["/journeys", "/journeys/welcome", "/journeys/welcome/graph", "/builder", "/builder?template=welcome-journey",
             "/builder?journey=welcome", "/runs?journey=welcome&state=completed&subject=bob%40example.com", f"/runs/{run_id}",
             "/approvals", "/dead-letters", "/dead-letters?kind=events", "/rule-sets", "/rule-sets/marketing-email",
             "/rule-sets/marketing-email?candidate=1", "/decisions?subject=bob%40example.com", "/audit", "/analytics",
             "/analytics?journey=welcome"]
    for path in pages:
        response = await admin.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
    decisions = (await admin.get("/decisions?subject=bob%40example.com")).text
    assert "Denied" in decisions and "consent" in decisions and "email/marketing" in decisions
    assert "bob@example.com" in decisions
    audit = (await admin.get("/audit")).text
    assert "Hash chain verified" in audit
    masked = (await reader.get(f"/runs/{run_id}")).text
    assert "bob@example.com" not in masked and "b***@e***.com" in masked
    assert (await reader.get("/decisions?subject=bob%40example.com")).status_code == 403  # decisions.read is not a reader's role
