"""The one async interface every channel connector implements, and the
plugin interface that makes connectors from configuration.

A connector hands a rendered message to one provider. It must say, when a
send fails, whether the provider can have accepted the message: only a
failure *before* the provider could accept it is retryable. Anything else
is in doubt, and an in-doubt message is never sent again automatically.

A :class:`ConnectorPlugin` is one *kind* of provider (``smtp``,
``webhook``, ...). Plugins are found through the ``overture.connectors``
entry-point group (:mod:`.registry`): the entry point's name is the kind,
and its object the plugin. A third party adds a channel by shipping a
distribution with such an entry point; nothing in Overture changes. Each
configured provider (``OVERTURE_CONNECTOR_PROVIDERS``) names a kind, and
the kind's plugin validates the provider's ``settings`` with its
``settings_model`` at start-up and builds the provider's connector.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import ProviderConfig, ServiceName, Settings
from overture_runtime.redis import Keys

if TYPE_CHECKING:
    import grpc
    import redis.asyncio as aioredis

    from overture_runtime.db import Database

__all__ = [
    "CallbackConnector", "CallbackRefused", "Connector", "ConnectorContext", "ConnectorFailure", "ConnectorPlugin", "InDoubt",
    "OutboundMessage", "PermanentFailure", "SendResult", "StatusUpdate", "TransientFailure", "has_status_lookup", "reference_of",
]


@dataclass(frozen=True)
class OutboundMessage:
    """A message for a provider. Contains personal data: never log it."""

    idempotency_key: str
    """The message's key; providers that support it get it as their own idempotency key."""
    tenant: str
    """The tenant sending."""
    address: str
    """The recipient's address on the channel."""
    subject: str = ""
    """Subject line or title."""
    text_body: str = ""
    """Plain-text body."""
    html_body: str = ""
    """HTML body."""
    data: dict[str, Any] = field(default_factory=dict)
    """Structured content."""
    tags: tuple[str, ...] = ()
    """The message's tags."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Correlation metadata (run id, journey, decision id)."""
    subject_id: str = ""
    """The subject the message is for."""
    category: messaging_pb2.MessageCategory.ValueType = messaging_pb2.MESSAGE_CATEGORY_UNSPECIFIED
    """Marketing (also when unspecified) or transactional."""
    consent_purpose: str = ""
    """The consent purpose it is sent under; empty: ``marketing`` for marketing messages."""
    track_opens: bool = False
    """Email: add an open-tracking pixel."""
    track_clicks: bool = False
    """Email: rewrite links to tracked links."""
    push_ttl: dt.timedelta | None = None
    """Push: how long the push service keeps it for an offline device; None: the provider's default."""
    push_urgency: int = 0
    """Push: a ``PushUrgency`` number; 0: by category."""
    push_topic: str = ""
    """Push: replaces an undelivered message of the same topic."""
    url: str = ""
    """Webhook: the message's own URL, called only when the provider's egress policy allows it; empty for the provider's."""
    keep_response: bool = False
    """Webhook: keep the endpoint's answer (:attr:`SendResult.response`)."""
    data_as_body: bool = False
    """Webhook: post :attr:`data` itself as the body, not the Standard Webhooks envelope."""
    audience_id: str = ""
    """Audience sync: the audience at the platform."""
    audience_operation: str = ""
    """Audience sync: ``add`` or ``remove``."""
    members: tuple[tuple[str, str], ...] = ()
    """Audience sync: each member's (email, phone number), either may be empty; none: the subject alone, by :attr:`address`."""


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str
    """The provider's id for the message."""
    detail: str = ""
    """The provider's reply, without personal data."""
    response: dict[str, Any] | None = None
    """The endpoint's answer, when the message asked to keep it (:func:`.http_calls.kept_response`). May hold personal data."""
    segments: int = 0
    """SMS: the segments the message was sent as (:mod:`.sms_segments`); 0 for other channels."""


class ConnectorFailure(Exception):
    """A send did not succeed. The message is safe to log: no personal data."""


