"""Console sessions, kept server-side in Redis.

The browser holds only a random session id in an HttpOnly, SameSite=Strict
cookie (``Secure`` when ``OVERTURE_CONSOLE_SECURE_COOKIES`` is set). Redis
holds, under the sha256 of that id (so a copy of Redis cannot be replayed
as cookies), the person's Overture token, sealed with
``OVERTURE_SIGNING_KEYS`` (so it is not readable at rest either), and the
tenant, principal and roles, the session's CSRF token and its pending
notices (at most :data:`MAX_NOTICES`).
Each request renews the session's idle lifetime; signing out deletes it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from overture_runtime.clock import Clock
from overture_runtime.redis import Keys
from overture_runtime.sealing import BadToken, Sealer

__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "SessionStore"]

COOKIE = "overture_console"
"""The session cookie's name."""
LOGIN_COOKIE = "overture_console_login"
"""The sign-in form's CSRF cookie (double submit: the form carries the same random value)."""
_PURPOSE = "console-session"
MAX_NOTICES = 8
"""Notices kept for the next page, the latest."""
NOTICE_CHARS = 600
"""The longest notice kept."""


@dataclass
class Session:
    """A signed-in person."""

    key: str
    """The sha256 of the session id: the Redis key's last part."""
    token: str
    """The person's Overture bearer token; never sent to the browser."""
    tenant: str
    """The tenant the token acts for."""
    principal: str
    """Who the token belongs to, as the token table names them."""
    roles: frozenset[str]
    """The roles the token holds (``*``: every role)."""
    csrf: str
    """The session's CSRF token, carried by every form."""
    notices: list[tuple[str, str]] = field(default_factory=list)
    """Notices (kind, text) to show on the next page, after a redirect."""

    def can(self, role: str) -> bool:
        """Whether the person holds *role*."""
        return "*" in self.roles or role in self.roles




def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Creates, loads, saves and deletes sessions. Safe from any task of one event loop."""

    def __init__(self, *, redis: aioredis.Redis, keys: Keys, sealer: Sealer, clock: Clock, idle_seconds: float) -> None:
        if not sealer.enabled:
            raise ValueError("the console needs OVERTURE_SIGNING_KEYS to seal the sessions it keeps")
        self._redis, self._keys, self._sealer, self._clock = redis, keys, sealer, clock
        self._idle = max(1, int(idle_seconds))

    async def create(self, *, token: str, tenant: str, principal: str, roles: frozenset[str]) -> tuple[str, Session]:
        """A new session; returns its id (for the cookie) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(key=_digest(session_id), token=token, tenant=tenant, principal=principal, roles=roles,
                          csrf=secrets.token_urlsafe(32))
        await self.save(session)
        return session_id, session

    async def load(self, session_id: str | None) -> Session | None:
        """The session of *session_id*, renewed; None when there is none (unknown, expired, or unreadable)."""
        if not session_id or len(session_id) > 128 or not session_id.isascii():
            return None
        key = _digest(session_id)
        raw = await self._redis.getex(self._keys.console_session(key), ex=self._idle)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            (token,) = self._sealer.open(_PURPOSE, data["token"], now=self._clock.now(), arity=1)
            return Session(key=key, token=token, tenant=data["tenant"], principal=data["principal"],
                           roles=frozenset(data["roles"]), csrf=data["csrf"], notices=[(k, t) for k, t in data.get("notices", [])])
        except (BadToken, ValueError, KeyError, TypeError):  # sealed by a key since retired, or not ours: sign in again
            return None

    async def save(self, session: Session) -> None:
        """Store *session* (with its notices) for the idle lifetime."""
        # Only the token is sealed (a sealed value is bounded in size); the notices waiting for the next page are bounded
        # too, so that a person who never reads them (a script posting forms) cannot grow the session without end.
        del session.notices[:-MAX_NOTICES]
        session.notices[:] = [(kind, text[:NOTICE_CHARS]) for kind, text in session.notices]
        data = {"token": self._sealer.seal(_PURPOSE, [session.token], now=self._clock.now()), "tenant": session.tenant,
                "principal": session.principal, "roles": sorted(session.roles), "csrf": session.csrf, "notices": session.notices}
        await self._redis.set(self._keys.console_session(session.key), json.dumps(data, separators=(",", ":")).encode(), ex=self._idle)

    async def delete(self, session: Session) -> None:
        """Sign out: forget the session."""
        await self._redis.delete(self._keys.console_session(session.key))
