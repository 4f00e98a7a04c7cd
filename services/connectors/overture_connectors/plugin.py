"""The one async interface every channel connector implements.

A connector hands a rendered message to one provider. It must say, when a
send fails, whether the provider can have accepted the message: only a
failure *before* the provider could accept it is retryable. Anything else
is in doubt, and an in-doubt message is never sent again automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from overture.common.v1 import messaging_pb2

__all__ = ["Connector", "ConnectorFailure", "InDoubt", "OutboundMessage", "PermanentFailure", "SendResult", "TransientFailure"]


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


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str
    """The provider's id for the message."""
    detail: str = ""
    """The provider's reply, without personal data."""


class ConnectorFailure(Exception):
    """A send did not succeed. The message is safe to log: no personal data."""


class TransientFailure(ConnectorFailure):
    """The provider did not accept the message and may later: retry."""


class PermanentFailure(ConnectorFailure):
    """The provider refused the message for good (for example, a bad address)."""


class InDoubt(ConnectorFailure):
    """The provider may have accepted the message; do not send it again.

    *provider_message_id* is the id the provider would know the message by,
    when the connector chose it before sending (an SMTP Message-ID): the
    delivery keeps it, and :meth:`Connector.status` is asked with it.
    """

    def __init__(self, message: str, *, provider_message_id: str = "") -> None:
        super().__init__(message)
        self.provider_message_id = provider_message_id


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
