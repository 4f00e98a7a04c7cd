"""``fake_push_service``: a real HTTPS server (uvicorn + Starlette, a throwaway certificate for
127.0.0.1) that speaks the Web Push protocol as a browser's push service does, for one test.

- **RFC 8030**: a message is a POST to the subscription's endpoint; a request without ``TTL`` is
  400; an accepted one is ``201 Created`` with a ``Location`` naming the message.
- **RFC 8292**: ``Authorization: vapid t=<JWT>, k=<key>`` must carry an ES256 JWT whose signature
  verifies under ``k``, whose ``aud`` is this server's origin, whose ``exp`` is in the future and
  at most 24 hours away (by the test's clock), with a ``sub``; else 401. ``k`` must be the key the
  subscription was made with (the application server key), else 403.
- **RFC 8291**: the body is decrypted with the subscribing browser's private key and auth
  secret, which only the test holds, by the steps of the RFC written out here (ECDH, the two
  HKDF stages, AES-128-GCM, the padding delimiter), independently of the library that encrypted.

Each device (a browser subscription) can be told to answer otherwise: a status with headers
(410, 429 with ``Retry-After``, ...), or no answer at all until the client gives up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overture_runtime.testing import free_port

from .connectors_support import self_signed_certificate

__all__ = ["Device", "FakePushService", "Pushed", "b64", "fake_push_service"]


def b64(raw: bytes) -> str:
    """base64url without padding, as the Push API writes keys."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Device:
    """One browser's subscription: the keys the browser keeps, and how its push service answers."""

    name: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    answer: tuple[int, dict[str, str]] | None = None
    """A status and headers to answer with instead of 201; None: accept."""
    stall: bool = False
    """Read the request, then answer nothing until the client gives up."""

    @property
    def p256dh(self) -> str:
        """The browser's public key, as ``PushSubscription.toJSON().keys.p256dh``."""
        return b64(self.private_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    @property
    def auth_secret(self) -> str:
        """As ``keys.auth``."""
        return b64(self.auth)


@dataclass(frozen=True)
class Pushed:
    """A message the push service took (or was sent, when it answered otherwise): decrypted."""

    device: str
    headers: dict[str, str]
    plaintext: bytes
    claims: dict[str, Any]
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        """The decrypted JSON payload."""
        return dict(json.loads(self.plaintext))


@dataclass
class FakePushService:
    """What the server received, and its subscriptions."""

    origin: str
    now: Callable[[], dt.datetime]
    application_server_key: str = ""
    """The VAPID public key subscriptions are made with; requests signed by another key get 403."""
    devices: dict[str, Device] = field(default_factory=dict)
    pushed: list[Pushed] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    """Requests refused for a protocol error: (device, status, why)."""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def subscribe(self, name: str) -> Device:
        """A new browser subscription on this push service (the browser's ``pushManager.subscribe``)."""
        token = secrets.token_urlsafe(24)
        device = Device(name, f"{self.origin}/push/{token}", ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16))
        self.devices[token] = device
        return device

    def received(self, name: str) -> list[Pushed]:
        """What reached device *name*."""
        return [p for p in self.pushed if p.device == name]


def decrypt(body: bytes, device: Device) -> bytes:
    """RFC 8291 §3.4 and RFC 8188 §2: the plaintext of an aes128gcm body sent to *device*."""
    salt, record_size, id_length = body[:16], struct.unpack("!I", body[16:20])[0], body[20]
    as_public, ciphertext = body[21:21 + id_length], body[21 + id_length:]
    assert id_length == 65 and len(ciphertext) <= record_size, "one record, keyed by the sender's ephemeral public key"
    shared = device.private_key.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public))
    ua_public = _unb64(device.p256dh)
    prk_key = hmac.digest(device.auth, shared, "sha256")
    ikm = hmac.digest(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01", "sha256")
    prk = hmac.digest(salt, ikm, "sha256")
    cek = hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", "sha256")[:16]
    nonce = hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", "sha256")[:12]
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
    assert padded.endswith(b"\x02"), "the last record ends with the delimiter 0x02"
    return padded[:-1]


def verify_vapid(authorization: str, *, origin: str, now: dt.datetime) -> tuple[dict[str, Any], str]:
    """RFC 8292 §3: the JWT's claims and the key ``k`` of a ``vapid`` Authorization header; AssertionError when invalid."""
    scheme, _, params = authorization.partition(" ")
    assert scheme.lower() == "vapid", "the vapid scheme"
    values = dict(part.strip().split("=", 1) for part in params.split(","))
    token, key = values["t"], values["k"]
    header_b64, claims_b64, signature_b64 = token.split(".")
    header, claims = json.loads(_unb64(header_b64)), json.loads(_unb64(claims_b64))
    assert header["alg"] == "ES256", "ES256"
    signature = _unb64(signature_b64)
    assert len(signature) == 64, "a JWS ES256 signature is r || s"
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(key))
    try:
        public.verify(encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
                      f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AssertionError("the JWT signature does not verify under k") from None
    assert claims["aud"] == origin, f"aud {claims['aud']!r} is this push service's origin"
    expires = dt.datetime.fromtimestamp(claims["exp"], tz=dt.UTC)
    assert now < expires <= now + dt.timedelta(hours=24), "exp within the next 24 hours"
    assert str(claims.get("sub", "")).startswith(("mailto:", "https:")), "a contact in sub"
    return claims, key


@contextlib.asynccontextmanager
async def fake_push_service(folder: Path, *, now: Callable[[], dt.datetime]) -> AsyncIterator[tuple[FakePushService, Path]]:
    """Serve a :class:`FakePushService` over HTTPS until the block ends; yields it and the CA file a client must trust."""
    self_signed_certificate(folder)
    port = free_port()
    service = FakePushService(origin=f"https://127.0.0.1:{port}", now=now)

    async def push(request: Request) -> Response:
        device = service.devices.get(request.path_params["token"])
        if device is None:
            return Response(status_code=404)
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "ttl" not in headers or not headers["ttl"].isdigit():
            service.refused.append((device.name, 400, "no TTL"))
            return Response(status_code=400)
        try:
            claims, key = verify_vapid(headers.get("authorization", ""), origin=service.origin, now=service.now())
        except (AssertionError, KeyError, ValueError) as error:
            service.refused.append((device.name, 401, str(error)))
            return Response(status_code=401)
        if key != service.application_server_key:
            service.refused.append((device.name, 403, "signed by another key than the subscription's"))
            return Response(status_code=403)
        assert headers.get("content-encoding") == "aes128gcm"
        try:
            plaintext = decrypt(body, device)
        except (AssertionError, ValueError, InvalidTag):
            service.refused.append((device.name, 400, "the body does not decrypt with the subscription's keys"))
            return Response(status_code=400)
        status, extra = device.answer or (201, {})
        service.pushed.append(Pushed(device.name, headers, plaintext, claims, status))
        if device.stall:
            await service.release.wait()
        if status == 201:
            extra = {"location": f"{service.origin}/messages/{hashlib.sha256(body).hexdigest()[:16]}"}
        return Response(status_code=status, headers=extra)

    app = Starlette(routes=[Route("/push/{token}", push, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
                                           ssl_certfile=str(folder / "cert.pem"), ssl_keyfile=str(folder / "key.pem")))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield service, folder / "cert.pem"
    finally:
        service.release.set()
        server.should_exit = True
        await task
