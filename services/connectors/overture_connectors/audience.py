"""The audience sync connector: adds people to, or removes them from, an
audience at an advertising platform, in the manner of Customer Match.

**Identifiers leave only hashed.** Each member's email is trimmed and
lower-cased, its phone number parsed by ``phonenumbers`` (in the provider's
``default_region`` when it has no country code) and written in E.164; each
is then hashed with SHA-256 (lower-case hex). A member with neither a valid
email nor a valid number is skipped (the count is logged, never the
values); a message none of whose members is valid fails for good. The same
identifier twice in one message is sent once.

**Batches.** A message's members are sent in batches of at most
``batch_size`` identifiers, one after the other: ``POST {url}`` with
``{"audience_id", "operation", "batch_id", "members": [{"hashed_email",
"hashed_phone_number"}]}``, a bearer token, and the batch id again in the
``Idempotency-Key`` header. A batch's id is derived from the tenant, the
message's key, and the batch's place and content, so every attempt of the
message sends the same batches under the same ids: a platform that
deduplicates on the key applies a retried batch once (and adding or
removing the same people again changes nothing anyway).

**Failures** are classified by :mod:`.http_calls`. A batch refused for now
(429, 5xx but 504, no connection) makes the whole message retryable; its
retry sends every batch again under the same ids, the ones already taken
included. A 504 or a lost answer is in doubt: the audience endpoint has no
status lookup, so the delivery stays IN_DOUBT (an operator may settle it;
re-running the sync is harmless). A 4xx is refused for good.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import orjson
import pydantic
import structlog

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .http_calls import call, classify
from .phones import Region, e164
from .plugin import ConnectorContext, OutboundMessage, PermanentFailure, SendResult

__all__ = ["AudienceConnector", "AudienceSettings", "AudienceSyncPlugin", "Hashed", "batches", "hash_email", "hash_phone", "hashed"]

log = structlog.get_logger("overture.connectors.audience")


class AudienceSettings(pydantic.BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """An audience sync provider's settings. Errors never show the input (the API key is a secret)."""

    url: pydantic.AnyHttpUrl
    """The endpoint batches are posted to."""
    api_key: pydantic.SecretStr
    """Sent as ``Authorization: Bearer <api_key>``."""
    batch_size: int = pydantic.Field(default=1000, ge=1, le=100_000)
    """The most identifiers (hashed emails and phone numbers) one request carries."""
    default_region: Region = "US"
    """The region (ISO 3166 alpha-2) a phone number without a country code is read in."""
    connect_timeout_seconds: float = pydantic.Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = pydantic.Field(default=30.0, gt=0, le=300)


@dataclass(frozen=True)
class Hashed:
    """One member's identifiers, normalised and hashed; either may be empty."""

    email: str = ""
    phone_number: str = ""

    @property
    def size(self) -> int:
        """How many identifiers the member carries."""
        return bool(self.email) + bool(self.phone_number)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_email(email: str) -> str:
    """The SHA-256 of *email* trimmed and lower-cased, or "" when it is not an email address."""
    normal = email.strip().lower()
    local, at, domain = normal.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in normal) or "@" in domain:
        return ""
    return _sha256(normal)


def hash_phone(number: str, region: str) -> str:
    """The SHA-256 of *number* in E.164, or "" when it is not a valid phone number."""
    normal = e164(number, region)
    return _sha256(normal) if normal else ""


def hashed(message: OutboundMessage, region: str) -> tuple[list[Hashed], int]:
    """The message's members hashed, each once, and how many had no valid identifier."""
    members = message.members or ((message.address, "") if "@" in message.address else ("", message.address),)
    found: list[Hashed] = []
    seen: set[Hashed] = set()
    skipped = 0
    for email, phone in members:
        member = Hashed(hash_email(email) if email else "", hash_phone(phone, region) if phone else "")
        if not member.size:
            skipped += 1
        elif member not in seen:
            seen.add(member)
            found.append(member)
    return found, skipped


def batches(members: Sequence[Hashed], size: int) -> Iterator[list[Hashed]]:
    """*members* in order, in batches of at most *size* identifiers (a member is never split)."""
    batch: list[Hashed] = []
    used = 0
    for member in members:
        if batch and used + member.size > size:
            yield batch
            batch, used = [], 0
        batch.append(member)
        used += member.size
    if batch:
        yield batch


class AudienceConnector:
    """Syncs audience members to one platform endpoint. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_AUDIENCE_SYNC

    def __init__(self, *, name: str, settings: AudienceSettings, clock: Clock, rate_limit_per_second: float = 0.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._settings = settings
        self._clock = clock
        self._url = str(settings.url)
        self._client = httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"authorization": f"Bearer {settings.api_key.get_secret_value()}", "content-type": "application/json",
                     "user-agent": "Overture-Audiences/1", "accept-encoding": "identity"},
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send the message's members in batches; see the module docstring."""
        if message.audience_operation not in ("add", "remove") or not message.audience_id:
            raise PermanentFailure("an audience sync needs an audience_id and an operation")
        members, skipped = hashed(message, self._settings.default_region)
        if skipped:
            log.info("audience.members_skipped", skipped=skipped, kept=len(members))
        if not members:
            raise PermanentFailure("no member has a valid email address or phone number")
        base = _sha256(f"{message.tenant}\x00{message.idempotency_key}")
        sent = 0
        for number, batch in enumerate(batches(members, self._settings.batch_size)):
            content = [{k: v for k, v in (("hashed_email", m.email), ("hashed_phone_number", m.phone_number)) if v} for m in batch]
            batch_id = "bat_" + _sha256(f"{base}\x00{number}\x00" + "".join(f"{m.email}:{m.phone_number};" for m in batch))[:32]
            body = orjson.dumps({"audience_id": message.audience_id, "operation": message.audience_operation, "batch_id": batch_id,
                                 "members": content})
            answer = await call(self._client, "POST", self._url, who="the audience endpoint", content=body,
                                headers={"idempotency-key": batch_id}, provider_message_id="aud_" + base[:32])
            classify(answer, self._clock.now(), who=f"the audience endpoint (batch {number + 1})", provider_message_id="aud_" + base[:32])
            sent += 1
        return SendResult(provider_message_id="aud_" + base[:32], detail=f"{len(members)} members in {sent} batches")

    async def status(self, provider_message_id: str) -> str | None:
        """The audience endpoint has no status lookup."""
        return None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class AudienceSyncPlugin:
    """The ``audience_sync`` kind (entry point ``overture.connectors:audience_sync``)."""

    channel = messaging_pb2.CHANNEL_AUDIENCE_SYNC
    settings_model = AudienceSettings

    def create(self, provider: ProviderConfig, settings: AudienceSettings, context: ConnectorContext) -> AudienceConnector:
        """An audience sync connector for *provider*."""
        return AudienceConnector(name=provider.name, settings=settings, clock=context.clock,
                                 rate_limit_per_second=provider.rate_limit_per_second,
                                 max_connections=context.settings.connector_concurrency)
