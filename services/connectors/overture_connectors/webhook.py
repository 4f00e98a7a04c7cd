"""The webhook connector: a signed HTTP POST per message, per the Standard
Webhooks spec (https://www.standardwebhooks.com), over httpx.

Each request carries ``webhook-id`` (stable for the message's idempotency
key, so a receiver deduplicates any retry on it, as the spec asks of
receivers), ``webhook-timestamp`` (the injected clock, in seconds) and
``webhook-signature``: one ``v1,<base64 HMAC-SHA256>`` per configured
secret, separated by spaces, so secrets rotate by adding the new one, and
removing the old once receivers have switched. Signatures are made by the
``standardwebhooks`` library itself.

A message may name its own URL (``Message.webhook.url``, a journey's
webhook step): the provider calls it only when its egress policy
(``allowed_hosts``, ``allowed_private_networks``; :mod:`.egress`) allows
it, and refuses it for good otherwise. It may ask to keep the answer
(``keep_response``: the status and up to 64 KiB of body, on the delivery),
and to post its data as the whole body (``data_as_body``) instead of the
envelope.

Failures are classified as :mod:`.http_calls` says: no connection, a
failure while writing, 408, 429 (after ``Retry-After``) and a 5xx other
than 504 are retryable (the retry carries the same ``webhook-id``, which
the spec requires receivers to deduplicate on, so a receiver that had done
part of the work before failing sees one message); a 504 and no answer
after the request was sent are in doubt (webhooks have no status lookup,
so the delivery stays IN_DOUBT for an operator); any other 4xx and a
redirect (not followed) are refused for good.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import httpx
import orjson
import pydantic
import standardwebhooks

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .egress import EgressPolicy, EgressRefused, guarded_transport
from .http_calls import call, classify, kept_response
from .plugin import ConnectorContext, OutboundMessage, PermanentFailure, SendResult

__all__ = ["HttpEndpoint", "WebhookConnector", "WebhookPlugin", "WebhookSettings", "webhook_id"]

_USER_AGENT = "Overture-Webhooks/1"


class WebhookSettings(EgressPolicy, frozen=True, extra="forbid"):
    """A webhook provider's settings (with the egress policy for messages that carry their own URL)."""

    url: pydantic.AnyHttpUrl | None = None
    """The endpoint messages are posted to unless they carry their own URL; needed unless ``allowed_hosts`` is set."""
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

    @pydantic.model_validator(mode="after")
    def _somewhere(self) -> WebhookSettings:
        if self.url is None and not self.allowed_hosts:
            raise ValueError("set url, allowed_hosts (for messages that carry their own URL), or both")
        return self


def webhook_id(tenant: str, idempotency_key: str) -> str:
    """The ``webhook-id`` of a message: the same for every attempt of one key."""
    return "msg_" + hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:32]


class HttpEndpoint:
    """The HTTP clients of a provider that posts to its own URL or, when its policy allows, to a message's.

    Two pools: one for the provider's configured URL, and one whose
    connections go only where the egress policy allows (:mod:`.egress`),
    made when the policy allows any host. Safe for concurrent use.
    """

    def __init__(self, *, url: str | None, policy: EgressPolicy, timeout: httpx.Timeout, headers: dict[str, str],
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._url = url
        self._policy = policy
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        common: dict[str, Any] = dict(timeout=timeout, follow_redirects=False, trust_env=False,
                                      headers={"accept-encoding": "identity", **headers})
        self._fixed = httpx.AsyncClient(transport=transport, limits=limits, **common)
        self._guarded = httpx.AsyncClient(transport=guarded_transport(policy, limits=limits), **common) if policy.allowed_hosts else None

    def target(self, url: str) -> tuple[httpx.AsyncClient, str | httpx.URL]:
        """The client and URL to call for a message carrying *url* (empty: the provider's); raises
        :class:`PermanentFailure` when there is none or the policy refuses it."""
        if not url:
            if self._url is None:
                raise PermanentFailure("the message carries no URL and the provider has none")
            return self._fixed, self._url
        if self._guarded is None:
            raise PermanentFailure("the provider takes no URL from messages (its allowed_hosts is empty)")
        try:
            return self._guarded, self._policy.check_url(url)
        except EgressRefused as error:  # its message names neither the URL nor the host
            raise PermanentFailure(str(error)) from None

    async def close(self) -> None:
        """Close the connection pools."""
        await self._fixed.aclose()
        if self._guarded is not None:
            await self._guarded.aclose()


class WebhookConnector:
    """Posts signed messages to one endpoint, or to the message's own. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_WEBHOOK

    def __init__(self, *, name: str, settings: WebhookSettings, clock: Clock, rate_limit_per_second: float = 0.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._settings = settings
        self._clock = clock
        self._signers = [standardwebhooks.Webhook(s.get_secret_value()) for s in settings.secrets]
        self._endpoint = HttpEndpoint(
            url=str(settings.url) if settings.url else None, policy=settings, max_connections=max_connections, transport=transport,
            timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds),
            headers={"user-agent": _USER_AGENT, "content-type": "application/json", **settings.headers},
        )

    def payload(self, message: OutboundMessage, now: dt.datetime) -> bytes:
        """The request body: ``{"type", "timestamp", "data"}`` as the spec recommends, or the data alone (``data_as_body``)."""
        if message.data_as_body:
            return orjson.dumps(message.data)
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
        client, url = self._endpoint.target(message.url)
        now = self._clock.now()
        msg_id = webhook_id(message.tenant, message.idempotency_key)
        body = self.payload(message, now)
        answer = await call(client, "POST", url, who="the webhook endpoint", content=body, headers=self.headers(msg_id, now, body),
                            provider_message_id=msg_id)
        response = kept_response(answer) if message.keep_response else None
        classify(answer, now, who="the webhook endpoint", provider_message_id=msg_id, response=response)
        return SendResult(provider_message_id=msg_id, detail=str(answer.status), response=response)

    async def status(self, provider_message_id: str) -> str | None:
        """Webhooks have no status lookup."""
        return None

    async def close(self) -> None:
        """Close the connection pools."""
        await self._endpoint.close()


class WebhookPlugin:
    """The ``webhook`` kind (entry point ``overture.connectors:webhook``)."""

    channel = messaging_pb2.CHANNEL_WEBHOOK
    settings_model = WebhookSettings

    def create(self, provider: ProviderConfig, settings: WebhookSettings, context: ConnectorContext) -> WebhookConnector:
        """A webhook connector for *provider*."""
        return WebhookConnector(name=provider.name, settings=settings, clock=context.clock,
                                rate_limit_per_second=provider.rate_limit_per_second,
                                max_connections=context.settings.connector_concurrency)
