"""The links in an email, end to end through the four services: one-click
unsubscribe revokes consent before it answers, and the open pixel and
tracked links come back as ``email.opened`` and ``email.clicked`` events."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from overture.common.v1 import event_pb2, messaging_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.rules.v1 import decision_pb2
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set

from .cluster import Cluster, running_cluster

MD = admin_metadata()
SIGNING_KEY = "integration-signing-key-0123456789"
PUBLIC = "https://t.example.com"


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    """The four services, with signing keys, and links under a public URL that the test maps to ingest."""

    def settings(**overrides: Any) -> Settings:
        return make_settings(signing_keys=SIGNING_KEY, public_url=PUBLIC, **overrides)

    async with running_cluster(settings, tmp_path / "mail") as running:
        yield running


def _event(event_type: str, subject: str, event_id: str = "", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def _send_tracked_welcome(c: Cluster, *, footer: bool = False) -> EmailMessage:
    """Publish the tour with a tracked HTML welcome (with an unsubscribe footer in both parts if *footer*), sign alice up,
    and return her email."""
    name, spec = example_rule_set()
    created = await c.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="t"), metadata=MD)
    await c.rules.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
        rule_set=name, version=created.rule_set_version.version, reason="t"), metadata=MD)
    name, journey = example_journey()
    journey.templates["welcome"].html_body = '<html><body><p>Hi! <a href="https://example.com/start?ref=mail">Start</a></p></body></html>'
    if footer:
        journey.templates["welcome"].html_body = journey.templates["welcome"].html_body.replace(
            "</body>", '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body>')
        journey.templates["welcome"].text_body += "\n\nUnsubscribe: {{ unsubscribe_url }}"
    journey.steps[0].send.track_opens = True
    journey.steps[0].send.track_clicks = True
    await c.orchestrator.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey, reason="t"), metadata=MD)
    await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=[
        _event("identify", "alice", traits={"email": "alice@example.com", "plan": "pro"}),
        _event("consent.granted", "alice", channel="email", purpose="marketing"),
        _event("user.signed_up", "alice", "signup-alice"),
    ]), metadata=MD)
    mail = await eventually(lambda: _now(c.mail.messages), what="the welcome email")

    async def step_recorded() -> bool:  # the mail server has the message a moment before the run records its send step
        found = (await c.orchestrator.ListRuns(orch.ListRunsRequest(subject_id="alice"), metadata=MD)).runs
        return any(r.steps for r in found)

    await eventually(step_recorded, what="the run to record its send step")
    return mail[0]


async def _now(value: list[EmailMessage]) -> list[EmailMessage]:
    return value


def _local(url: str, c: Cluster) -> str:
    """*url* (under the public URL) on the test's ingest."""
    assert url.startswith(PUBLIC + "/l/"), url
    return c.http + url.removeprefix(PUBLIC)


async def _event_named(c: Cluster, event_id: str) -> Any:
    try:
        return (await c.ingest.GetEvent(ingest.GetEventRequest(event_id=event_id), metadata=MD)).event.event
    except grpc.aio.AioRpcError:
        return None


async def _decide(c: Cluster) -> decision_pb2.Decision:
    request = rules.EvaluateRequest(rule_set="marketing-email", subject_id="alice", channel=messaging_pb2.CHANNEL_EMAIL)
    return (await c.rules.Evaluate(request, metadata=MD)).decision


async def test_one_click_unsubscribe_revokes_consent_and_the_next_decision_denies(cluster: Cluster) -> None:
    """The POST of RFC 8058 to the email's List-Unsubscribe URL revokes email/marketing consent, so a decision made after it denies for consent."""
    c = cluster
    mail = await _send_tracked_welcome(c)
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = _local(str(mail["List-Unsubscribe"]).strip().strip("<>"), c)
    assert (await _decide(c)).allowed
    async with httpx.AsyncClient() as http:
        page = await http.get(url)
        assert page.status_code == 200 and "<form" in page.text
        assert (await _decide(c)).allowed, "showing the page must not unsubscribe (link scanners GET links)"
        answer = await http.post(url, content=b"List-Unsubscribe=One-Click", headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "unsubscribed", "channel": "email", "purpose": "marketing"}
    decision = await _decide(c)
    assert not decision.allowed
    denying = [(v.kind, v.id) for v in decision.verdicts if v.outcome == decision_pb2.VERDICT_OUTCOME_DENY]
    assert denying == [(decision_pb2.VERDICT_KIND_CONSENT, "email/marketing")]


