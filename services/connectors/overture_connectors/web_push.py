"""The ``web_push`` kind: Web Push (RFC 8030) to every subscription of the
message's subject, encrypted per RFC 8291 (aes128gcm, by pywebpush) and
signed with VAPID (RFC 8292, :mod:`.vapid`), sent over httpx.

The payload is JSON, ``{"id", "title", "body", "data"}`` (the rendered
subject line, the text body and the structured content), at most
:data:`MAX_PAYLOAD` bytes; a service worker shows it with
``showNotification`` (``examples/push-service-worker.js``). Each request
carries ``TTL`` (the message's, else the provider's ``ttl_seconds``),
``Urgency`` (the message's, else ``high`` for transactional and ``normal``
for marketing messages) and, when the message has one, ``Topic``.

**Exactly once, per device.** The message's key is claimed before anything
is sent (:mod:`.deliveries`), and each device is claimed for the message
before its request goes out (:class:`~.push_store.DeviceClaims`), so an
attempt of the same message again (after a retryable failure) only goes to
the devices that did not get it. Per device, like the webhook kind: no
connection, 408, 429 (after ``Retry-After``) and 5xx but 504 are
retryable; 504 and no answer after the request went out are in doubt,
never tried again; 404 and 410 remove the subscription; other answers
refuse for good. The message as a whole:

- a device retryable -> the message is retryable (the devices that took it
  are skipped when it is sent again);
- else a device took it (now or in an earlier attempt) -> sent;
- else a device in doubt -> in doubt (``status`` reads the device claims);
- else (no subscription, every one gone or refusing) -> failed for good.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import re
import ssl
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pydantic
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPusher

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2, push_pb2
from overture_runtime import Violations
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .http_calls import retry_after
from .plugin import ConnectorContext, InDoubt, OutboundMessage, PermanentFailure, SendResult, TransientFailure
from .push_store import DeviceClaims, PushSubscriptions
from .vapid import VapidSigner, check_subject, load

__all__ = ["DEFAULT_ENDPOINT_HOSTS", "MAX_PAYLOAD", "WebPushConnector", "WebPushPlugin", "WebPushSettings", "check_push_options",
           "endpoint_problem", "keys_problem"]

log = structlog.get_logger("overture.connectors.push")
DEFAULT_ENDPOINT_HOSTS = ("fcm.googleapis.com", "push.services.mozilla.com", "push.apple.com", "notify.windows.com")
"""The push services of Chrome, Firefox, Safari and Edge; a subscription's endpoint must be on one of them (or a subdomain)."""
MAX_PAYLOAD = 3993
"""The largest plaintext one aes128gcm record holds within the 4,096 bytes every push service takes (RFC 8291 §4)."""
MAX_TTL = 28 * 24 * 3600
_URGENCY: dict[int, str] = {push_pb2.PUSH_URGENCY_VERY_LOW: "very-low", push_pb2.PUSH_URGENCY_LOW: "low", push_pb2.PUSH_URGENCY_NORMAL: "normal",
            push_pb2.PUSH_URGENCY_HIGH: "high"}
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SENT, _GONE, _FAILED, _IN_DOUBT, _RETRY = "sent", "gone", "failed", "in_doubt", "retry"


