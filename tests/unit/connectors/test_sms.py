"""Unit tests of the sms_http connector's pure parts: E.164 numbers, callback signatures and their reading, settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse

import pydantic
import pytest

from overture_connectors.plugin import CallbackRefused, PermanentFailure
from overture_connectors.sms import SmsConnector, SmsSettings, client_ref, e164, sign
from overture_runtime.clock import ManualClock

SETTINGS = SmsSettings.model_validate({"api_url": "https://api.sms.example/2010-04-01/Accounts/AC1", "account_id": "AC1",
                                       "auth_token": "tok", "from": "+15005550006", "callback_base_url": "https://events.example.com"})


@pytest.mark.parametrize(("address", "region", "expected"), [
    ("(415) 555-2671", "US", "+14155552671"), ("415.555.2671", "US", "+14155552671"), ("+1 415 555 2671", "DE", "+14155552671"),
    ("030 901820", "DE", "+4930901820"), ("+44 (0)20 7946 0958", "US", "+442079460958"), ("07911 123456", "GB", "+447911123456"),
])
def test_numbers_are_normalised_to_e164_in_the_default_region(address: str, region: str, expected: str) -> None:
    """National spellings are read in the default region; international ones keep their country code."""
    assert e164(address, region) == expected


@pytest.mark.parametrize("address", ["+1 415 555 267", "555-2671", "not a number", "+999 123", ""])
def test_invalid_numbers_are_refused_without_showing_them(address: str) -> None:
    """A number that is not a valid one is a permanent failure whose message holds no digit of it."""
    with pytest.raises(PermanentFailure) as refused:
        e164(address, "US")
    assert not any(ch.isdigit() for ch in str(refused.value))


def test_the_signature_is_an_hmac_sha256_over_the_url_and_the_sorted_parameters() -> None:
    """sign() matches an independent computation: the URL, then each name and value sorted by name, keyed with the token."""
    params = {"MessageStatus": "delivered", "MessageSid": "SM1", "ErrorCode": ""}
    expected = base64.b64encode(hmac.new(b"tok", b"https://x/cbErrorCodeMessageSidSM1MessageStatusdelivered", hashlib.sha256).digest())
    assert sign("tok", "https://x/cb", params) == expected.decode()


def _callback(connector: SmsConnector, params: dict[str, str], *, tenant: str = "acme", signature: str | None = None) -> list[object]:
    body = urllib.parse.urlencode(params).encode()
    signed = sign("tok", connector.callback_url(tenant), params) if signature is None else signature
    return list(connector.read_callback(tenant=tenant, headers={"x-signature": signed}, body=body))


def test_a_signed_callback_becomes_a_status_update_and_statuses_map_to_delivery_statuses() -> None:
    """delivered, undelivered (with its error code) and queued become DELIVERED, FAILED and SENT, carrying the sid and our reference."""
    connector = SmsConnector(name="sms-main", settings=SETTINGS, clock=ManualClock(), public_url="http://unused")
    assert connector.callback_url("acme") == "https://events.example.com/callbacks/sms-main/acme"
    ref = client_ref("acme", "r:s")
    (update,) = _callback(connector, {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30005", "ClientRef": ref})
    assert (update.provider_message_id, update.reference, update.status, update.detail) == ("SM1", ref, "failed", "undelivered (error 30005)")  # type: ignore[attr-defined]
    assert [u.status for u in _callback(connector, {"MessageSid": "SM1", "MessageStatus": "delivered"})] == ["delivered"]  # type: ignore[attr-defined]
    assert [u.status for u in _callback(connector, {"MessageSid": "SM1", "MessageStatus": "queued"})] == ["sent"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("params", "signature", "bad_request"), [
    ({"MessageSid": "SM1", "MessageStatus": "delivered"}, "AAAA", False),
    ({"MessageSid": "SM1", "MessageStatus": "delivered"}, "", False),
    ({"MessageSid": "SM1", "MessageStatus": "exploded"}, None, True),
    ({"MessageStatus": "delivered"}, None, True),
])
def test_unsigned_or_unreadable_callbacks_are_refused(params: dict[str, str], signature: str | None, bad_request: bool) -> None:
    """A wrong or missing signature is refused as unauthenticated; a signed callback with an unknown status or no sid as malformed."""
    connector = SmsConnector(name="sms-main", settings=SETTINGS, clock=ManualClock(), public_url="http://unused")
    with pytest.raises(CallbackRefused) as refused:
        _callback(connector, params, signature=signature)
    assert refused.value.bad_request is bad_request


def test_a_callback_signed_for_one_tenant_does_not_verify_for_another() -> None:
    """The tenant is part of the signed URL, so a callback cannot be replayed into another tenant."""
    connector = SmsConnector(name="sms-main", settings=SETTINGS, clock=ManualClock(), public_url="http://unused")
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    with pytest.raises(CallbackRefused):
        _callback(connector, params, tenant="globex", signature=sign("tok", connector.callback_url("acme"), params))


@pytest.mark.parametrize("change", [{"default_region": "XX"}, {"default_region": "us"}, {"api_url": "ftp://x"}, {"from": ""},
                                    {"max_segments": 0}, {"unknown": 1}])
def test_bad_sms_settings_are_refused_without_echoing_the_token(change: dict[str, object]) -> None:
    """An unknown region, a non-HTTP API URL, an empty sender, no segments or an unknown key fails at start-up; the token never shows."""
    values: dict[str, object] = {"api_url": "https://a.example/x", "account_id": "AC1", "auth_token": "s3cret-token", "from": "+15005550006"}
    with pytest.raises(pydantic.ValidationError) as refused:
        SmsSettings.model_validate({**values, **change})
    assert "s3cret-token" not in str(refused.value)
