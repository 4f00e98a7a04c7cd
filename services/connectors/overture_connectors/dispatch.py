"""One claimed message, handed to the providers of its route.

The route is the ordered list of providers for the message's channel (or
the one provider the message names). Each provider is guarded by its
circuit breaker, its rate limit and its concurrency bound, in that order:

- an **open breaker** skips the provider: the message moves down the route.
  The route's last provider is tried even when its circuit is open, if no
  provider was called before it: a breaker steers messages to where they
  can go, and never holds back a message that has nowhere else to go (the
  retries that would follow would only burn the caller's attempts while the
  provider may be back; a success there closes the circuit);
- a **retryable failure** (the provider provably did not accept the
  message: refused for now, unreachable before the payload went out) counts
  against the breaker and moves the message down the route;
- a **permanent failure** (the provider refused this message for good) ends
  the route: another provider would refuse the same message;
- an **in-doubt failure** (the provider may have accepted it) ends the
  route at once: the provider's ``status`` is asked, and when it cannot
  tell, the message stays IN_DOUBT. Moving on to the next provider could
  deliver it twice, so a message never leaves a provider that may have it;
- **over the rate limit** the message waits up to the provider's
  ``max_wait_seconds``; past that, nothing is sent and the answer is
  "retry later" with the expected wait. A rate limit is a queue, not a
  failure: the message does not spill over to the next provider.

When every provider was skipped or failed retryably, the message is
FAILED and retryable: its key may be sent again, and the caller is told
when (the soonest breaker reopening, the provider's Retry-After).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .breaker import CircuitBreaker
from .plugin import Connector, InDoubt, OutboundMessage, PermanentFailure, TransientFailure
from .ratelimit import RateLimiter

__all__ = ["Dispatched", "Dispatcher"]

log = structlog.get_logger("overture.connectors")
S = messaging_pb2
_RETRY_AFTER = dt.timedelta(seconds=5)
"""The retry delay of a provider that failed for now and gave no hint."""


@dataclass(frozen=True)
class Dispatched:
    """What became of one message on its route."""

    status: str
    """A DeliveryStatus name in lower case: ``sent``, ``failed``, ``in_doubt``, or what a status lookup said."""
    connector: str
    """The provider that last handled it (the first of the route when none was called)."""
    calls: int
    """Provider calls made (0 when every provider was skipped)."""
    retryable: bool = False
    """True when no provider can have accepted it, so the key may be sent again."""
    error: str = ""
    """Why it was not sent, without personal data."""
    provider_message_id: str = ""
    """The provider's id for the message."""
    reason: str = ""
    """For a retryable failure: ``PROVIDER_UNAVAILABLE``, ``CIRCUIT_OPEN`` or ``RATE_LIMITED``."""
    retry_after: dt.timedelta | None = None
    """For a retryable failure: when trying again may succeed."""
    response: dict[str, Any] | None = None
    """The endpoint's answer, when the message asked to keep it. May hold personal data: never logged."""
    segments: int = 0
    """SMS: the segments the message was sent as, when a provider was handed it."""