class WebPushSettings(pydantic.BaseModel, frozen=True, extra="forbid"):
    """A web push provider's settings."""

    vapid_private_key: pydantic.SecretStr
    """The VAPID private key (P-256): base64url raw, DER or PEM. Its public key is the applicationServerKey."""
    subject: str
    """The VAPID ``sub``: a ``mailto:`` address or ``https:`` URL where push services can reach the sender."""
    endpoint_hosts: tuple[str, ...] = pydantic.Field(default=DEFAULT_ENDPOINT_HOSTS, min_length=1, max_length=50)
    """Hosts (and their subdomains) a subscription's endpoint may be on: nothing else is ever called."""
    ttl_seconds: int = pydantic.Field(default=86400, ge=0, le=MAX_TTL)
    """How long a push service keeps a message for an offline device, unless the message says."""
    ca_file: str | None = None
    """A PEM bundle of extra certificate authorities to trust (a private push service)."""
    connect_timeout_seconds: float = pydantic.Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = pydantic.Field(default=10.0, gt=0, le=120)

    @pydantic.field_validator("vapid_private_key")
    @classmethod
    def _loads(cls, key: pydantic.SecretStr) -> pydantic.SecretStr:
        load(key.get_secret_value())
        return key

    @pydantic.field_validator("subject")
    @classmethod
    def _contact(cls, subject: str) -> str:
        return check_subject(subject)

    @pydantic.field_validator("endpoint_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(h.strip().lower().strip(".") for h in hosts)
        if any(not h or "/" in h or ":" in h or " " in h for h in cleaned):
            raise ValueError("each endpoint host is a host name, without scheme, port or path")
        return cleaned


def endpoint_problem(endpoint: str, hosts: tuple[str, ...]) -> str | None:
    """Why *endpoint* cannot be a subscription's endpoint, or None: it must be https, on an allowed host, without credentials."""
    if len(endpoint) > 2048 or not endpoint.isprintable():
        return "endpoint must be a URL of at most 2048 printable characters"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return "endpoint is not a URL"
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host or parts.username or parts.password or parts.fragment or port == 0:
        return "endpoint must be an https URL without credentials or fragment"
    if not any(host == allowed or host.endswith("." + allowed) for allowed in hosts):
        return f"endpoint is not on a push service host this service sends to ({', '.join(hosts)})"
    return None


def check_push_options(v: Violations, options: delivery_pb2.PushOptions, *, prefix: str) -> None:
    """Record the problems of a message's push options, with field paths under *prefix*."""
    if options.HasField("ttl") and not dt.timedelta(0) <= options.ttl.ToTimedelta() <= dt.timedelta(seconds=MAX_TTL):
        v.add(f"{prefix}ttl", "ttl must be from 0 to 28 days", "OUT_OF_RANGE")
    if options.topic and not _TOPIC.match(options.topic):
        v.add(f"{prefix}topic", "topic must be 1 to 32 characters of the base64url alphabet (A-Z a-z 0-9 - _)", "INVALID")


def keys_problem(p256dh: str, auth: str) -> tuple[str, str] | None:
    """The field and problem of a subscription's keys, or None: a P-256 public point and a 16-byte secret, base64url."""
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64(p256dh))
    except ValueError:
        return "p256dh", "p256dh must be the browser's P-256 public key, uncompressed, base64url"
    try:
        secret = _b64(auth)
    except ValueError:
        secret = b""
    if len(secret) != 16:
        return "auth", "auth must be the 16-byte authentication secret, base64url"
    return None


def _b64(text: str) -> bytes:
    if not text or len(text) > 200 or not text.isascii():
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None


