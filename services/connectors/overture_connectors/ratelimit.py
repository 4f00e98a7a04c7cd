"""Per-provider rate limits: a token bucket in Redis, shared by every replica.

One Lua script refills the bucket from the time since it was last touched
and takes what it can of the tokens asked for, atomically, so replicas
racing for the same provider never exceed its rate together. Time comes
from the injected clock (replicas' clocks agree to well within a token's
interval on any sane deployment), so tests drive the bucket on a manual
clock.

Within a replica, sends waiting for one provider are coalesced: one script
call asks for as many tokens as there are sends waiting, so a batch of 500
costs one round trip, not 500. A send that would have to wait longer than
the provider's ``max_wait_seconds`` is not queued: it is answered "retry
later" with the wait, before anything is sent, so it is never dropped and
never sent twice. A Redis that cannot be reached answers the same way for
providers that have a limit (their limit cannot be kept without it);
providers without a limit never touch Redis.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig
from overture_runtime.redis import Keys

__all__ = ["BUCKET_LUA", "RateLimiter"]

log = structlog.get_logger("overture.connectors")

BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
local wait = 0
if granted < want then
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, wait}
"""
"""KEYS[1]: the bucket. ARGV: rate per second, burst, now (ms), tokens wanted.
Returns the tokens granted and, when fewer than wanted, the milliseconds until the next one."""


@dataclass
class _Gate:
    waiting: list[asyncio.Future[float]] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None


class RateLimiter:
    """Takes tokens from the providers' buckets. One per event loop."""

    def __init__(self, redis: aioredis.Redis | None, keys: Keys, clock: Clock, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._sleep = sleep
        self._script = redis.register_script(BUCKET_LUA) if redis is not None else None
        self._gates: dict[str, _Gate] = {}

    async def acquire(self, provider: ProviderConfig) -> float:
        """Take one token of *provider*'s bucket, waiting up to its ``max_wait_seconds``.

        Returns 0 when the token was taken (send now), otherwise the seconds
        after which a token is expected: nothing may be sent now."""
        if provider.rate_limit_per_second <= 0:
            return 0.0
        gate = self._gates.setdefault(provider.name, _Gate())
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        gate.waiting.append(future)
        if gate.drain is None or gate.drain.done():
            gate.drain = asyncio.create_task(self._drain(provider, gate))
        return await future

    async def take(self, provider: ProviderConfig, want: int) -> tuple[int, float]:
        """One script call: the tokens granted of *want*, and the seconds until the next one when short."""
        assert self._script is not None, "a rate limit needs Redis"
        burst = provider.burst or max(1, math.ceil(provider.rate_limit_per_second))
        now_ms = int(self._clock.now().timestamp() * 1000)
        granted, wait_ms = await self._script(keys=[self._keys.provider(provider.name, "bucket")],
                                              args=[provider.rate_limit_per_second, burst, now_ms, want])
        return int(granted), int(wait_ms) / 1000

    async def _drain(self, provider: ProviderConfig, gate: _Gate) -> None:
        interval = 1 / provider.rate_limit_per_second
        while gate.waiting:
            try:
                granted, wait = await self.take(provider, len(gate.waiting))
            except (RedisError, OSError, AssertionError) as error:
                log.warning("ratelimit.unavailable", connector=provider.name, error=type(error).__name__)
                granted, wait = 0, 1.0
                for future in gate.waiting:
                    _resolve(future, max(wait, provider.max_wait_seconds, 1.0))
                gate.waiting.clear()
                return
            for future in gate.waiting[:granted]:
                _resolve(future, 0.0)
            del gate.waiting[:granted]
            if not gate.waiting:
                return
            # The k-th send still waiting gets its token about k intervals
            # after the next one; those that would wait too long are answered now.
            keep: list[asyncio.Future[float]] = []
            for position, future in enumerate(gate.waiting):
                expected = wait + position * interval
                if expected > provider.max_wait_seconds:
                    _resolve(future, expected)
                else:
                    keep.append(future)
            gate.waiting[:] = keep
            if keep:
                await self._sleep(wait)


def _resolve(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)
