"""The SMS connector for an HTTP messaging API shaped like the common
providers' (Twilio's Messages resource, and the many APIs modelled on it).

**Sending.** ``POST {api_url}/Messages.json``, HTTP Basic auth (account id,
auth token), form-encoded ``To`` (E.164), ``From``, ``Body``,
``StatusCallback`` and ``ClientRef`` (our reference for the message, the
same for every attempt of one key), with an ``Idempotency-Key`` header
carrying the same reference, so the provider accepts one message per key
however often it is asked. The answer is the message as JSON; its ``sid``
is the delivery's provider id.

**Numbers** are parsed with ``phonenumbers`` (a number without a country
code is read in the provider's ``default_region``) and sent in E.164; a
number that is not a valid one is refused for good, and never shown in an
error. The body is split into segments (:mod:`.sms_segments`); a body over
``max_segments`` is refused for good, and the count is recorded on the
delivery (providers bill per segment).

**Failures.** As :mod:`.http_calls` classifies them: no connection, 408,
429 and a 5xx other than 504 are retryable (the provider deduplicates on
the idempotency key); a 504 and no answer after the request went out are in
doubt, and settled through the **status lookup**: ``GET
{api_url}/Messages.json?ClientRef=<ref>`` finds the message by our
reference (``GET {api_url}/Messages/<sid>.json`` once the sid is known).
The provider's statuses map to delivery statuses: ``accepted``,
``scheduled``, ``queued``, ``sending`` and ``sent`` mean SENT (the provider
has it), ``delivered`` DELIVERED, ``undelivered``, ``failed`` and
``canceled`` FAILED. A reference the provider does not know leaves the
delivery in doubt (it may yet appear), to be asked again.

**Status callbacks.** The provider posts each status change, form-encoded
(``MessageSid``, ``MessageStatus``, ``ErrorCode``, ``ClientRef``), to the
``StatusCallback`` URL sent with the message: ingest's ``POST
/callbacks/{provider}/{tenant}`` (the base is ``callback_base_url``, by
default ``OVERTURE_PUBLIC_URL``), which hands it to
``ConnectorService.ReportProviderCallback``. It is authenticated here by
its ``X-Signature`` header: base64 HMAC-SHA256, keyed with the auth token,
of the callback URL followed by every form parameter's name and value,
sorted by name (Twilio's scheme, with SHA-256).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from . import phones
from .http_calls import Answer, call, classify
from .phones import Region
from .plugin import CallbackRefused, ConnectorContext, InDoubt, OutboundMessage, PermanentFailure, SendResult, StatusUpdate
from .sms_segments import split

__all__ = ["SIGNATURE_HEADER", "SmsConnector", "SmsHttpPlugin", "SmsSettings", "client_ref", "e164", "sign"]

SIGNATURE_HEADER = "x-signature"
"""The header that signs a status callback."""
_STATUSES = {"accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent", "sent": "sent", "delivered": "delivered",
             "undelivered": "failed", "failed": "failed", "canceled": "failed"}
"""The provider's message statuses as delivery statuses."""
_REF = "ovr_"


class SmsSettings(pydantic.BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True, populate_by_name=True):
    """An SMS provider's settings. Errors never show the input (the token is a secret)."""

    api_url: pydantic.AnyHttpUrl
    """The account's API base, for example ``https://api.sms.example/2010-04-01/Accounts/AC123``."""
    account_id: str = pydantic.Field(min_length=1, max_length=128)
    """The account id (the Basic auth user)."""
    auth_token: pydantic.SecretStr
    """The auth token: the Basic auth password, and the key that signs status callbacks."""
    sender: str = pydantic.Field(alias="from", min_length=1, max_length=32)
    """The sender: an E.164 number, a short code, or an alphanumeric sender id."""
    default_region: Region = "US"
    """The region (ISO 3166 alpha-2) a number without a country code is read in."""
    max_segments: int = pydantic.Field(default=10, ge=1, le=50)
    """The most segments one message may take; a longer body is refused."""
    callback_base_url: pydantic.AnyHttpUrl | None = None
    """The public base of ingest's HTTP doors for status callbacks; None: ``OVERTURE_PUBLIC_URL``."""
    status_callbacks: bool = True
    """Ask the provider for status callbacks."""
    connect_timeout_seconds: float = pydantic.Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = pydantic.Field(default=10.0, gt=0, le=120)


def client_ref(tenant: str, idempotency_key: str) -> str:
    """Our reference for a message: the same for every attempt of one key, distinct across tenants."""
    return _REF + hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()[:32]


def e164(address: str, region: str) -> str:
    """*address* as an E.164 number, read in *region* when it has no country code; raises
    :class:`PermanentFailure` (without the number) when it is not a valid phone number."""
    number = phones.e164(address, region)
    if number is None:
        raise PermanentFailure("the address is not a valid phone number")
    return number


def sign(token: str, url: str, params: Mapping[str, str]) -> str:
    """The ``X-Signature`` of a callback to *url* with form *params*, keyed with *token*."""
    payload = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()).decode()


