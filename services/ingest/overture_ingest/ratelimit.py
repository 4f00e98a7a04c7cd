"""Per-tenant backpressure: a token bucket (rate and burst) and a daily
quota, both in Redis, checked and taken in one Lua script per batch.

A batch is admitted whole or refused whole, with the delay after which it
would be admitted. If Redis cannot be reached the limiter lets traffic
through (and logs it): accepted events are durable in PostgreSQL either way,
and refusing everything would turn a cache outage into an ingest outage.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from overture_runtime.errors import ResourceExhausted
from overture_runtime.redis import Keys

__all__ = ["Limits", "RateLimiter"]

log = structlog.get_logger("overture.ingest")

_SCRIPT = """
local now, rate, burst, cost, quota, quota_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or burst)
local last = tonumber(redis.call('HGET', KEYS[1], 'ts') or now)
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
if quota > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + cost > quota then return {0, redis.call('PTTL', KEYS[2]), 'quota'} end
end
if tokens < cost then
  return {0, math.ceil((cost - tokens) * 1000 / rate), 'rate'}
end
redis.call('HSET', KEYS[1], 't', tokens - cost, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
if quota > 0 then
  redis.call('INCRBY', KEYS[2], cost)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], quota_ttl) end
end
return {1, 0, ''}
"""


@dataclass(frozen=True)
class Limits:
    """One tenant's limits."""

    rate: float
    """Events per second, sustained."""
    burst: int
    """Events admitted at once; must be at least the largest batch."""
    daily_quota: int = 0
    """Events per UTC day; 0 for no quota."""


class RateLimiter:
    """Admits batches of events per tenant."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, default: Limits, per_tenant: Mapping[str, Limits] | None = None) -> None:
        self._keys = keys
        self._default = default
        self._per_tenant = dict(per_tenant or {})
        self._script = redis.register_script(_SCRIPT)

    def limits(self, tenant: str) -> Limits:
        """The limits that apply to *tenant*."""
        return self._per_tenant.get(tenant, self._default)

    async def admit(self, tenant: str, count: int, now: dt.datetime) -> None:
        """Take *count* events from *tenant*'s bucket and quota, or raise
        :class:`ResourceExhausted` with the delay to retry after."""
        limits = self.limits(tenant)
        if limits.rate <= 0 or count <= 0:
            return
        day = now.date().isoformat()
        midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        tag = "{r:" + tenant + "}"
        keys = [self._keys.tenant(tenant, tag, "bucket"), self._keys.tenant(tenant, tag, "quota", day)]
        try:
            ok, wait_ms, why = await self._script(keys=keys, args=[
                int(now.timestamp() * 1000), limits.rate, limits.burst, count, limits.daily_quota,
                int((midnight - now).total_seconds() * 1000) + 1000,
            ])
        except RedisError as error:
            log.warning("ingest.rate_limiter_unavailable", error=type(error).__name__)
            return
        if int(ok):
            return
        reason = why.decode() if isinstance(why, bytes) else str(why)
        wait = dt.timedelta(milliseconds=max(int(wait_ms), 1))
        if reason == "quota":
            raise ResourceExhausted(f"the daily quota of {limits.daily_quota} events is used up; it resets at midnight UTC",
                                    reason="DAILY_QUOTA_EXCEEDED", retry_after=wait)
        if count > limits.burst:
            raise ResourceExhausted(f"a batch of {count} events exceeds the burst limit of {limits.burst}; send smaller batches",
                                    reason="BATCH_OVER_BURST", retry_after=dt.timedelta(seconds=math.ceil(count / limits.rate)))
        raise ResourceExhausted(f"over the rate limit of {limits.rate:g} events/s; retry after {wait.total_seconds():.3f} s",
                                reason="RATE_LIMITED", retry_after=wait)
