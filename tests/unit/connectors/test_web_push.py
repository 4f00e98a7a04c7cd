"""Unit tests of the web_push kind: its settings checked at start-up, VAPID tokens reused and renewed on
the injected clock, and the per-device claims on SQLite (what ``overture dev`` runs)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from overture_connectors.push_store import DeviceClaims
from overture_connectors.registry import ProviderConfigError, configure
from overture_connectors.vapid import VapidSigner, generate_private_key, load, public_key_of
from overture_connectors.web_push import endpoint_problem, keys_problem
from overture_runtime.clock import ManualClock
from overture_runtime.config import ProviderConfig
from overture_runtime.db import Database

from .test_registry import settings


def _claims(header: str) -> dict[str, object]:
    token = header.split("t=")[1].split(",")[0]
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_bad_web_push_settings_are_listed_at_their_place() -> None:
    """A key that is not P-256, a subject that is not mailto:/https:, a host with a scheme and a TTL past 28 days are each reported."""
    provider = ProviderConfig(name="push", kind="web_push", settings={
        "vapid_private_key": "not-a-key", "subject": "ops@example.com", "endpoint_hosts": ["https://fcm.googleapis.com"],
        "ttl_seconds": 29 * 86400})
    with pytest.raises(ProviderConfigError) as error:
        configure(settings(connector_providers=(provider,)))
    fields = sorted(p.split(":")[0] for p in error.value.problems)
    assert fields == [f"OVERTURE_CONNECTOR_PROVIDERS[0] (push).settings.{f}" for f in
                      ("endpoint_hosts", "subject", "ttl_seconds", "vapid_private_key")]


def test_a_vapid_token_is_reused_per_origin_and_renewed_an_hour_before_it_expires() -> None:
    """The same origin gets the same header for 11 hours, then a new one expiring 12 hours on; each origin has its own aud."""
    key = generate_private_key()
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    signer = VapidSigner(load(key), "mailto:ops@example.com", clock)
    first = signer.authorization("https://fcm.googleapis.com")
    assert signer.public_key == public_key_of(load(key)) and first.endswith(f"k={signer.public_key}")
    assert _claims(first) == {"aud": "https://fcm.googleapis.com", "exp": int((clock.now() + dt.timedelta(hours=12)).timestamp()),
                              "sub": "mailto:ops@example.com"}
    clock.advance(dt.timedelta(hours=10, minutes=59))
    assert signer.authorization("https://fcm.googleapis.com") == first
    assert _claims(signer.authorization("https://updates.push.services.mozilla.com"))["aud"] == "https://updates.push.services.mozilla.com"
    clock.advance(dt.timedelta(minutes=2))
    renewed = signer.authorization("https://fcm.googleapis.com")
    assert renewed != first and _claims(renewed)["exp"] == int((clock.now() + dt.timedelta(hours=12)).timestamp())


def test_endpoints_and_keys_are_checked() -> None:
    """Only https endpoints on an allowed host or its subdomains pass; keys must be a P-256 point and a 16-byte secret."""
    hosts = ("push.services.mozilla.com", "127.0.0.1")
    assert endpoint_problem("https://updates.push.services.mozilla.com/wpush/v2/abc", hosts) is None
    assert endpoint_problem("https://127.0.0.1:8443/push/x", hosts) is None
    for bad in ("http://updates.push.services.mozilla.com/x", "https://evilpush.services.mozilla.com.example/x",
                "https://a:b@push.services.mozilla.com/x", "https://push.services.mozilla.com/x#f", "https://127.0.0.1:0/x", "nonsense"):
        assert endpoint_problem(bad, hosts) is not None, bad
    point = public_key_of(load(generate_private_key()))
    assert keys_problem(point, "AAAAAAAAAAAAAAAAAAAAAA") is None
    assert [(keys_problem(p256dh, auth) or ("",))[0] for p256dh, auth in ((point[:-4], "AAAAAAAAAAAAAAAAAAAAAA"), (point, "AAAA"))] == [
        "p256dh", "auth"]


async def test_a_device_is_claimed_again_only_when_its_last_attempt_may_be_retried(db: Database) -> None:
    """The first attempt claims every device; the next claims only those left to retry and new ones, and reports what the
    others became, a claim left sending included (in doubt)."""
    claims = DeviceClaims(db)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    claimed, earlier = await claims.claim("acme", "run-1:s", ["a", "b", "c", "d"], now=now)
    assert claimed == {"a", "b", "c", "d"} and earlier == {}
    await claims.finish("acme", "run-1:s", {"a": "sent", "b": "retry", "c": "in_doubt"}, now=now)
    claimed, earlier = await claims.claim("acme", "run-1:s", ["a", "b", "c", "d", "e"], now=now)
    assert claimed == {"b", "e"} and earlier == {"a": "sent", "c": "in_doubt", "d": "sending"}
    assert (await claims.claim("globex", "run-1:s", ["a"], now=now))[0] == {"a"}
