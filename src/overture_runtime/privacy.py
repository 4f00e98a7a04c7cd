"""Keeping personal data out of logs, errors and stored records.

:func:`mask_mapping` masks the values of keys that name personal data
(``email``, ``phone``, ``first_name``, ...) and any value that looks like an
email address or a phone number, recursively.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["PII_KEYS", "looks_personal", "mask", "mask_mapping", "mask_text", "pseudonymize"]

PII_KEYS = frozenset(
    {
        "email", "email_address", "phone", "phone_number", "mobile", "name", "first_name", "last_name",
        "full_name", "address", "street", "postal_code", "zip", "ip", "ip_address", "birthday",
        "date_of_birth", "token", "device_token", "password", "ssn",
    }
)
"""Keys whose values are personal data, whatever they look like."""

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]|$)")
_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")


def pseudonymize(value: str, *, salt: str = "") -> str:
    """A stable, non-reversible short id for a piece of personal data."""
    return "p_" + hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()[:16]


def mask(value: str) -> str:
    """Mask personal data for display, keeping just enough to recognise it.

    ``alice@example.com`` becomes ``a***@e***.com``; anything else keeps only
    its first character.
    """
    if not value:
        return value
    if "@" in value:
        local, _, domain = value.partition("@")
        host, dot, tld = domain.rpartition(".")
        return f"{local[:1]}***@{(host or tld)[:1]}***{dot}{tld if host else ''}"
    return f"{value[:1]}***"


_EMAIL_IN_TEXT = re.compile(r"[^@\s<>()\[\]\"',;:]+@[^@\s<>()\[\]\"',;:]+\.[A-Za-z]{2,}")
_PHONE_IN_TEXT = re.compile(r"(?<![\w-])\+?\d[\d\s().-]{5,18}\d(?![\w-])")


def mask_text(text: str) -> str:
    """*text* with every email address and phone number in it masked (free text: a rendered message, an error).

    A run of digits is a phone number when it has 7 to 15 digits and is not a date (``2025-01-01``)."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask(m.group(0)), text)

    def phone(match: re.Match[str]) -> str:
        found = match.group(0)
        digits = sum(c.isdigit() for c in found)
        return mask(found) if 7 <= digits <= 15 and not _DATE.match(found) else found

    return _PHONE_IN_TEXT.sub(phone, text)


def looks_personal(value: str) -> bool:
    """Whether *value*, a whole value, looks like an email address or a phone number."""
    return _looks_personal(value)


def _looks_personal(value: str) -> bool:
    if _DATE.match(value):  # 2025-01-01, 2025-01-01T12:00:00Z: dates, not phone numbers
        return False
    return bool(_EMAIL.match(value) or (_PHONE.match(value) and sum(c.isdigit() for c in value) >= 7))


def mask_mapping(data: Mapping[str, Any], *, key: str = "") -> dict[str, Any]:
    """A copy of *data* with personal data masked, recursively."""
    return {k: _mask_value(k, v) for k, v in data.items()}


def _mask_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):  # the common case, first
        return "***" if key.lower() in PII_KEYS and value is not None and not isinstance(value, bool) else value
    if isinstance(value, Mapping):
        if key.lower() in PII_KEYS:  # everything under a personal key is personal
            return {k: _mask_value(key, v) for k, v in value.items()}
        return mask_mapping(value)
    if isinstance(value, (list, tuple)):
        return [_mask_value(key, item) for item in value]
    if isinstance(value, str) and (key.lower() in PII_KEYS or _looks_personal(value)):
        return mask(value)
    if key.lower() in PII_KEYS and value is not None and not isinstance(value, bool):
        return "***"
    return value
