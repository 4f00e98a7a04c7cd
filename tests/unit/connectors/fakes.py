"""A stand-in connector that records what it was asked to send (named as a fake: it speaks no provider protocol)."""

from __future__ import annotations

import asyncio

from overture.common.v1 import messaging_pb2
from overture_connectors.plugin import InDoubt, OutboundMessage, PermanentFailure, SendResult, TransientFailure

__all__ = ["FakeConnector"]


class FakeConnector:
    """An email connector that accepts every message unless told otherwise."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_EMAIL
    rate_limit_per_second: float = 0.0

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.sent: list[str] = []
        """The keys of the messages accepted, in order."""
        self.fail_for_now: set[str] = set()
        """Keys refused before the provider could accept them (retryable)."""
        self.fail_for_good: set[str] = set()
        """Keys refused for good."""
        self.in_doubt: set[str] = set()
        """Keys accepted whose answer is lost."""
        self.crash: set[str] = set()
        """Keys whose send raises an unexpected exception (a connector bug)."""
        self.statuses: dict[str, str] = {}
        """What :meth:`status` answers, by provider message id."""
        self.gate: asyncio.Event | None = None
        """When set, each send waits for this event."""
        self.running = 0
        self.max_running = 0
        """The most sends in progress at once."""
        self.closed = False

    def provider_id(self, key: str) -> str:
        """The provider id the fake gives the message of *key*."""
        return f"<{key}@fake>"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Accept or refuse *message*, as configured."""
        key = message.idempotency_key
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if key in self.crash:
                raise RuntimeError("a bug in the fake connector")
            if key in self.fail_for_now:
                raise TransientFailure("the fake provider is down")
            if key in self.fail_for_good:
                raise PermanentFailure("the fake provider refused the message (550)")
            self.sent.append(key)
            if key in self.in_doubt:
                raise InDoubt("the fake provider's answer was lost", provider_message_id=self.provider_id(key))
            return SendResult(provider_message_id=self.provider_id(key))
        finally:
            self.running -= 1

    async def status(self, provider_message_id: str) -> str | None:
        """The configured answer for *provider_message_id*, or None."""
        return self.statuses.get(provider_message_id)

    async def close(self) -> None:
        """Remember that the connector was closed."""
        self.closed = True
