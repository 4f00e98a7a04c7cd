"""Unit tests of :mod:`overture_runtime.privacy`: masking and pseudonymizing personal data."""

from __future__ import annotations

import pytest

from overture_runtime.privacy import PII_KEYS, mask, mask_mapping, pseudonymize

EMAIL = "alice.liddell@example.com"
PHONE = "+44 20 7946 0958"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("alice@example.com", "a***@e***.com"),
        ("bob@mail.example.org", "b***@m***.org"),
        ("root@localhost", "r***@l***"),
        ("Alice", "A***"),
        (PHONE, "+***"),
        ("", ""),
    ],
)
def test_mask(value: str, masked: str) -> None:
    """mask keeps the first character of an email's local part and domain and the TLD, and only the first character of anything else."""
    assert mask(value) == masked


def test_mask_never_returns_the_value_itself() -> None:
    """A masked value differs from the clear value and does not contain it."""
    for value in (EMAIL, PHONE, "Alice Liddell"):
        assert value not in mask(value)


def test_mask_mapping_masks_pii_keys_whatever_the_value() -> None:
    """Values of PII keys are masked: strings keep one character, other non-empty scalars become ***."""
    masked = mask_mapping({"email": EMAIL, "first_name": "Alice", "Phone": 4420794609, "postal_code": "OX1 1AA"})
    assert masked == {"email": "a***@e***.com", "first_name": "A***", "Phone": "***", "postal_code": "O***"}


def test_mask_mapping_masks_personal_looking_values_under_any_key() -> None:
    """An email- or phone-looking value is masked even under an innocent key."""
    masked = mask_mapping({"contact": EMAIL, "backup": PHONE, "note": "(020) 7946-0958"})
    assert masked == {"contact": "a***@e***.com", "backup": "+***", "note": "(***"}


def test_mask_mapping_leaves_ordinary_values() -> None:
    """Ordinary values, numbers, booleans, None and short digit strings are left unchanged."""
    data = {"event_type": "order.placed", "plan": "pro", "seats": 12, "amount": 19.99, "vip": True, "coupon": None, "code": "12345", "items": ["a", "b"]}
    assert mask_mapping(data) == data


def test_mask_mapping_keeps_booleans_and_none_under_pii_keys() -> None:
    """A boolean or None under a PII key carries no personal data and is kept."""
    assert mask_mapping({"email": None, "phone": False}) == {"email": None, "phone": False}


def test_mask_mapping_recurses_into_nested_mappings_and_lists() -> None:
    """Nested mappings and lists are masked at every level."""
    data = {"profile": {"email": EMAIL, "traits": {"plan": "pro", "phone_number": PHONE}}, "emails": [EMAIL, "n/a"], "last_name": ["Liddell"]}
    masked = mask_mapping(data)
    assert masked == {
        "profile": {"email": "a***@e***.com", "traits": {"plan": "pro", "phone_number": "+***"}},
        "emails": ["a***@e***.com", "n/a"],
        "last_name": ["L***"],
    }
    assert EMAIL not in repr(masked) and PHONE not in repr(masked) and "Liddell" not in repr(masked)


def test_mask_mapping_does_not_modify_its_input() -> None:
    """mask_mapping returns a copy and leaves the original mapping as it was."""
    data = {"email": EMAIL, "nested": {"phone": PHONE}}
    mask_mapping(data)
    assert data == {"email": EMAIL, "nested": {"phone": PHONE}}


def test_mask_mapping_masks_mappings_nested_under_a_pii_key() -> None:
    """Everything under a PII key is masked, even when the value is itself a mapping."""
    masked = mask_mapping({"address": {"line1": "10 Downing Street", "city": "London"}, "name": [{"given": "Alice"}]})
    assert "Downing" not in repr(masked)
    assert "London" not in repr(masked)
    assert "Alice" not in repr(masked)


def test_pii_keys_cover_the_usual_identifiers() -> None:
    """The usual direct identifiers are PII keys."""
    assert {"email", "phone", "first_name", "last_name", "address", "ip_address", "device_token"} <= PII_KEYS


def test_pseudonymize_is_stable() -> None:
    """The same value and salt always give the same pseudonym."""
    assert pseudonymize(EMAIL, salt="s1") == pseudonymize(EMAIL, salt="s1")


def test_pseudonymize_is_salted_and_distinguishes_values() -> None:
    """Different salts or different values give different pseudonyms."""
    assert pseudonymize(EMAIL, salt="s1") != pseudonymize(EMAIL, salt="s2")
    assert pseudonymize(EMAIL) != pseudonymize("bob@example.com")


def test_pseudonymize_hides_the_value() -> None:
    """A pseudonym is a short p_-prefixed hex id that does not contain the value."""
    pseudonym = pseudonymize(EMAIL, salt="s")
    assert pseudonym.startswith("p_") and len(pseudonym) == 18
    int(pseudonym[2:], 16)
    assert "alice" not in pseudonym


def test_pseudonymize_salt_boundary_is_unambiguous() -> None:
    """Moving characters between salt and value changes the pseudonym."""
    assert pseudonymize("bc", salt="a") != pseudonymize("c", salt="ab")
