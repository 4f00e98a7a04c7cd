"""Sealed tokens: short strings that carry a few fields, encrypted and
authenticated, for links in messages and tokens handed to client apps.

A sealed token is a Fernet token (``cryptography``: AES-128-CBC with an
HMAC-SHA256 over it) of a JSON list ``[purpose, expiry, *fields]``. So a
token cannot be forged or altered, does not show what it carries (a subject
id may be personal data, and links pass through mail scanners and proxy
logs), and is good for one purpose only: an open-tracking token is not an
unsubscribe token.

Keys come from ``OVERTURE_SIGNING_KEYS``: the first seals, every one opens,
so a key is rotated by putting the new one first and dropping the old one
once the tokens sealed with it no longer matter. Dropping a key revokes
every token sealed with it. Any secret of 16 characters or more is a key
(it is stretched to a Fernet key with SHA-256).

Not thread-safe to reconfigure; sealing and opening are pure functions of
the keys, safe from any task.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["BadToken", "Sealer"]

_MIN_KEY = 16


class BadToken(Exception):
    """A token that was not sealed by any configured key, was altered, is for
    another purpose, or has expired. The message says which, without the token."""


class Sealer:
    """Seals and opens tokens with the configured keys (see the module docstring)."""

    def __init__(self, keys: Sequence[str]) -> None:
        for key in keys:
            if len(key) < _MIN_KEY:
                raise ValueError(f"a signing key needs at least {_MIN_KEY} characters")
        self._fernet = MultiFernet([_fernet(key) for key in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        """Whether any key is configured; without one nothing can be sealed or opened."""
        return self._fernet is not None

    def seal(self, purpose: str, fields: Sequence[str], *, now: dt.datetime, expires: dt.datetime | None = None) -> str:
        """A token for *purpose* carrying *fields*, good until *expires* (or forever)."""
        if self._fernet is None:
            raise RuntimeError("no signing key is configured (OVERTURE_SIGNING_KEYS)")
        expiry = int(expires.timestamp()) if expires is not None else 0
        data = json.dumps([purpose, expiry, *fields], separators=(",", ":"), ensure_ascii=False).encode()
        token = self._fernet.encrypt_at_time(data, int(now.timestamp()))
        return token.decode().rstrip("=")

    def open(self, purpose: str, token: str, *, now: dt.datetime, arity: int) -> list[str]:
        """The *arity* fields of a token sealed for *purpose*; raises :class:`BadToken`."""
        return self.open_expiring(purpose, token, now=now, arity=arity)[0]

    def open_expiring(self, purpose: str, token: str, *, now: dt.datetime, arity: int) -> tuple[list[str], dt.datetime | None]:
        """The fields of a token, as :meth:`open`, and when it expires (None: never)."""
        if self._fernet is None:
            raise BadToken("this server has no signing key; it cannot read tokens")
        if not token or len(token) > 8192 or not token.isascii():
            raise BadToken("not a token")
        try:
            data = self._fernet.decrypt(token + "=" * (-len(token) % 4))
            value = json.loads(data)
        except (InvalidToken, ValueError, TypeError):
            raise BadToken("not a valid token") from None
        if not (isinstance(value, list) and len(value) == arity + 2 and value[0] == purpose and isinstance(value[1], int)
                and all(isinstance(f, str) for f in value[2:])):
            raise BadToken(f"not a {purpose} token")
        if value[1] and value[1] <= now.timestamp():
            raise BadToken("the token has expired")
        return list(value[2:]), dt.datetime.fromtimestamp(value[1], dt.UTC) if value[1] else None


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"overture-sealing\x00" + secret.encode()).digest()))
