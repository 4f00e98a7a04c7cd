"""A bounded pool of open SMTP sessions (aiosmtplib).

Opening an SMTP session costs a TCP connect, the greeting, EHLO and, as
configured, STARTTLS (a TLS handshake and a second EHLO) and AUTH: several
round trips before the first message. The pool keeps sessions open and
hands each to one sender at a time, so a batch pays that once per session,
not once per message.

- At most *size* sessions are open at once (idle and in use together); a
  sender waits for a free one.
- A session that broke (the server closed it, a command failed mid-way) is
  closed, never handed out again, and replaced by a new one on demand.
- A session idle longer than *max_idle* seconds, or that has carried
  *max_messages* messages, is closed instead of reused.

Not thread-safe: one pool per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiosmtplib

__all__ = ["SmtpPool", "SmtpSession"]


@dataclass(eq=False)
class SmtpSession:
    """One open SMTP session, lent to one sender at a time."""

    client: aiosmtplib.SMTP
    """The aiosmtplib client, connected (and upgraded and logged in, as configured)."""
    messages: int = 0
    """Messages whose transaction completed on this session."""
    last_used: float = field(default=0.0)
    """When the session was last handed back, on the pool's monotonic clock."""
    broken: bool = False
    """Set by the sender when the session must not be reused."""

    @property
    def reused(self) -> bool:
        """Whether the session carried a message before: the server may have closed it since."""
        return self.messages > 0

    def discard(self) -> None:
        """Mark the session unusable; the pool closes it when it is handed back."""
        self.broken = True


class SmtpPool:
    """Open SMTP sessions to one server, at most *size* at once. See the module docstring."""

    def __init__(
        self, *, host: str, port: int, timeout: float, starttls: bool = False, username: str | None = None,
        password: str | None = None, tls_context: ssl.SSLContext | None = None, size: int = 16,
        max_idle: float = 30.0, max_messages: int = 100, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError("an SMTP pool needs at least one session")
        self._host = host
        self._port = port
        self._timeout = timeout
        self._starttls = starttls
        self._username = username
        self._password = password
        self._tls_context = tls_context
        self._max_idle = max_idle
        self._max_messages = max_messages
        self._monotonic = monotonic
        self._slots = asyncio.Semaphore(size)
        self._idle: list[SmtpSession] = []  # most recently used last: reuse warm sessions first
        self._open = 0
        self._closed = False
        self.size = size
        self.opened = 0
        """Sessions opened since the pool was made (a measure of reuse)."""

    @property
    def address(self) -> tuple[str, int]:
        """The server's host and port."""
        return self._host, self._port

    @property
    def open_sessions(self) -> int:
        """Sessions open now, idle or in use."""
        return self._open

    @contextlib.asynccontextmanager
    async def session(self, *, fresh: bool = False) -> AsyncIterator[SmtpSession]:
        """Borrow a session: an idle one if there is one (unless *fresh*), else a new one.

        Raises the aiosmtplib error or ``OSError`` of a session that could not
        be opened. The session goes back to the pool on exit, unless it was
        discarded, its connection closed, or an exception escaped.
        """
        async with self._slots:
            session = (None if fresh else self._take_idle()) or await self._connect()
            try:
                yield session
            except BaseException:
                session.broken = True
                raise
            finally:
                await self._give_back(session)

    async def close(self) -> None:
        """Close every idle session (politely, with QUIT); sessions in use close when handed back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for session in idle:
            await self._retire(session)

    def _take_idle(self) -> SmtpSession | None:
        now = self._monotonic()
        while self._idle:
            session = self._idle.pop()
            if session.client.is_connected and now - session.last_used <= self._max_idle:
                return session
            self._drop(session)
        return None

    async def _connect(self) -> SmtpSession:
        if self._open >= self.size and self._idle:
            self._drop(self._idle.pop(0))  # stay within the bound: the least recently used goes
        client = aiosmtplib.SMTP(
            hostname=self._host, port=self._port, timeout=self._timeout, start_tls=False, tls_context=self._tls_context,
        )
        try:
            await client.connect()
            if self._starttls:
                await client.starttls()
            if self._username and self._password:
                await client.login(self._username, self._password)
        except BaseException:
            _close(client)
            raise
        self._open += 1
        self.opened += 1
        return SmtpSession(client=client)

    async def _give_back(self, session: SmtpSession) -> None:
        session.last_used = self._monotonic()
        if session.broken or not session.client.is_connected:
            self._drop(session)
        elif self._closed or session.messages >= self._max_messages:
            await self._retire(session)
        else:
            self._idle.append(session)

    async def _retire(self, session: SmtpSession) -> None:
        """Close a healthy session politely (QUIT), for a clean end on the server's side."""
        self._open -= 1
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await session.client.quit()
        _close(session.client)

    def _drop(self, session: SmtpSession) -> None:
        self._open -= 1
        _close(session.client)


def _close(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        client.close()
