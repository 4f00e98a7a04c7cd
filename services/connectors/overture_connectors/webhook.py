"""The webhook connector: a signed HTTP POST per message, per the Standard
Webhooks spec (https://www.standardwebhooks.com), over httpx.

Each request carries ``webhook-id`` (stable for the message's idempotency
key, so a receiver deduplicates any retry on it, as the spec asks of
receivers), ``webhook-timestamp`` (the injected clock, in seconds) and
``webhook-signature``: one ``v1,<base64 HMAC-SHA256>`` per configured
secret, separated by spaces, so secrets rotate by adding the new one, and
removing the old once receivers have switched. Signatures are made by the
``standardwebhooks`` library itself.

Failures are classified by whether the receiver can have acted on the
message; only what provably was not accepted is retryable:

- **no connection** (refused, DNS, TLS, connect or pool timeout) and a
  failure while the request was still being written: the receiver never
  had a whole request, so it cannot have acted. Retryable.
- **429** and **408**: the receiver refused to take it now. Retryable,
  after ``Retry-After`` when given (seconds or an HTTP date).
- **5xx other than 504**: the receiver answered that it failed. Retryable:
  the retry carries the same ``webhook-id``, which the spec requires
  receivers to deduplicate on, so a receiver that had done part of the
  work before failing sees one message.
- **504**, and **no answer after the request was sent** (read timeout, the
  connection dropped before the response): an upstream may have acted on
  it. In doubt: never sent again automatically (webhooks have no status
  lookup, so the delivery stays IN_DOUBT for an operator).
- **any other 4xx**, and a redirect (not followed): refused for good.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
from typing import Any

import httpx
import orjson
import pydantic
import standardwebhooks

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .plugin import ConnectorContext, InDoubt, OutboundMessage, PermanentFailure, SendResult, TransientFailure

__all__ = ["WebhookConnector", "WebhookPlugin", "WebhookSettings", "retry_after", "webhook_id"]

_USER_AGENT = "Overture-Webhooks/1"
_MAX_RETRY_AFTER = dt.timedelta(hours=1)


class WebhookSettings(pydantic.BaseModel, frozen=True, extra="forbid"):
    """A webhook provider's settings."""

    url: pydantic.AnyHttpUrl
    """The endpoint every message of this provider is posted to (a fixed URL: templates cannot choose where data goes)."""
    secrets: tuple[pydantic.SecretStr, ...] = pydantic.Field(min_length=1, max_length=8)
    """Signing secrets, ``whsec_<base64>``; every one signs each request (rotation)."""
    event_type: str = pydantic.Field(default="overture.message", min_length=1, max_length=128)
    """The payload's ``type`` when the message's metadata names none (``event_type``)."""
    headers: dict[str, str] = {}
    """Extra request headers (an API key the receiver expects)."""
    connect_timeout_seconds: float = pydantic.Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = pydantic.Field(default=10.0, gt=0, le=120)
    """The whole request's time limit (write and read), beyond the connection."""

    @pydantic.field_validator("secrets")
    @classmethod
    def _decodable(cls, secrets: tuple[pydantic.SecretStr, ...]) -> tuple[pydantic.SecretStr, ...]:
        for secret in secrets:
            try:
                standardwebhooks.Webhook(secret.get_secret_value())
            except Exception:  # noqa: BLE001 - the library raises assorted errors for a bad secret
                raise ValueError("each secret must be whsec_ followed by base64") from None
        return secrets


def webhook_id(tenant: str, idempotency_key: str) -> str:
    """The ``webhook-id`` of a message: the same for every attempt of one key."""
    return "msg_" + hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:32]


def retry_after(value: str | None, now: dt.datetime) -> dt.timedelta | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP date) as a delay, capped at an hour; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(dt.timedelta(seconds=int(value)), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(when - now, dt.timedelta(0)), _MAX_RETRY_AFTER)


class WebhookConnector:
    """Posts signed messages to one endpoint. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_WEBHOOK

    def __init__(self, *, name: str, settings: WebhookSettings, clock: Clock, rate_limit_per_second: float = 0.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._settings = settings
        self._url = str(settings.url)
        self._clock = clock
        self._signers = [standardwebhooks.Webhook(s.get_secret_value()) for s in settings.secrets]
        timeout = httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds)
        self._client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": _USER_AGENT, "content-type": "application/json", **settings.headers},
        )

    def payload(self, message: OutboundMessage, now: dt.datetime) -> bytes:
        """The request body: ``{"type", "timestamp", "data"}`` as the spec recommends."""
        data: dict[str, Any] = {"idempotency_key": message.idempotency_key, "recipient": message.address, **message.data}
        if message.subject:
            data.setdefault("subject", message.subject)
        if message.text_body:
            data.setdefault("text", message.text_body)
        if message.tags:
            data.setdefault("tags", list(message.tags))
        if message.metadata:
            data.setdefault("metadata", dict(message.metadata))
        event_type = message.metadata.get("event_type") or self._settings.event_type
        return orjson.dumps({"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data})

    def headers(self, msg_id: str, now: dt.datetime, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of one request: one signature per secret."""
        stamp = dt.datetime.fromtimestamp(int(now.timestamp()), tz=dt.UTC)
        signature = " ".join(signer.sign(msg_id, stamp, body) for signer in self._signers)
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp())), "webhook-signature": signature}

    async def send(self, message: OutboundMessage) -> SendResult:
        """Post *message*; see the module docstring for how failures are classified."""
        now = self._clock.now()
        msg_id = webhook_id(message.tenant, message.idempotency_key)
        body = self.payload(message, now)
        try:
            response = await self._client.post(self._url, content=body, headers=self.headers(msg_id, now, body))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout,
                httpx.UnsupportedProtocol) as error:
            raise TransientFailure(f"the webhook endpoint could not be reached: {type(error).__name__}") from None
        except httpx.TransportError as error:  # read timeout, connection dropped before the answer
            raise InDoubt(f"no answer after the request was sent: {type(error).__name__}", provider_message_id=msg_id) from None
        code = response.status_code
        if 200 <= code < 300:
            return SendResult(provider_message_id=msg_id, detail=str(code))
        if code in (408, 429):
            raise TransientFailure(f"the webhook endpoint asked to retry later ({code})",
                                   retry_after=retry_after(response.headers.get("retry-after"), now))
        if code == 504:
            raise InDoubt("the gateway timed out waiting for the endpoint (504); it may have acted", provider_message_id=msg_id)
        if code >= 500:
            raise TransientFailure(f"the webhook endpoint failed ({code})", retry_after=retry_after(response.headers.get("retry-after"), now))
        if 300 <= code < 400:
            raise PermanentFailure(f"the webhook endpoint redirected ({code}); redirects are not followed")
        raise PermanentFailure(f"the webhook endpoint refused the message ({code})")

    async def status(self, provider_message_id: str) -> str | None:
        """Webhooks have no status lookup."""
        return None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class WebhookPlugin:
    """The ``webhook`` kind (entry point ``overture.connectors:webhook``)."""

    channel = messaging_pb2.CHANNEL_WEBHOOK
    settings_model = WebhookSettings

    def create(self, provider: ProviderConfig, settings: WebhookSettings, context: ConnectorContext) -> WebhookConnector:
        """A webhook connector for *provider*."""
        return WebhookConnector(name=provider.name, settings=settings, clock=context.clock,
                                rate_limit_per_second=provider.rate_limit_per_second,
                                max_connections=context.settings.connector_concurrency)
