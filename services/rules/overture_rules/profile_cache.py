"""The Redis read-through cache in front of the profile tables.

Each subject has a cached view and a generation counter (both under the
subject's hash tag). Writers bump the generation and drop the view after
their transaction commits; a reader caches what it read only if the
generation did not move while it read, so a slow reader can never put an
older profile back over a newer write.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from overture_runtime.redis import Keys

from .engine import ProfileView

__all__ = ["ProfileCache"]

_SET_IF_GENERATION = """
local current = redis.call('GET', KEYS[2]) or '0'
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def _dump(view: ProfileView, generation: str) -> str:
    return json.dumps({
        "g": generation, "traits": dict(view.traits), "granted": sorted(view.granted), "revoked": sorted(view.revoked),
        "segments": list(view.segments), "timezone": view.timezone, "lists": sorted(view.suppression_lists),
        "erased": view.erased, "exists": view.exists,
    }, separators=(",", ":"))


def _load(subject_id: str, raw: bytes) -> tuple[ProfileView, str]:
    data = json.loads(raw)
    view = ProfileView(
        subject_id=subject_id, traits=data["traits"], granted=frozenset(tuple(x) for x in data["granted"]),  # type: ignore[misc]
        revoked=frozenset(tuple(x) for x in data["revoked"]), segments=tuple(data["segments"]),  # type: ignore[misc]
        timezone=data["timezone"], suppression_lists=frozenset(data["lists"]), erased=data["erased"], exists=data["exists"],
    )
    return view, str(data["g"])


class ProfileCache:
    """Cached profile views. Every method may raise a Redis error; callers
    fall back to the database."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, ttl: dt.timedelta = dt.timedelta(minutes=10)) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = int(ttl.total_seconds() * 1000)
        self._set = redis.register_script(_SET_IF_GENERATION)

    def _pair(self, tenant: str, subject_id: str) -> tuple[str, str]:
        return self._keys.subject(tenant, subject_id, "profile"), self._keys.subject(tenant, subject_id, "profile-gen")

    async def get_many(self, tenant: str, subject_ids: Sequence[str]) -> dict[str, tuple[ProfileView | None, str]]:
        """For each subject: its cached view (None on a miss) and the current generation."""
        pipe = self._redis.pipeline(transaction=False)
        for subject_id in subject_ids:
            view_key, gen_key = self._pair(tenant, subject_id)
            pipe.get(view_key)
            pipe.get(gen_key)
        replies: list[Any] = await pipe.execute()
        found: dict[str, tuple[ProfileView | None, str]] = {}
        for i, subject_id in enumerate(subject_ids):
            raw, gen = replies[2 * i], (replies[2 * i + 1] or b"0").decode()
            view = None
            if raw is not None:
                cached, cached_gen = _load(subject_id, raw)
                view = cached if cached_gen == gen else None
            found[subject_id] = (view, gen)
        return found

    async def put_many(self, tenant: str, views: Sequence[tuple[ProfileView, str]]) -> None:
        """Cache views read from the database, each unless its generation moved."""
        pipe = self._redis.pipeline(transaction=False)
        for view, generation in views:
            view_key, gen_key = self._pair(tenant, view.subject_id)
            await self._set(keys=[view_key, gen_key], args=[generation, _dump(view, generation), self._ttl_ms], client=pipe)
        await pipe.execute()

    async def invalidate(self, tenant: str, subject_ids: Sequence[str]) -> None:
        """After a write commits: bump the generations and drop the views."""
        pipe = self._redis.pipeline(transaction=False)
        for subject_id in subject_ids:
            view_key, gen_key = self._pair(tenant, subject_id)
            pipe.incr(gen_key)
            pipe.pexpire(gen_key, self._ttl_ms * 6)
            pipe.delete(view_key)
        await pipe.execute()