async def test_the_unsubscribe_url_of_a_template_footer_is_the_one_click_link(cluster: Cluster) -> None:
    """A journey whose template shows {{ unsubscribe_url }} publishes; the email's text and HTML footers carry the List-Unsubscribe
    link itself (not a tracked one), and posting to the footer's link revokes the consent."""
    c = cluster
    mail = await _send_tracked_welcome(c, footer=True)
    header = "".join(str(mail["List-Unsubscribe"]).split()).strip("<>")
    text_part, html_part = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert f"Unsubscribe: {header}" in str(text_part.get_content())  # type: ignore[attr-defined]
    assert f'<a href="{header}">Unsubscribe</a>' in str(html_part.get_content())  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as http:
        answer = await http.post(_local(header, c), content=b"List-Unsubscribe=One-Click",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200 and not (await _decide(c)).allowed


async def test_the_pixel_and_a_tracked_link_become_opened_and_clicked_events(cluster: Cluster) -> None:
    """Loading the pixel answers a GIF and records email.opened; following a tracked link redirects to the original URL and records email.clicked."""
    c = cluster
    mail = await _send_tracked_welcome(c)
    html_part = mail.get_body(("html",))
    assert html_part is not None
    body = str(html_part.get_content())  # type: ignore[attr-defined]
    assert "https://example.com/start" not in body
    pixel = re.search(r'<img src="([^"]+/l/open/[^"]+)"', body)
    click = re.search(r'href="([^"]+/l/click/[^"]+)"', body)
    assert pixel is not None and click is not None
    key = str(mail["X-Overture-Key"])
    async with httpx.AsyncClient() as http:
        gif = await http.get(_local(pixel.group(1), c))
        assert (gif.status_code, gif.headers["content-type"], gif.content[:6]) == (200, "image/gif", b"GIF89a")
        followed = await http.get(_local(click.group(1), c))
    assert followed.status_code == 302
    assert followed.headers["location"] == "https://example.com/start?ref=mail"
    opened = await eventually(lambda: _event_named(c, f"delivery:{key}:opened"), what="the email.opened event")
    clicked = await eventually(lambda: _event_named(c, f"delivery:{key}:clicked"), what="the email.clicked event")
    assert (opened.event_type, opened.subject_id) == ("email.opened", "alice")
    assert clicked.event_type == "email.clicked"
    assert clicked.attributes["detail"] == "https://example.com/start", "the query string (which may hold personal data) is left out"


@pytest.mark.parametrize("path", ["/l/unsubscribe/not-a-token", "/l/open/not-a-token", "/l/click/x", "/l/click/" + "A" * 9000])
async def test_a_forged_link_is_a_json_404(cluster: Cluster, path: str) -> None:
    """A link whose token was not sealed by Overture answers 404 in the JSON error shape, and redirects nowhere."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(cluster.http + path)
    assert answer.status_code == 404
    assert answer.json()["error"]["reason"] == "INVALID_LINK"
    assert "location" not in answer.headers


async def test_an_unsubscribe_post_without_one_click_is_refused(cluster: Cluster) -> None:
    """A POST to a valid unsubscribe link without List-Unsubscribe=One-Click is a 400 naming the field, and revokes nothing."""
    c = cluster
    mail = await _send_tracked_welcome(c)
    url = _local(str(mail["List-Unsubscribe"]).strip().strip("<>"), c)
    async with httpx.AsyncClient() as http:
        for body in (b"", b"List-Unsubscribe=Yes", b"\xff\xfe", urllib.parse.urlencode({"x": "y" * 5000}).encode()):
            answer = await http.post(url, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
            assert answer.status_code == 400, (body[:20], answer.text)
            assert answer.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert (await _decide(c)).allowed