class SmsConnector:
    """Sends text messages through one provider account. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_SMS
    status_lookup = True
    """The provider can be asked about a message later (the sweeper re-asks about in-doubt ones)."""

    def __init__(self, *, name: str, settings: SmsSettings, clock: Clock, public_url: str, rate_limit_per_second: float = 0.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._settings = settings
        self._clock = clock
        self._base = str(settings.api_url).rstrip("/")
        self._callbacks = str(settings.callback_base_url or public_url).rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self._base, transport=transport, follow_redirects=False, trust_env=False,
            auth=httpx.BasicAuth(settings.account_id, settings.auth_token.get_secret_value()),
            timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": "Overture-SMS/1", "accept": "application/json", "accept-encoding": "identity"},
        )

    def reference(self, tenant: str, idempotency_key: str) -> str:
        """Our reference for a message, which the status lookup finds it by even when no answer was recorded."""
        return client_ref(tenant, idempotency_key)

    def callback_url(self, tenant: str) -> str:
        """Where the provider posts *tenant*'s status callbacks (ingest's door)."""
        return f"{self._callbacks}/callbacks/{quote(self.name, safe='')}/{quote(tenant, safe='')}"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send *message*; see the module docstring for how failures are classified."""
        to = e164(message.address, self._settings.default_region)
        body = message.text_body
        if not body.strip():
            raise PermanentFailure("an SMS needs a text body")
        segments = split(body).count
        if segments > self._settings.max_segments:
            raise PermanentFailure(f"the body takes {segments} segments; the provider allows {self._settings.max_segments}")
        ref = client_ref(message.tenant, message.idempotency_key)
        form = {"To": to, "From": self._settings.sender, "Body": body, "ClientRef": ref}
        if self._settings.status_callbacks:
            form["StatusCallback"] = self.callback_url(message.tenant)
        try:
            answer = await call(self._client, "POST", "/Messages.json", who="the SMS provider", data=form,
                                headers={"idempotency-key": ref}, provider_message_id=ref)
            classify(answer, self._clock.now(), who=_who(answer), provider_message_id=ref)
        except InDoubt as error:
            raise InDoubt(str(error), provider_message_id=ref, segments=segments) from None
        found = answer.json()
        sid = str(found.get("sid", "")) if isinstance(found, dict) else ""
        if not sid:
            raise InDoubt("the SMS provider accepted the message without a message id", provider_message_id=ref, segments=segments)
        return SendResult(provider_message_id=sid, detail=str(found.get("status", "")), segments=segments)

    async def status(self, provider_message_id: str) -> str | None:
        """The provider's view of a message (by our reference or its sid), as a delivery status; None when it cannot tell."""
        if provider_message_id.startswith(_REF):
            path, params = "/Messages.json", {"ClientRef": provider_message_id}
        else:
            path, params = f"/Messages/{quote(provider_message_id, safe='')}.json", {}
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            found: Any = response.json()
        except ValueError:
            return None
        if isinstance(found, dict) and isinstance(found.get("messages"), list):
            found = found["messages"][0] if found["messages"] else None
        return _STATUSES.get(str(found.get("status", ""))) if isinstance(found, dict) else None

    def read_callback(self, *, tenant: str, headers: Mapping[str, str], body: bytes) -> list[StatusUpdate]:
        """The status update a signed callback carries; raises :class:`CallbackRefused` when its signature does not verify."""
        try:
            params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=100))
        except (UnicodeDecodeError, ValueError):
            raise CallbackRefused("the callback is not a form", bad_request=True) from None
        expected = sign(self._settings.auth_token.get_secret_value(), self.callback_url(tenant), params)
        if not hmac.compare_digest(expected.encode(), headers.get(SIGNATURE_HEADER, "").encode()):
            raise CallbackRefused("the callback's signature does not verify")
        status = _STATUSES.get(params.get("MessageStatus", ""))
        sid = params.get("MessageSid", "")
        if status is None or not sid:
            raise CallbackRefused("the callback names no message or no known status", bad_request=True)
        detail = f"{params.get('MessageStatus')}" + (f" (error {params['ErrorCode'][:16]})" if params.get("ErrorCode") else "")
        return [StatusUpdate(provider_message_id=sid[:256], reference=params.get("ClientRef", "")[:256], status=status, detail=detail,
                             occur_time=self._clock.now())]

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _who(answer: Answer) -> str:
    """The provider, with its error code when it gave one (``{"code": 21211}``: a number, never personal data)."""
    found = answer.json() if answer.status >= 400 else None
    code = found.get("code") if isinstance(found, dict) else None
    return f"the SMS provider (error {int(code)})" if isinstance(code, int | float) else "the SMS provider"


class SmsHttpPlugin:
    """The ``sms_http`` kind (entry point ``overture.connectors:sms_http``)."""

    channel = messaging_pb2.CHANNEL_SMS
    settings_model = SmsSettings

    def create(self, provider: ProviderConfig, settings: SmsSettings, context: ConnectorContext) -> SmsConnector:
        """An SMS connector for *provider*."""
        return SmsConnector(name=provider.name, settings=settings, clock=context.clock, public_url=context.settings.public_url,
                            rate_limit_per_second=provider.rate_limit_per_second,
                            max_connections=context.settings.connector_concurrency)

