"""The journey library (examples/journeys), part one: getting customers
started and buying. Each journey validates, is published to a real cluster
(PostgreSQL, Redis, an SMTP sink), and runs through its main path on the
orchestrator's injected clock; the emails that arrive, and the steps and
edges each run took, are what its header promises. Part two is
test_journey_library_retention.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.integration.journey_library import Library, Open, event, html_of, library_cluster, opened_journeys, path, text_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def library(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Library]:
    """One cluster for the module; each test has its own tenant."""
    async with library_cluster(tmp_path_factory.mktemp("mail")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def journey(library: Library) -> AsyncIterator[Open]:
    """Opens library journeys for the test (see :func:`opened_journeys`)."""
    async with opened_journeys(library) as open_journey:
        yield open_journey


async def test_welcome_series_welcomes_then_helps_or_teaches_by_setup_then_invites_the_team(journey: Open) -> None:
    """A sign-up gets the welcome at once, after two days help to finish setting up (tips once set up), after four more a team invitation; a repeated sign-up enters nothing."""
    t = await journey("welcome-series")
    ana = await t.person("ana", first_name="Ana", plan="pro")
    bo = await t.person("bo", first_name="Bo", plan="pro", setup_completed=True)
    await t.send(event("user.signed_up", "ana", "signup-ana", plan="pro"), event("user.signed_up", "bo", "signup-bo"),
                 event("user.signed_up", "ana", "signup-ana-again", plan="pro"))
    (welcome,) = await t.mail_arrives(ana, 1)
    assert welcome["Subject"] == "Welcome to Acme, Ana!" and "for the Pro plan" in text_of(welcome)
    assert welcome["List-Unsubscribe"] and "Unsubscribe: http://127.0.0.1:8080/l/unsubscribe/" in text_of(welcome)
    await t.waiting_at("ana", "wait-two-days")
    await t.waiting_at("bo", "wait-two-days")
    t.clock.advance(dt.timedelta(days=2) - dt.timedelta(seconds=1))
    assert await t.c.apps["orchestrator"].workers.run_once() == 0  # nothing comes due a second early
    t.clock.advance(dt.timedelta(seconds=1))
    await t.waiting_at("ana", "wait-four-days")
    await t.waiting_at("bo", "wait-four-days")
    t.clock.advance(dt.timedelta(days=4))
    ana_run, bo_run = await t.ended("ana"), await t.ended("bo")
    assert [m["Subject"] for m in t.mail(ana)] == ["Welcome to Acme, Ana!", "Need a hand setting up, Ana?", "Acme works better with your team"]
    assert [m["Subject"] for m in t.mail(bo)] == ["Welcome to Acme, Bo!", "Bo, three shortcuts our power users love",
                                                  "Acme works better with your team"]
    assert "Your Pro plan includes up to 10 seats" in text_of(t.mail(ana)[2])
    assert path(ana_run) == [("welcome", "next"), ("wait-two-days", "next"), ("finished-setup", "false"), ("finish-setup", "next"),
                             ("wait-four-days", "next"), ("invite-team", "next")]
    assert path(bo_run)[2:4] == [("finished-setup", "true"), ("power-tips", "next")]
    assert all(s.outcome == "sent" for s in ana_run.steps if s.step_id in ("welcome", "finish-setup", "invite-team"))


async def test_abandoned_cart_reminds_an_hour_later_and_the_order_ends_the_run_converted(journey: Open) -> None:
    """An abandoned cart gets its reminder, listing the products, an hour later; the order that follows ends the run converted, so no last call is sent, and the cart abandoned again that week enters nothing."""
    t = await journey("abandoned-cart")
    ben = await t.person("ben", first_name="Ben")
    cart = dict(cart_id="c-1", total=129.5, currency="EUR", cart_url="https://shop.example.com/cart/c-1",
                products=[{"name": "Trail shoes", "quantity": 1, "price": 129.5}])
    await t.send(event("cart.abandoned", "ben", "cart-1", **cart))
    await t.waiting_at("ben", "wait-an-hour")
    t.clock.advance(dt.timedelta(hours=1))
    (reminder,) = await t.mail_arrives(ben, 1)
    assert reminder["Subject"] == "Ben, you left something in your cart"
    assert "1 x Trail shoes, 129.50 EUR" in text_of(reminder) and "Total: 129.50 EUR" in text_of(reminder)
    assert "Pick up where you left off: https://shop.example.com/cart/c-1" in text_of(reminder)
    assert "/l/click/" in html_of(reminder) and "https://shop.example.com/cart/c-1" not in html_of(reminder)  # links tracked
    await t.waiting_at("ben", "wait-a-day")
    await t.send(event("cart.abandoned", "ben", "cart-2", **cart), event("order.completed", "ben", "order-1", order_id="o-1", total=129.5))
    run = await t.ended("ben")  # and only one run: the second abandonment entered nothing
    assert run.converted and run.goal == "order.completed"
    assert path(run) == [("wait-an-hour", "next"), ("reminder", "next"), ("wait-a-day", "goal")]
    t.clock.advance(dt.timedelta(days=1))
    assert await t.c.apps["orchestrator"].workers.run_once() == 0  # the converted run left no timer behind
    assert len(t.mail(ben)) == 1
