"""The console in headless Chromium (Debian's, through Playwright), over the
four services and the console each in its own process, with a real SMTP
server.

The scenario of issue 12: sign in; build a journey from a template through
the form (adding an approval step); preview it, publish it, send an event;
watch the run appear with its timeline; approve the gated step; re-drive a
dead letter; find the decision for a denied subject and see its consent
verdict. Then access (a read-only token sees no action and its forged POST
is refused, a POST without the CSRF token is refused, nothing is served
without a session) and accessibility (every control has an accessible name,
and Tab reaches every action) on every page. A screenshot of each page is
saved under ``OVERTURE_TEST_ARTIFACTS`` (or the test's tmp dir)/console.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.rules.v1 import rules_service_pb2 as rules
from overture.rules.v1 import rules_service_pb2_grpc
from overture_runtime.testing import Processes, free_port
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, admin_metadata
from tests.thinpath import EXAMPLES, example_rule_set

from .harness import _event, recording_smtp
from .processes import service_processes

pytestmark = pytest.mark.e2e
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
SIGNING_KEY = "console-e2e-signing-key-0123456789"
MD = admin_metadata()


@contextlib.asynccontextmanager
async def console_process(running: Processes, log_dir: Path) -> AsyncIterator[str]:
    """``overture serve console`` on a free port, beside *running*; yields its base URL."""
    port = free_port()
    env = {**running.env, "OVERTURE_CONSOLE_PORT": str(port), "OVERTURE_CONSOLE_JOURNEY_TEMPLATES": str(EXAMPLES)}
    with (log_dir / "console.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "overture_cli.main", "serve", "console"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"the console did not start; see {log_dir}/console.log")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, "the console did not stop cleanly"


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("OVERTURE_TEST_ARTIFACTS") or tmp_path) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_UNNAMED = """() => {
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const named = el => (el.labels && el.labels.length && [...el.labels].some(l => l.textContent.trim()))
    || (el.getAttribute('aria-label') || '').trim() || el.getAttribute('aria-labelledby') || (el.getAttribute('title') || '').trim()
    || ((el.tagName === 'BUTTON' || el.tagName === 'A') && el.textContent.trim());
  return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a[href]')]
    .filter(visible).filter(el => !named(el)).map(el => el.outerHTML.slice(0, 120));
}"""
_ACTIONS = """() => [...document.querySelectorAll('main button, main a[href], main input:not([type=hidden]), main select, main textarea')]
  .filter(el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)).length"""


async def _check_page(page: Any, name: str, folder: Path) -> None:
    """Screenshot; every control has an accessible name; Tab reaches every action of the main content, in order."""
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    assert await page.evaluate(_UNNAMED) == [], f"{name}: controls without an accessible name"
    total = await page.evaluate(_ACTIONS)
    if total > 150:  # the builder: Tab through the first 150, which covers its every kind of control
        total = 150
    await page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.__seen = new Set(); "
                        "document.addEventListener('focusin', e => window.__seen.add(e.target)); }")
    await page.focus("body")
    for _ in range(total + 40):
        await page.keyboard.press("Tab")
    reached = await page.evaluate("""total => [...document.querySelectorAll('main button, main a[href], main input:not([type=hidden]), main select, main textarea')]
      .filter(el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)).slice(0, total)
      .filter(el => !window.__seen.has(el)).map(el => el.outerHTML.slice(0, 120))""", total)
    assert reached == [], f"{name}: Tab does not reach {reached[:3]}"


async def _sign_in(context: Any, url: str, token: str) -> Any:
    page = await context.new_page()
    await page.goto(f"{url}/journeys")
    assert "/sign-in" in page.url
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{url}/journeys")
    return page


async def _go(page: Any, locator: Any) -> None:
    """Click *locator* and wait for the page it leads to."""
    async with page.expect_navigation():
        await locator.click()


async def _until(page: Any, url: str, text: str, *, within: float = 60.0) -> None:
    """Reload *url* until its page holds *text*."""
    for _ in range(int(within * 2)):
        await page.goto(url)
        if text in await page.content():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{url} never showed {text!r}")


async def test_the_console_in_a_browser(database_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """Sign in, build from a template, preview, publish, send an event, watch the run, approve, re-drive a dead letter, find the
    consent denial; a reader cannot act, CSRF and no session are refused; every page is labelled and keyboard-navigable."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (bin/test installs it: apt-get install chromium)")
    from playwright.async_api import async_playwright

    shots = _artifacts(tmp_path)
    with recording_smtp(refused=frozenset({"carol@example.com"})) as (smtp, smtp_port):
        async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=smtp_port, log_dir=tmp_path,
                                     extra_env={"OVERTURE_SIGNING_KEYS": SIGNING_KEY}) as running, \
                console_process(running, tmp_path) as url, async_playwright() as pw:
            async with grpc.aio.insecure_channel(running["rules"]) as rc, grpc.aio.insecure_channel(running["ingest"]) as ic:
                name, spec = example_rule_set()
                created = await rules_service_pb2_grpc.RulesServiceStub(rc).CreateRuleSetVersion(
                    rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="e2e"), metadata=MD)
                await rules_service_pb2_grpc.RulesServiceStub(rc).ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
                    rule_set=name, version=created.rule_set_version.version, reason="e2e"), metadata=MD)
                people = []
                for who in ("alice", "carol"):
                    people += [_event("identify", who, traits={"email": f"{who}@example.com", "first_name": who.title()}),
                               _event("consent.granted", who, channel="email", purpose="marketing")]
                people.append(_event("identify", "bob", traits={"email": "bob@example.com"}))
                await ingest_service_pb2_grpc.IngestServiceStub(ic).IngestEvents(ingest.IngestEventsRequest(events=people), metadata=MD)
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                await _scenario(browser, url, shots)
                await _access(browser, url, shots)
            finally:
                await browser.close()
    assert smtp.by_recipient["alice@example.com"] == 1, dict(smtp.by_recipient)


