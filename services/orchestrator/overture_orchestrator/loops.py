"""The background loops' one shape: do a step of work; when it found none,
sleep until the interval passes or the service stops. A step that fails is
logged and the loop goes on (what it held comes due again by its lease)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

__all__ = ["repeat"]

log = structlog.get_logger("overture.orchestrator")


async def repeat(stopping: asyncio.Event, step: Callable[[], Awaitable[int]], *, interval: float, failure: str) -> None:
    """Run *step* until *stopping* is set: again at once while it does work
    (returns a positive count), after *interval* seconds otherwise; a failure
    is logged as *failure*."""
    while not stopping.is_set():
        try:
            done = await step()
        except Exception:
            log.exception(failure)
            done = 0
        if done:
            continue
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass
