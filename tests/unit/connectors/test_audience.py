"""Unit tests of the audience sync connector's pure parts: normalising and hashing identifiers, and bounded batches."""

from __future__ import annotations

import hashlib

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overture_connectors.audience import AudienceSettings, Hashed, batches, hash_email, hash_phone, hashed
from overture_connectors.plugin import OutboundMessage


def sha(text: str) -> str:
    """The SHA-256 hex of *text*."""
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(("email", "normal"), [
    ("Alice@Example.com", "alice@example.com"), ("  bob@example.org\t", "bob@example.org"), ("A.B+tag@Sub.Example.CO.UK", "a.b+tag@sub.example.co.uk"),
])
def test_emails_are_trimmed_and_lower_cased_before_hashing(email: str, normal: str) -> None:
    """An email is hashed as its trimmed, lower-case form."""
    assert hash_email(email) == sha(normal)


@pytest.mark.parametrize("email", ["", "no-at-sign", "@example.com", "a@localhost", "a b@example.com", "a@b@example.com"])
def test_what_is_not_an_email_address_has_no_hash(email: str) -> None:
    """A string that is not an email address yields no identifier."""
    assert hash_email(email) == ""


def test_phones_are_hashed_in_e164_and_invalid_ones_not_at_all() -> None:
    """National and international spellings of one number hash alike; an invalid number yields nothing."""
    assert hash_phone("(415) 555-2671", "US") == hash_phone("+1 415-555-2671", "DE") == sha("+14155552671")
    assert hash_phone("12", "US") == "" and hash_phone("phone", "US") == ""


def test_members_are_deduplicated_and_a_lone_subject_is_its_address() -> None:
    """The same member twice is kept once, invalid ones are counted as skipped, and without members the address is the identifier."""
    message = OutboundMessage(idempotency_key="k", tenant="t", address="ignored", audience_id="a", audience_operation="add",
                              members=(("A@x.com", ""), ("a@x.com ", ""), ("bad", ""), ("", "+14155552671")))
    members, skipped = hashed(message, "US")
    assert members == [Hashed(email=sha("a@x.com")), Hashed(phone_number=sha("+14155552671"))] and skipped == 1
    lone = OutboundMessage(idempotency_key="k", tenant="t", address="+1 (415) 555-2671", audience_id="a", audience_operation="add")
    assert hashed(lone, "US") == ([Hashed(phone_number=sha("+14155552671"))], 0)


@given(st.lists(st.tuples(st.booleans(), st.booleans()).filter(any), max_size=300), st.integers(min_value=2, max_value=50))
def test_batches_hold_at_most_the_bound_and_never_split_a_member(shape: list[tuple[bool, bool]], size: int) -> None:
    """Every batch holds at most *size* identifiers, members keep their order and stay whole."""
    members = [Hashed("e" * 64 if e else "", "p" * 64 if p else "") for e, p in shape]
    found = list(batches(members, size))
    assert [m for batch in found for m in batch] == members
    assert all(0 < sum(m.size for m in batch) <= size for batch in found)


@pytest.mark.parametrize("change", [{"batch_size": 0}, {"default_region": "ZZ"}, {"url": "ftp://x"}, {"extra": 1}])
def test_bad_audience_settings_are_refused_without_echoing_the_key(change: dict[str, object]) -> None:
    """A zero batch size, an unknown region, a non-HTTP URL or an unknown key fails at start-up; the API key never shows."""
    with pytest.raises(pydantic.ValidationError) as refused:
        AudienceSettings.model_validate({"url": "https://ads.example/v1", "api_key": "s3cret-key", **change})
    assert "s3cret-key" not in str(refused.value)