async def _scenario(browser: Any, url: str, shots: Path) -> None:
    context = await browser.new_context()
    page = await _sign_in(context, url, ADMIN_TOKEN)
    await _check_page(page, "01-journeys-empty", shots)
    # Build from the template: a name, an approval step after the send, a preview, publish.
    await _go(page, page.get_by_role("link", name="Builder"))
    await _go(page, page.get_by_role("link", name="welcome-journey"))
    assert "Started from the template welcome-journey" in await page.content()
    await page.get_by_label("Name").first.fill("welcome-console")
    await page.get_by_label("New step").select_option("approval")
    await _go(page, page.get_by_role("button", name="Add step"))
    await page.get_by_label("approver role").fill("marketing-lead")
    await page.get_by_label("message").first.fill("Send the welcome to {{ profile.traits.first_name }}?")
    await _go(page, page.get_by_role("button", name="Preview"))
    preview = page.locator("#preview")
    await preview.wait_for()
    assert "send-welcome" in await preview.inner_text()
    await _check_page(page, "02-builder-preview", shots)
    await page.get_by_label("Reason").last.fill("built in the console")
    await _go(page, page.get_by_role("button", name="Publish"))
    await page.wait_for_url(f"{url}/journeys/welcome-console")
    assert "is published as version 1" in await page.content()
    await _check_page(page, "03-journey", shots)
    # Send events through the journey page: alice (consents), carol (refused by the SMTP server), bob (no consent).
    for subject in ("alice", "carol", "bob"):
        await page.get_by_label("Subject id").fill(subject)
        await page.get_by_label("Event id (optional)").fill(f"signup-{subject}")
        await _go(page, page.get_by_role("button", name="Send event"))
        assert "is accepted" in await page.content()
    # The run appears, with its timeline, waiting at the approval.
    await _until(page, f"{url}/runs?journey=welcome-console&subject=alice", "waiting")
    await _check_page(page, "04-runs", shots)
    await _go(page, page.locator("#runs-table a").first)
    timeline = await page.locator("#timeline").inner_text()
    assert "send-welcome" in timeline and "approval-2" in timeline
    await _check_page(page, "05-run", shots)
    # Approve the gated step.
    await _until(page, f"{url}/approvals", "marketing-lead")
    await _check_page(page, "06-approvals", shots)
    row = page.locator("tr", has_text="Alice")
    await row.get_by_label(re.compile("Reason for the decision")).fill("looks good")
    await _go(page, row.get_by_role("button", name="Approve"))
    assert "is approved at approval-2" in await page.content()
    await _until(page, f"{url}/runs?journey=welcome-console&subject=alice", "completed")
    # Carol's send was refused for good: re-drive her dead letter.
    await _until(page, f"{url}/dead-letters?journey=welcome-console", "carol")
    await _check_page(page, "07-dead-letters", shots)
    await page.get_by_label(re.compile("Re-drive run")).first.check()
    await page.locator("#redrive-reason").fill("relay fixed")
    await _go(page, page.get_by_role("button", name="Re-drive chosen"))
    assert "1 re-driven." in await page.content()
    # The denied subject's decision shows its consent verdict.
    await _go(page, page.get_by_role("link", name="Decisions"))
    await page.get_by_label("Subject id").fill("bob")
    await _go(page, page.get_by_role("button", name="Find decisions"))
    card = page.locator("article.decision").first
    await card.wait_for()
    verdicts = await card.locator("table.verdicts").inner_text()
    assert re.search(r"consent\s+email/marketing\s+deny", verdicts), verdicts
    await _check_page(page, "08-decisions", shots)
    for path, shot in (("/rule-sets", "09-rule-sets"), ("/rule-sets/marketing-email", "10-rule-set"), ("/audit", "11-audit"),
                       ("/analytics", "12-analytics"), ("/journeys", "13-journeys"), ("/builder", "14-builder")):
        await page.goto(url + path)
        await _check_page(page, shot, shots)
    assert "Hash chain verified" in await (await page.goto(url + "/audit")).text()
    await context.close()