class Dispatcher:
    """Calls providers for claimed messages. One per event loop."""

    def __init__(
        self, connectors: Mapping[str, Connector], providers: Mapping[str, ProviderConfig], clock: Clock, *,
        limiter: RateLimiter | None = None, concurrency: int = 16,
    ) -> None:
        self._providers = {name: providers.get(name) or ProviderConfig(name=name, kind="unknown") for name in connectors}
        self._clock = clock
        self._limiter = limiter
        self._slots = {name: asyncio.Semaphore(concurrency) for name in connectors}
        self.breakers = {name: CircuitBreaker(name, self._providers[name].breaker, clock) for name in connectors}
        """Each provider's circuit breaker, by name."""

    def provider(self, name: str) -> ProviderConfig:
        """The configuration of provider *name*."""
        return self._providers[name]

    async def dispatch(self, message: OutboundMessage, route: Sequence[Connector], *, delivery_id: str) -> Dispatched:
        """Hand *message* to the first provider of *route* that takes it; see the module docstring."""
        calls = 0
        errors: list[str] = []
        retry_after: dt.timedelta | None = None
        reason = "PROVIDER_UNAVAILABLE"
        for position, connector in enumerate(route):
            breaker = self.breakers[connector.name]
            last_resort = position == len(route) - 1 and calls == 0
            if not breaker.allow() and not last_resort:
                errors.append(f"{connector.name}: circuit open")
                retry_after = _soonest(retry_after, breaker.retry_after())
                reason = "CIRCUIT_OPEN"
                continue
            wait = await self._limiter.acquire(self._providers[connector.name]) if self._limiter else 0.0
            if wait > 0:
                breaker.release()
                errors.append(f"{connector.name}: over its rate limit")
                return Dispatched("failed", connector.name, calls, retryable=True, error="; ".join(errors), reason="RATE_LIMITED",
                                  retry_after=dt.timedelta(seconds=wait))
            calls += 1
            async with self._slots[connector.name]:
                try:
                    result = await connector.send(message)
                except TransientFailure as error:
                    breaker.failure()
                    log.warning("delivery.failed_for_now", connector=connector.name, delivery_id=delivery_id, error=str(error))
                    errors.append(f"{connector.name}: {error}")
                    retry_after = _soonest(retry_after, error.retry_after or _RETRY_AFTER)
                    reason = "PROVIDER_UNAVAILABLE"
                    continue
                except PermanentFailure as error:
                    breaker.success()  # the provider answered: it refused this message, not every message
                    log.warning("delivery.failed", connector=connector.name, delivery_id=delivery_id, error=str(error))
                    return Dispatched("failed", connector.name, calls, error=_joined(errors, f"{connector.name}: {error}"),
                                      response=error.response)
                except InDoubt as error:
                    breaker.failure()
                    status = await self.ask(connector, error.provider_message_id)
                    log.warning("delivery.in_doubt", connector=connector.name, delivery_id=delivery_id, error=str(error), resolved=status)
                    return Dispatched(status or "in_doubt", connector.name, calls, error="" if status else f"{connector.name}: {error}",
                                      provider_message_id=error.provider_message_id, segments=error.segments)
                except Exception:
                    # A connector bug: it may or may not have called its provider.
                    breaker.failure()
                    log.exception("delivery.connector_error", connector=connector.name, delivery_id=delivery_id)
                    return Dispatched("in_doubt", connector.name, calls,
                                      error=f"{connector.name}: the connector failed unexpectedly; the message may have been sent")
            breaker.success()
            return Dispatched("sent", connector.name, calls, provider_message_id=result.provider_message_id, response=result.response,
                              segments=result.segments)
        last = route[-1].name if calls else route[0].name
        return Dispatched("failed", last, calls, retryable=True, error="; ".join(errors), reason=reason,
                          retry_after=retry_after or _RETRY_AFTER)

    async def ask(self, connector: Connector | None, provider_message_id: str) -> str | None:
        """The provider's view of an in-doubt message: a DeliveryStatus name, or None if it cannot tell."""
        if connector is None or not provider_message_id:
            return None
        try:
            status = await connector.status(provider_message_id)
        except Exception:
            log.exception("delivery.status_lookup_failed", connector=connector.name)
            return None
        if status is None or f"DELIVERY_STATUS_{status.upper()}" not in S.DeliveryStatus.keys():
            return None
        status = status.lower()
        # Only an answer that settles the message resolves it; "sending" or "unspecified" leaves it in doubt.
        return status if status not in ("sending", "unspecified", "in_doubt") else None


def _soonest(current: dt.timedelta | None, candidate: dt.timedelta) -> dt.timedelta:
    return candidate if current is None else min(current, candidate)


def _joined(errors: list[str], last: str) -> str:
    return "; ".join([*errors, last])
