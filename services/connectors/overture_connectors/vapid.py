"""VAPID (RFC 8292): the application server's identity on web push requests.

A provider has one P-256 key pair. Its public key is the
``applicationServerKey`` browsers subscribe with, so a subscription only
accepts messages signed by that key; the private key signs a short-lived
JWT per push service origin (``aud``), sent as ``Authorization: vapid
t=<jwt>, k=<public key>``. Signing is py_vapid's; the token of an origin is
reused until an hour before it expires (push services accept at most 24
hours), which saves an ECDSA signature per request. Time comes from the
injected clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from overture_runtime.clock import Clock

__all__ = ["VapidSigner", "check_subject", "generate_private_key", "load", "public_key_of"]

_LIFETIME = dt.timedelta(hours=12)
_RENEW_BEFORE = dt.timedelta(hours=1)
_SUBJECT = re.compile(r"^(mailto:[^@\s]+@[^@\s]+|https://[^\s/]+(/\S*)?)$")


def load(private_key: str) -> Vapid02:
    """The VAPID key of *private_key*: base64url raw (32 bytes, as ``web-push generate-vapid-keys`` prints), DER or PEM.
    Raises ValueError when it is none of those or not on P-256."""
    text = private_key.strip()
    try:
        vapid = Vapid02.from_pem(text.encode()) if text.startswith("-----BEGIN") else Vapid02.from_string(text)
    except Exception:  # noqa: BLE001 - py_vapid and cryptography raise assorted errors for a bad key
        raise ValueError("the VAPID private key must be a P-256 key: base64url raw (32 bytes), DER or PEM") from None
    if not isinstance(vapid.private_key, ec.EllipticCurvePrivateKey) or not isinstance(vapid.private_key.curve, ec.SECP256R1):
        raise ValueError("the VAPID private key must be on the P-256 curve")
    return vapid


def public_key_of(vapid: Vapid02) -> str:
    """The ``applicationServerKey``: the uncompressed public point, base64url without padding."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def generate_private_key() -> str:
    """A new VAPID private key, base64url raw (what :func:`load` reads)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return base64.urlsafe_b64encode(key.private_numbers().private_value.to_bytes(32, "big")).rstrip(b"=").decode()


def check_subject(subject: str) -> str:
    """*subject* when it is a ``mailto:`` or ``https:`` contact (RFC 8292 §2.1); else ValueError."""
    if not _SUBJECT.match(subject):
        raise ValueError("the VAPID subject must be a mailto: address or an https: URL where the push service can reach you")
    return subject


class VapidSigner:
    """Makes (and reuses) the Authorization header per push service origin. Not thread-safe; one per event loop."""

    def __init__(self, vapid: Vapid02, subject: str, clock: Clock) -> None:
        self._vapid, self._subject, self._clock = vapid, check_subject(subject), clock
        self.public_key = public_key_of(vapid)
        """The ``applicationServerKey``."""
        self._tokens: dict[str, tuple[str, dt.datetime]] = {}

    def authorization(self, origin: str) -> str:
        """The ``Authorization`` header value for requests to *origin* (``https://host[:port]``)."""
        now = self._clock.now()
        cached = self._tokens.get(origin)
        if cached is not None and cached[1] - now > _RENEW_BEFORE:
            return cached[0]
        expires = now + _LIFETIME
        header = str(self._vapid.sign({"aud": origin, "exp": int(expires.timestamp()), "sub": self._subject})["Authorization"])
        if len(self._tokens) > 1000:  # a handful of push services in practice; bounded anyway
            self._tokens.clear()
        self._tokens[origin] = (header, expires)
        return header
