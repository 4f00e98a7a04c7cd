"""Unit tests of the webhook connector's pure parts: Retry-After, webhook ids and settings checks."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest

from overture_connectors.http_calls import retry_after
from overture_connectors.webhook import WebhookSettings, webhook_id

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_retry_after_reads_seconds_and_http_dates_and_caps_them() -> None:
    """Delay-seconds and an HTTP date both become a delay; a date in the past is no delay; over an hour is capped; junk is None."""
    assert retry_after("30", NOW) == dt.timedelta(seconds=30)
    assert retry_after("Tue, 01 Dec 2026 12:02:00 GMT", NOW) == dt.timedelta(minutes=2)
    assert retry_after("Tue, 01 Dec 2026 11:00:00 GMT", NOW) == dt.timedelta(0)
    assert retry_after("999999", NOW) == dt.timedelta(hours=1)
    assert retry_after("soon", NOW) is None and retry_after(None, NOW) is None


def test_the_webhook_id_is_stable_per_key_and_distinct_across_tenants() -> None:
    """Every attempt of one key carries the same webhook-id, and two tenants' equal keys do not collide."""
    assert webhook_id("acme", "r:s") == webhook_id("acme", "r:s") != webhook_id("globex", "r:s")
    assert webhook_id("acme", "r:s").startswith("msg_")


@pytest.mark.parametrize("settings", [
    {"url": "ftp://example.com/x", "secrets": ["whsec_" + "a" * 32]},
    {"url": "https://example.com/x", "secrets": []},
    {"url": "https://example.com/x", "secrets": ["not base64 !!"]},
    {"url": "https://example.com/x", "secrets": ["whsec_" + "a" * 32], "timeout_seconds": 0},
    {"secrets": ["whsec_" + "a" * 32]},
    {"secrets": ["whsec_" + "a" * 32], "allowed_hosts": ["exa mple.com"]},
])
def test_bad_webhook_settings_are_refused(settings: dict[str, object]) -> None:
    """A non-HTTP URL, no secret, an undecodable secret, a zero timeout, neither url nor allowed_hosts, or a malformed host fails at start-up."""
    with pytest.raises(pydantic.ValidationError):
        WebhookSettings.model_validate(settings)
