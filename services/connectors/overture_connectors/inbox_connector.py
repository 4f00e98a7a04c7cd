"""The ``in_app`` kind: delivers a message into the subject's in-app inbox
(:mod:`.inbox`). The title is the rendered subject line, the body the text
body, and ``data`` the structured content.

Writing the inbox row is the whole send, and the row is unique per
idempotency key, so :meth:`InAppConnector.status` can always say whether a
send that was interrupted happened: an in-app delivery is never left in
doubt. It opts into the sweeper's lookups (``status_lookup``, and
:meth:`InAppConnector.reference` for a claim whose process stopped before
it recorded an id), so such a delivery is settled without an operator.
Configure it as a provider: ``{"name": "in-app", "kind": "in_app"}``.
"""

from __future__ import annotations

import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.config import ProviderConfig

from .inbox import Inbox, NewMessage
from .plugin import ConnectorContext, InDoubt, OutboundMessage, SendResult

__all__ = ["InAppConnector", "InAppPlugin", "InAppSettings"]


class InAppSettings(pydantic.BaseModel, extra="forbid"):
    """The ``in_app`` kind has no settings of its own."""


class InAppConnector:
    """Delivers into the inbox; see the module docstring."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_IN_APP
    status_lookup = True

    def __init__(self, *, name: str, inbox: Inbox, rate_limit_per_second: float = 0.0) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._inbox = inbox

    def reference(self, tenant: str, idempotency_key: str) -> str:
        """The id :meth:`status` knows a message by, derived from its key."""
        return f"{tenant}/{idempotency_key}"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Store *message* in its subject's inbox (once per key) and announce it."""
        provider_message_id = self.reference(message.tenant, message.idempotency_key)
        try:
            message_id = await self._inbox.deliver(message.tenant, NewMessage(
                idempotency_key=message.idempotency_key, subject_id=message.subject_id or message.address, title=message.subject,
                body=message.text_body, data=dict(message.data), category=message.category))
        except Exception as error:  # noqa: BLE001 - the row may have committed: status() will tell
            raise InDoubt(f"the inbox write was interrupted: {type(error).__name__}", provider_message_id=provider_message_id) from None
        return SendResult(provider_message_id=provider_message_id, detail=f"inbox message {message_id}")

    async def status(self, provider_message_id: str) -> str | None:
        """``sent`` when the inbox holds the message, ``failed`` when it does not (nothing else can have written it)."""
        tenant, _, key = provider_message_id.partition("/")
        if not tenant or not key:
            return None
        return "sent" if await self._inbox.by_key(tenant, key) is not None else "failed"

    async def close(self) -> None:
        """Nothing is held open."""


class InAppPlugin:
    """The ``in_app`` kind (entry point ``overture.connectors:in_app``)."""

    channel = messaging_pb2.CHANNEL_IN_APP
    settings_model = InAppSettings

    def create(self, provider: ProviderConfig, settings: InAppSettings, context: ConnectorContext) -> InAppConnector:
        """An in-app connector for *provider*, writing to the service's database."""
        if context.db is None:
            raise ValueError("the in_app kind needs the connectors service's database")
        inbox = Inbox(context.db, context.redis, context.keys, context.clock, context.ids)
        return InAppConnector(name=provider.name, inbox=inbox, rate_limit_per_second=provider.rate_limit_per_second)