class WebPushConnector:
    """Sends to every subscription of a subject; see the module docstring. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_PUSH

    def __init__(self, *, name: str, settings: WebPushSettings, subscriptions: PushSubscriptions, claims: DeviceClaims, clock: Clock,
                 rate_limit_per_second: float = 0.0, max_connections: int = 16) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self.settings = settings
        self._subscriptions, self._claims, self._clock = subscriptions, claims, clock
        self.signer = VapidSigner(load(settings.vapid_private_key.get_secret_value()), settings.subject, clock)
        """The VAPID signer; its ``public_key`` is the applicationServerKey."""
        verify: ssl.SSLContext | bool = True
        if settings.ca_file:
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=settings.ca_file)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds),
            follow_redirects=False, verify=verify, limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def payload(self, message: OutboundMessage) -> bytes:
        """The plaintext every device gets: ``{"id", "title", "body", "data"}``."""
        msg_id = "push_" + hashlib.sha256(f"{message.tenant}\x00{message.idempotency_key}".encode()).hexdigest()[:32]
        return orjson.dumps({"id": msg_id, "title": message.subject, "body": message.text_body, "data": message.data})

    def headers(self, message: OutboundMessage, endpoint: str) -> dict[str, str]:
        """The RFC 8030 and RFC 8292 headers of a request to *endpoint*."""
        parts = urlsplit(endpoint)
        ttl = int(message.push_ttl.total_seconds()) if message.push_ttl is not None else self.settings.ttl_seconds
        urgency = _URGENCY.get(message.push_urgency) or (
            "high" if message.category == messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL else "normal")
        headers = {"ttl": str(max(0, min(ttl, MAX_TTL))), "urgency": urgency, "content-encoding": "aes128gcm",
                   "content-type": "application/octet-stream", "authorization": self.signer.authorization(f"{parts.scheme}://{parts.netloc}")}
        if message.push_topic:
            headers["topic"] = message.push_topic
        return headers

    async def send(self, message: OutboundMessage) -> SendResult:
        """Push *message* to each of its subject's devices not reached yet; see the module docstring."""
        payload = self.payload(message)
        if len(payload) > MAX_PAYLOAD:
            raise PermanentFailure(f"the push payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD}")
        tenant, key, now = message.tenant, message.idempotency_key, self._clock.now()
        provider_message_id = f"{tenant}/{key}"
        try:
            devices = [d for d in await self._subscriptions.of_subject(tenant, message.subject_id or message.address, now=now)
                       if endpoint_problem(d.endpoint, self.settings.endpoint_hosts) is None]
            claimed, earlier = await self._claims.claim(tenant, key, [d.subscription_id for d in devices], now=now)
        except Exception as error:  # noqa: BLE001 - nothing was sent yet
            raise TransientFailure(f"the push subscriptions could not be read: {type(error).__name__}") from None
        if not devices and not earlier:
            raise PermanentFailure("the subject has no push subscription")
        results = await asyncio.gather(*(self._push(message, payload, d) for d in devices if d.subscription_id in claimed))
        outcomes = {sub_id: status for sub_id, status, _ in results}
        try:
            await self._claims.finish(tenant, key, outcomes, now=self._clock.now())
            await self._subscriptions.sent(tenant, [s for s, st in outcomes.items() if st == _SENT],
                                           [s for s, st in outcomes.items() if st == _GONE], now=self._clock.now())
        except Exception as error:  # noqa: BLE001 - the devices' claims stay "sending": in doubt, never resent
            raise InDoubt(f"the devices' outcomes could not be recorded: {type(error).__name__}", provider_message_id=provider_message_id) from None
        counts = Counter([*outcomes.values(), *(_settled(s, earlier=True) for s in earlier.values())])
        summary = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
        log.info("push.sent", connector=self.name, devices=dict(counts))
        if counts[_RETRY]:
            waits = [wait for _, status, wait in results if status == _RETRY and wait is not None]
            raise TransientFailure(f"devices: {summary}; the devices not reached are tried again", retry_after=min(waits, default=None))
        if counts[_SENT]:
            return SendResult(provider_message_id=provider_message_id, detail=f"devices: {summary}")
        if counts[_IN_DOUBT]:
            raise InDoubt(f"devices: {summary}", provider_message_id=provider_message_id)
        raise PermanentFailure(f"no device took the message (devices: {summary})")

    async def _push(self, message: OutboundMessage, payload: bytes, device: Any) -> tuple[str, str, dt.timedelta | None]:
        """One device's request: (subscription id, outcome, retry delay)."""
        sub_id = device.subscription_id
        try:
            body = WebPusher({"endpoint": device.endpoint, "keys": {"p256dh": device.p256dh, "auth": device.auth}}).encode(payload)["body"]
            headers = self.headers(message, device.endpoint)
        except Exception as error:  # noqa: BLE001 - a stored key that does not work: this device cannot be reached
            log.warning("push.unencryptable", error=type(error).__name__)
            return sub_id, _FAILED, None
        try:
            response = await self._client.post(device.endpoint, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout,
                httpx.UnsupportedProtocol):
            return sub_id, _RETRY, None
        except httpx.TransportError:  # the request went out; no answer came
            return sub_id, _IN_DOUBT, None
        code = response.status_code
        if 200 <= code < 300:
            return sub_id, _SENT, None
        if code in (404, 410):
            return sub_id, _GONE, None
        if code in (408, 429) or (code >= 500 and code != 504):
            return sub_id, _RETRY, retry_after(response.headers.get("retry-after"), self._clock.now())
        if code == 504:
            return sub_id, _IN_DOUBT, None
        log.warning("push.refused", code=code)
        return sub_id, _FAILED, None

    async def status(self, provider_message_id: str) -> str | None:
        """From the device claims: ``sent`` when a device took it, ``failed`` when none can have, None while one is in doubt."""
        tenant, _, key = provider_message_id.partition("/")
        if not tenant or not key:
            return None
        counts = Counter(_settled(s) for s in (await self._claims.statuses(tenant, key)).values())
        if counts[_SENT]:
            return "sent"
        return None if counts[_IN_DOUBT] else "failed"

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _settled(status: str, *, earlier: bool = False) -> str:
    """A device's status as the message sees it: a claim left ``sending`` by an earlier attempt is in doubt, and an
    earlier attempt's ``retry`` not claimed again is a subscription removed (or expired) since: gone."""
    if status == "sending":
        return _IN_DOUBT
    return _GONE if earlier and status == _RETRY else status


class WebPushPlugin:
    """The ``web_push`` kind (entry point ``overture.connectors:web_push``)."""

    channel = messaging_pb2.CHANNEL_PUSH
    settings_model = WebPushSettings

    def create(self, provider: ProviderConfig, settings: WebPushSettings, context: ConnectorContext) -> WebPushConnector:
        """A web push connector for *provider*, with the service's subscriptions."""
        if context.db is None:
            raise ValueError("the web_push kind needs the connectors service's database")
        return WebPushConnector(name=provider.name, settings=settings, subscriptions=PushSubscriptions(context.db),
                                claims=DeviceClaims(context.db), clock=context.clock, rate_limit_per_second=provider.rate_limit_per_second,
                                max_connections=context.settings.connector_concurrency)
