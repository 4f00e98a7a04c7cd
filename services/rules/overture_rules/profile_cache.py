"""The Redis read-through cache in front of the profile tables, and the
per-process copy of it that decisions read.

Each subject has a cached view and a generation counter (both under the
subject's hash tag). Writers bump the generation and drop the view after
their transaction commits; a reader caches what it read only if the
generation did not move while it read, so a slow reader can never put an
older profile back over a newer write.

:class:`LocalViews` keeps views in this process, each with the generation it
was read at. A decision may only use one after Redis confirmed, in the same
atomic script that counts or reserves its cap slots (``decide.lua``), that
the generation is still the current one. So a local view saves a round trip
and never a stale answer: a write anywhere bumps the generation, and the
next decision reads the profile again.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from overture.common.v1 import messaging_pb2
from overture_runtime.redis import Keys

from .engine import ProfileView, channel_name
from .scripts import Script

__all__ = ["LEDGER_PARTS", "LocalViews", "ProfileCache", "SubjectKeys", "fresh_generation", "load_view"]

_SET_IF_GENERATION = """
local current = redis.call('GET', KEYS[2]) or '0'
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# A missing generation starts at a random value, never at 1: a generation a
# process once validated a view by must not come back after the key is lost.
_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCR', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""


def fresh_generation() -> str:
    """A random starting generation (an integer, so that INCR still works on it)."""
    return str(secrets.randbits(62))


@dataclass(frozen=True)
class SubjectKeys:
    """The Redis keys of one subject that a decision touches."""

    view: str
    """The cached profile view."""
    generation: str
    """The profile's generation counter."""
    ledger: tuple[str, ...]
    """The cap ledger's keys, in the order ``caps.lua`` reads them (:data:`LEDGER_PARTS`)."""

    @classmethod
    def of(cls, keys: Keys, tenant: str, subject_id: str) -> SubjectKeys:
        """The keys of *subject_id*: the same as ``keys.subject(tenant, subject_id, ...)``, hashed once."""
        base = keys.subject(tenant, subject_id)
        return cls(f"{base}:profile", f"{base}:profile-gen", tuple(":".join((base, *part)) for part in LEDGER_PARTS))


LEDGER_PARTS: tuple[tuple[str, ...], ...] = (
    ("caps", "z"), ("caps", "h"), ("caps", "o"), ("caps", "x"),
    *(("caps", "c", channel_name(channel)) for channel in messaging_pb2.Channel.values()),
)
"""The parts of a subject's cap-ledger keys, in the order ``caps.lua`` reads
them: counted entries, hash, other entries, held entries, then one sorted set
per channel (every channel, so that any entry a script retires has its key)."""

_PUT = Script(_SET_IF_GENERATION)


def _dump(view: ProfileView, generation: str) -> bytes:
    data = {
        "g": generation, "traits": dict(view.traits), "granted": sorted(view.granted), "revoked": sorted(view.revoked),
        "segments": list(view.segments), "timezone": view.timezone, "lists": sorted(view.suppression_lists),
        "erased": view.erased, "exists": view.exists,
    }
    try:
        return orjson.dumps(data)
    except TypeError:  # what orjson refuses (an integer past 64 bits) the json module still writes
        return json.dumps(data, separators=(",", ":")).encode()


def load_view(subject_id: str, raw: bytes) -> tuple[ProfileView, str]:
    """A cached view and the generation it was cached at."""
    return _load(subject_id, raw)


def _load(subject_id: str, raw: bytes) -> tuple[ProfileView, str]:
    data = orjson.loads(raw)
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
        self._bump = redis.register_script(_BUMP)

    @property
    def generation_ttl_ms(self) -> int:
        """How long a generation key lives after its last write (or read by a decision)."""
        return self._ttl_ms * 6

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

    def put_command(self, keys: SubjectKeys, view: ProfileView, generation: str) -> tuple[Script, tuple[Any, ...]]:
        """Caching *view*, read from the database at *generation*, for
        :func:`~.scripts.run_scripts`: stored unless the generation moved."""
        return _PUT, _PUT.command([keys.view, keys.generation], [generation, _dump(view, generation), self._ttl_ms])

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
            await self._bump(keys=[gen_key, view_key], args=[fresh_generation(), self.generation_ttl_ms], client=pipe)
        await pipe.execute()


@dataclass
class LocalEntry:
    """One subject's view in this process."""

    keys: SubjectKeys
    """The subject's Redis keys."""
    view: ProfileView | None = None
    """The view, once read."""
    generation: str = ""
    """The generation *view* was read at; empty before the first read."""
    expires: float = 0.0
    """When (monotonic) the view is dropped, validated or not."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """What decisions derived from *view* (coerced attributes, masked snapshots), by rule set plan."""


class LocalViews:
    """Profile views kept in this process: a bounded LRU by (tenant, subject).

    An entry lives at most *ttl*, well inside the generation key's lifetime,
    which decisions keep refreshing while they read it; so no generation can
    repeat while an entry holds it. Not thread-safe."""

    def __init__(
        self, keys: Keys, *, size: int = 100_000, ttl: dt.timedelta = dt.timedelta(minutes=10), monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._size = size
        self._ttl = ttl.total_seconds()
        self._monotonic = monotonic
        self._entries: OrderedDict[tuple[str, str], LocalEntry] = OrderedDict()

    def entry(self, tenant: str, subject_id: str) -> LocalEntry:
        """The subject's entry (its view dropped if it outlived its time)."""
        key = (tenant, subject_id)
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = LocalEntry(SubjectKeys.of(self._keys, tenant, subject_id))
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            if found.view is not None and found.expires <= self._monotonic():
                found.view, found.generation = None, ""
                found.memo.clear()
        return found

    def store(self, entry: LocalEntry, view: ProfileView, generation: str) -> None:
        """Keep *view*, read at *generation*, for later decisions."""
        if entry.view is not view:
            entry.memo.clear()
        entry.view, entry.generation, entry.expires = view, generation, self._monotonic() + self._ttl

    def forget(self, tenant: str, subject_ids: Sequence[str]) -> None:
        """Drop views this process wrote over (the generation check would catch them too)."""
        for subject_id in subject_ids:
            found = self._entries.get((tenant, subject_id))
            if found is not None:
                found.view, found.generation = None, ""
                found.memo.clear()
