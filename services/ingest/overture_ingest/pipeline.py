"""The pipeline every door shares: validate, normalize, deduplicate, commit,
then apply profile updates and wake the relay.

One bad event never fails its neighbours: each gets its own result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import grpc
import structlog

from overture.common.v1 import event_pb2
from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.errors import FieldViolation

from .log import EventLog, Relay
from .normalize import PROFILE_EVENT_TYPES, Limits, NormalizedEvent, normalize
from .ratelimit import RateLimiter

__all__ = ["IngestPipeline", "Outcome"]

log = structlog.get_logger("overture.ingest")

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"


class Outcome(NamedTuple):
    """What became of one event of a batch (a tuple: one is made per event)."""

    status: str
    """``accepted``, ``duplicate`` or ``rejected``."""
    event_id: str = ""
    """The given or derived id; empty when rejected without one."""
    violations: tuple[FieldViolation, ...] = ()
    """Why it was rejected."""


class IngestPipeline:
    """Turns batches of raw events into durable, published events."""

    def __init__(
        self, *, log_: EventLog, relay: Relay | None, clock: Clock, settings: Settings,
        profiles: profile_service_pb2_grpc.ProfileServiceStub | None, aliases: Mapping[str, Mapping[str, str]] | None = None,
        limits: Limits = Limits(), limiter: RateLimiter | None = None,
    ) -> None:
        self._limiter = limiter
        self._log = log_
        self._relay = relay
        self._clock = clock
        self._settings = settings
        self._profiles = profiles
        self._aliases = aliases or {}
        self._limits = limits

    async def ingest(self, tenant: str, batch: Sequence[event_pb2.Event], *, source: str, sent_as: Sequence[str] = ()) -> list[Outcome]:
        """Ingest *batch* for *tenant*; one outcome per event, in order.
        Raises :class:`ResourceExhausted` when the tenant is over its limits."""
        received = self._clock.now()
        if self._limiter is not None:
            await self._limiter.admit(tenant, len(batch), received)
        outcomes: list[Outcome | None] = [None] * len(batch)
        valid: list[tuple[int, NormalizedEvent]] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(batch):
            result = normalize(tenant, raw, received_at=received, source=source, partitions=self._settings.stream_partitions,
                               aliases=self._aliases.get(tenant), limits=self._limits, sent_as=sent_as[index] if sent_as else "")
            if isinstance(result, list):
                outcomes[index] = Outcome(REJECTED, raw.event_id, tuple(result))
                continue
            event_id = result.event.event_id
            if event_id in seen:  # the same id twice in one batch: the first wins
                outcomes[index] = Outcome(DUPLICATE, event_id)
                continue
            seen[event_id] = index
            valid.append((index, result))
        new_ids = await self._log.commit(tenant, [n for _, n in valid])
        for index, normalized in valid:
            event_id = normalized.event.event_id
            outcomes[index] = Outcome(ACCEPTED if event_id in new_ids else DUPLICATE, event_id)
        accepted = [n.event for _, n in valid if n.event.event_id in new_ids]
        profile_events = [e for e in accepted if e.event_type in PROFILE_EVENT_TYPES]
        if profile_events:
            await self.apply_profiles(tenant, profile_events)  # the relay holds them back until then
        if accepted and self._relay is not None:
            self._relay.wake.set()
        return [o for o in outcomes if o is not None]

    async def apply_profiles(self, tenant: str, batch: Sequence[event_pb2.Event]) -> bool:
        """Apply profile events through the rules service, in order. A failure
        leaves them pending, for the retry loop; the events stay accepted."""
        if self._profiles is None:
            return False
        try:
            response = await self._profiles.ApplyProfileEvents(
                profile_service_pb2.ApplyProfileEventsRequest(events=batch),
                metadata=call_metadata(self._settings, tenant), timeout=self._settings.rpc_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("ingest.profile_update_deferred", code=error.code().name, count=len(batch))
            return False
        rejected = [r for r in response.results if r.violations]
        if rejected:
            log.warning("ingest.profile_events_rejected", count=len(rejected), reasons=sorted({v.reason for r in rejected for v in r.violations}))
        await self._log.mark_profile_applied(tenant, [e.event_id for e in batch])
        return True

    async def retry_pending_profiles(self) -> int:
        """Apply profile events left pending by a failure; return how many were applied."""
        pending = await self._log.pending_profile_events(older_than=dt.timedelta(seconds=10))
        applied = 0
        by_tenant: dict[str, list[event_pb2.Event]] = {}
        for tenant, event in pending:
            by_tenant.setdefault(tenant, []).append(event)
        for tenant, batch in by_tenant.items():
            if await self.apply_profiles(tenant, batch):
                applied += len(batch)
        return applied
