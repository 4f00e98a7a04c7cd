"""Time and ids, injected so that timers, caps and replays are testable.

Domain code takes a :class:`Clock` and an :class:`IdGenerator` instead of
calling ``datetime.now()`` or ``uuid4()`` itself.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["EPOCH", "Clock", "IdGenerator", "ManualClock", "SystemClock", "new_id", "utcnow"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The Unix epoch, in UTC."""


class Clock(Protocol):
    """A source of the current time, always timezone-aware UTC."""

    def now(self) -> datetime:
        """The current time in UTC."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to. For tests; not thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 1, 1, 12, tzinfo=UTC)

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by *delta*."""
        self._now += delta

    def set(self, when: datetime) -> None:
        """Set the clock to *when* (timezone-aware)."""
        self._now = when


def utcnow() -> datetime:
    """The current time in UTC, for code at the edges that has no clock injected."""
    return datetime.now(UTC)


class _Entropy:
    """Bytes from the kernel's CSPRNG, read 4 KiB at a time: one getrandom
    call per 512 ids instead of two per id. A forked child drops what its
    parent had read, so processes never share random bits."""

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._buffer):
            self._buffer, self._at = os.urandom(4096), 0
        chunk = self._buffer[self._at:self._at + n]
        self._at += n
        return chunk

    def forget(self) -> None:
        self._buffer, self._at = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.forget)


class IdGenerator:
    """Time-ordered UUIDv7 strings (RFC 9562), so ids sort by creation time.

    Within one millisecond a 12-bit counter (RFC 9562, method 1) keeps ids
    from one generator in creation order. Not thread-safe."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._last_ms = -1
        self._counter = 0

    def new(self) -> str:
        """A new id."""
        ms = int(self._clock.now().timestamp() * 1000) if self._clock else time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            self._counter += 1
            if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                self._last_ms += 1
                self._counter = 0
            ms = self._last_ms
        else:
            self._last_ms = ms
            self._counter = int.from_bytes(_entropy.take(2), "big") & 0x3FF  # room to count up
        rand_b = int.from_bytes(_entropy.take(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | self._counter << 64 | 0x2 << 62 | rand_b
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_default_ids = IdGenerator()


def new_id() -> str:
    """A new UUIDv7 string from the system clock."""
    return _default_ids.new()
