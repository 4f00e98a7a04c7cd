"""The journey library (examples/journeys), part one: getting customers
started and buying. Each journey validates, is published to a real cluster
(PostgreSQL, Redis, an SMTP sink), and runs through its main path on the
orchestrator's injected clock; the emails that arrive, and the steps and
edges each run took, are what its header promises. Part two is
test_journey_library_retention.py."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.rules.v1 import profile_service_pb2 as P
from tests.integration import journey_library
from tests.integration.journey_library import Open, event, html_of, path, text_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

library, journey = journey_library.library, journey_library.journey  # the module's cluster, and each test's journeys


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


async def test_double_opt_in_sends_marketing_only_after_the_subscriber_confirms(journey: Open) -> None:
    """A sign-up gets the transactional confirmation; the consent its link records resumes the wait, stores the address, tags and segments the profile and only then sends the welcome; an unconfirmed sign-up gets one reminder, then a tag."""
    t = await journey("double-opt-in")
    confirm_url = "https://example.com/newsletter/confirm/abc123"
    await t.send(event("newsletter.subscribed", "eva", "sub-eva", email="eva@example.com", confirm_url=confirm_url, source="footer"),
                 event("newsletter.subscribed", "finn", "sub-finn", email="finn@example.com", confirm_url=confirm_url))
    (confirm,) = await t.mail_arrives("eva@example.com", 1)
    assert confirm["Subject"] == "Please confirm your subscription" and confirm_url in text_of(confirm)
    await t.waiting_at("eva", "wait-for-confirmation")
    await t.send(event("consent.granted", "eva", "consent-eva", channel="email", purpose="marketing"))
    welcome = (await t.mail_arrives("eva@example.com", 2))[1]
    assert welcome["Subject"] == "You're in! Welcome to the Acme newsletter"
    eva = await t.ended("eva")
    assert path(eva) == [("ask-to-confirm", "next"), ("wait-for-confirmation", "event"), ("subscribe", "next"), ("welcome", "next")]
    profile = (await t.c.profiles.GetProfile(P.GetProfileRequest(subject_id="eva"), metadata=t.md)).profile
    assert profile.traits["email"] == "eva@example.com" and profile.traits["newsletter_source"] == "footer"
    assert list(profile.tags) == ["newsletter"] and list(profile.segments) == ["newsletter"]
    await t.waiting_at("finn", "wait-for-confirmation")
    t.clock.advance(dt.timedelta(days=2))
    await t.waiting_at("finn", "wait-after-reminder")
    t.clock.advance(dt.timedelta(days=5))
    finn = await t.ended("finn")
    assert [m["Subject"] for m in t.mail("finn@example.com")] == ["Please confirm your subscription", "Reminder: confirm your subscription"]
    assert path(finn)[1:] == [("wait-for-confirmation", "timeout"), ("remind", "next"), ("wait-after-reminder", "timeout"), ("give-up", "next")]
    unconfirmed = (await t.c.profiles.GetProfile(P.GetProfileRequest(subject_id="finn"), metadata=t.md)).profile
    assert list(unconfirmed.tags) == ["newsletter-unconfirmed"]


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


async def test_review_request_waits_three_days_then_for_ten_on_a_weekday_in_the_customers_zone(journey: Open) -> None:
    """Delivered on a Thursday, the request waits three days (to Sunday), then until Monday 10:00 in New York (the day after the DST change); the review that follows is counted on the profile."""
    t = await journey("review-request", start=dt.datetime(2026, 3, 5, 16, tzinfo=dt.UTC))
    hal = await t.person("hal", first_name="Hal", timezone="America/New_York")
    await t.send(event("order.delivered", "hal", "delivered-o-9", order_id="o-9",
                       products=[{"name": "Trail shoes", "review_url": "https://shop.example.com/review/o-9/1"}]))
    await t.waiting_at("hal", "let-them-try-it")
    t.clock.advance(dt.timedelta(days=3))
    waiting = await t.waiting_at("hal", "weekday-morning")
    monday_ten = dt.datetime(2026, 3, 9, 14, tzinfo=dt.UTC)  # 10:00 EDT
    assert waiting.steps[-1].wake_time.ToDatetime(tzinfo=dt.UTC) == monday_ten
    t.clock.set(monday_ten - dt.timedelta(seconds=1))
    assert await t.c.apps["orchestrator"].workers.run_once() == 0
    t.clock.set(monday_ten)
    (request,) = await t.mail_arrives(hal, 1)
    assert request["Subject"] == "Hal, how are you getting on with your order?"
    assert "Trail shoes: https://shop.example.com/review/o-9/1" in text_of(request)
    await t.waiting_at("hal", "wait-for-review")
    await t.send(event("review.submitted", "hal", "review-1", order_id="o-9", rating=5))
    run = await t.ended("hal")
    assert path(run) == [("let-them-try-it", "next"), ("weekday-morning", "next"), ("ask-for-review", "next"),
                         ("wait-for-review", "event"), ("count-review", "next")]
    profile = (await t.c.profiles.GetProfile(P.GetProfileRequest(subject_id="hal"), metadata=t.md)).profile
    assert profile.traits["reviews_written"] == 1 and list(profile.tags) == ["reviewer"]
