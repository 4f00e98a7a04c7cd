"""Redis through ``redis.asyncio``, with every key scoped.

Keys are built by :class:`Keys` only: ``<namespace>:<tenant>:...`` for
tenant data, with a ``{hash tag}`` around the part that must keep related
keys on one Redis Cluster slot (a subject, a stream partition).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

__all__ = ["Keys", "create_redis"]


def create_redis(url: str, *, cluster: bool = False) -> aioredis.Redis:
    """A client for *url*, returning ``bytes`` (callers decode what they need).

    With *cluster*, a Redis Cluster client: every multi-key script and
    transaction in Overture touches keys of one hash tag (one slot), and the
    stream partitions are read one at a time. Not exercised by the test suite,
    which has no cluster to run against."""
    if cluster:
        return aioredis.RedisCluster.from_url(url, health_check_interval=30, socket_keepalive=True)  # type: ignore[return-value]
    return aioredis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


@dataclass(frozen=True)
class Keys:
    """Builds Redis keys under one namespace."""

    namespace: str = "ovt"
    """The prefix of every key."""

    def tenant(self, tenant: str, *parts: str) -> str:
        """A key of *tenant*'s data: ``ns:t:<tenant>:<parts...>``."""
        return ":".join((self.namespace, "t", tenant, *parts))

    def subject(self, tenant: str, subject_id: str, *parts: str) -> str:
        """A key of one subject's data, hash-tagged so a subject's keys share a
        slot. The subject id is hashed: it may hold personal data or braces."""
        tag = hashlib.sha256(f"{tenant}\x00{subject_id}".encode()).hexdigest()[:20]
        return ":".join((self.namespace, "t", tenant, "{s" + tag + "}", *parts))

    def provider(self, name: str, *parts: str) -> str:
        """A key of one delivery provider, shared by every tenant and replica, hash-tagged per provider."""
        return ":".join((self.namespace, "provider", "{" + name + "}", *parts))

    def inbox_channel(self, tenant: str, subject_id: str) -> str:
        """The pub/sub channel announcing changes to a subject's in-app inbox (connectors publish, ingest's stream listens)."""
        return self.subject(tenant, subject_id, "inbox")

    def console_session(self, digest: str) -> str:
        """A console session, by the sha256 of its id (the id itself, the cookie's secret, is never stored)."""
        return f"{self.namespace}:console:session:{digest}"

    def stream(self, name: str, partition: int) -> str:
        """One partition of a shared stream, hash-tagged per partition."""
        return f"{self.namespace}:stream:{name}:{{p{partition}}}"