async def _access(browser: Any, url: str, shots: Path) -> None:
    # Nothing without a session.
    anonymous = await browser.new_context()
    page = await anonymous.new_page()
    for path in ("/journeys", "/runs", "/audit", "/decisions?subject=bob"):
        await page.goto(url + path)
        assert "/sign-in" in page.url
    await _check_page(page, "00-sign-in", shots)
    answer = await page.request.post(f"{url}/journeys/welcome-console/pause", form={"reason": "x", "csrf": "x"}, max_redirects=0)
    assert answer.status == 401
    await anonymous.close()
    # A reader sees no actions, and a forged POST with its own CSRF token is refused.
    reader = await browser.new_context()
    page = await _sign_in(reader, url, READER_TOKEN)
    html = await page.content()
    assert "welcome-console" in html and ">Pause<" not in html and "New journey" not in html
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    forged = await page.request.post(f"{url}/journeys/welcome-console/pause", form={"reason": "forged", "csrf": csrf or ""}, max_redirects=0)
    assert forged.status == 403
    await page.goto(f"{url}/runs?journey=welcome-console&subject=carol")
    await _go(page, page.locator("#runs-table a").first)
    assert await page.get_by_role("button", name=re.compile("Retry|Cancel")).count() == 0
    await _check_page(page, "15-run-read-only", shots)
    await reader.close()
    # An operator's POST without the CSRF token is refused and changes nothing.
    admin = await browser.new_context()
    page = await _sign_in(admin, url, ADMIN_TOKEN)
    refused = await page.request.post(f"{url}/journeys/welcome-console/pause", form={"reason": "no csrf"}, max_redirects=0)
    assert refused.status == 403
    await page.goto(f"{url}/journeys")
    assert ">Pause<" in await page.content()
    await admin.close()