class TransientFailure(ConnectorFailure):
    """The provider did not accept the message and may later: retry.

    *retry_after* is the provider's own hint (an HTTP ``Retry-After``), when
    it gave one; the caller is told to wait at least that long.
    """

    def __init__(self, message: str, *, retry_after: dt.timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(ConnectorFailure):
    """The provider refused the message for good (for example, a bad address).

    *response* is the endpoint's answer, when the message asked to keep it.
    """

    def __init__(self, message: str, *, response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = response


class InDoubt(ConnectorFailure):
    """The provider may have accepted the message; do not send it again.

    *provider_message_id* is the id the provider would know the message by,
    when the connector chose it before sending (an SMTP Message-ID): the
    delivery keeps it, and :meth:`Connector.status` is asked with it.
    """

    def __init__(self, message: str, *, provider_message_id: str = "", segments: int = 0) -> None:
        super().__init__(message)
        self.provider_message_id = provider_message_id
        self.segments = segments


@dataclass(frozen=True)
class StatusUpdate:
    """A later status of a delivery the provider reported (a status callback)."""

    provider_message_id: str
    """The provider's id for the message, as :attr:`SendResult.provider_message_id` had it."""
    status: str
    """A ``DeliveryStatus`` name in lower case: ``delivered``, ``failed``, ``bounced``, ..."""
    detail: str = ""
    """The provider's detail (an error code), without personal data."""
    occur_time: dt.datetime | None = None
    """When the provider observed it, if it said."""
    reference: str = ""
    """Our own reference for the message, when the provider echoes it: the id an in-doubt delivery was
    recorded under (:attr:`InDoubt.provider_message_id`) before the provider's id was known."""


class CallbackRefused(ConnectorFailure):
    """A provider callback that cannot be taken: its signature does not verify, or (*bad_request*) it is malformed."""

    def __init__(self, message: str, *, bad_request: bool = False) -> None:
        super().__init__(message)
        self.bad_request = bad_request


@runtime_checkable
class CallbackConnector(Protocol):
    """A connector whose provider calls back with status changes (delivered, failed), through
    ingest's ``POST /callbacks/{provider}/{tenant}`` and ``ReportProviderCallback``."""

    def read_callback(self, *, tenant: str, headers: Mapping[str, str], body: bytes) -> list[StatusUpdate]:
        """The updates a callback carries, once it is authenticated; raises :class:`CallbackRefused` otherwise.
        *headers* have lower-case names; *body* is at most 64 KiB."""
        ...


class Connector(Protocol):
    """One provider behind one channel.

    ``send`` is called concurrently, up to the connector's concurrency
    bound (``OVERTURE_CONNECTOR_CONCURRENCY``) at once.
    """

    name: str
    """The connector's name, for example ``smtp``."""
    channel: messaging_pb2.Channel.ValueType
    """The ``Channel`` it serves."""
    rate_limit_per_second: float
    """Its send rate limit; 0 for none."""

    async def send(self, message: OutboundMessage) -> SendResult:
        """Hand *message* to the provider, or raise a :class:`ConnectorFailure`."""
        ...

    async def status(self, provider_message_id: str) -> str | None:
        """The provider's view of a message (a ``DeliveryStatus`` name), or None
        when the provider cannot tell. Used to resolve in-doubt sends."""
        ...

    async def close(self) -> None:
        """Release what the connector holds open (connections), at shutdown."""
        ...


def has_status_lookup(connector: Connector | None) -> bool:
    """Whether *connector*'s provider can be asked about a message later: the connector says so with a true
    ``status_lookup`` attribute (optional; a connector whose ``status`` always answers None leaves it out)."""
    return bool(getattr(connector, "status_lookup", False))


def reference_of(connector: Connector | None, tenant: str, idempotency_key: str, recorded: str) -> str:
    """The id to ask *connector*'s ``status`` with about a message: the one recorded, or, for a claim that never recorded
    one (its process stopped mid-send), the one the connector derives from the key (an optional
    ``reference(tenant, idempotency_key)`` method, for providers that know a message by our own reference)."""
    if recorded or connector is None:
        return recorded
    derive = getattr(connector, "reference", None)
    return str(derive(tenant, idempotency_key)) if callable(derive) else ""


@dataclass(frozen=True)
class ConnectorContext:
    """What a plugin may use to build its connectors: the service's shared
    resources. Not every plugin needs every field."""

    settings: Settings
    """The service's settings (a plugin's own settings come in its provider's ``settings``)."""
    clock: Clock
    """The injected clock: connectors read time only through it."""
    ids: IdGenerator
    """The id generator."""
    keys: Keys
    """The builder of Redis keys."""
    db: Database | None = None
    """The connectors service's database, for plugins that keep state (an inbox, subscriptions)."""
    redis: aioredis.Redis | None = None
    """The service's Redis client."""
    channel: Callable[[ServiceName], grpc.aio.Channel] | None = None
    """A shared gRPC channel to another service, for plugins that call one."""


class ConnectorPlugin(Protocol):
    """One kind of provider, registered in the ``overture.connectors`` entry-point group.

    The entry point names an object (a class or an instance) with these
    attributes; :mod:`.registry` loads it, validates each provider's
    ``settings`` with ``settings_model`` and calls :meth:`create`. A class
    variable works as well as an instance attribute.
    """

    channel: ClassVar[messaging_pb2.Channel.ValueType]
    """The channel every connector of this kind serves."""
    settings_model: ClassVar[type[pydantic.BaseModel]]
    """The shape of a provider's ``settings``; unknown keys should be refused (``extra="forbid"``)."""

    def create(self, provider: ProviderConfig, settings: Any, context: ConnectorContext) -> Connector:
        """The connector for *provider*, its *settings* an instance of :attr:`settings_model`.

        The connector's ``name`` must be ``provider.name`` and its
        ``rate_limit_per_second`` ``provider.rate_limit_per_second``. Called
        once per provider at start-up; open connections lazily, not here.
        """
        ...
