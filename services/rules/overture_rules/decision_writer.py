"""Writing decision records in groups.

Concurrent decisions are coalesced into one insert (one round trip, one
transaction) instead of one transaction each. Two modes:

- ``sync`` (the default): a decision is answered after its group is
  inserted, so a crash of the rules service loses no record.
- ``async``: a decision is answered as soon as its record is queued; the
  queue is flushed within ``max_delay``, and on shutdown. A crash loses at
  most the records of that delay; in exchange the database leaves the
  decision's latency. Records not yet flushed are served from memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from overture.rules.v1 import decision_pb2

__all__ = ["DecisionWriter"]

log = structlog.get_logger("overture.rules")
Insert = Callable[[list[dict[str, Any]]], Awaitable[set[str]]]


class DecisionWriter:
    """Coalesces decision inserts. One per process; not thread-safe."""

    def __init__(self, insert: Insert, *, durable: bool = True, max_batch: int = 2000, max_delay: float = 0.002) -> None:
        self._insert = insert
        self.durable = durable
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._queue: list[tuple[dict[str, Any], asyncio.Future[bool] | None]] = []
        self._pending: dict[tuple[str, str], decision_pb2.Decision] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the flushing task."""
        self._task = asyncio.create_task(self._run(), name="rules:decision-writer")

    async def write(self, rows: Sequence[dict[str, Any]], decisions: Sequence[decision_pb2.Decision]) -> set[str]:
        """Queue records; in durable mode wait for them. Returns the ids that
        were new (in async mode: all of them, as far as it can tell)."""
        if self._closed:
            raise RuntimeError("the decision writer is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        for row, decision in zip(rows, decisions, strict=True):
            future = loop.create_future() if self.durable else None
            if future is not None:
                futures.append(future)
            self._queue.append((row, future))
            self._pending[(row["tenant"], row["decision_id"])] = decision
        self._wake.set()
        if not self.durable:
            return {row["decision_id"] for row in rows}
        results = await asyncio.gather(*futures)
        return {row["decision_id"] for row, new in zip(rows, results, strict=True) if new}

    def pending(self, tenant: str, decision_id: str) -> decision_pb2.Decision | None:
        """A record queued but not yet inserted."""
        return self._pending.get((tenant, decision_id))

    def amend(self, tenant: str, decision: decision_pb2.Decision, *, reservation_state: str) -> bool:
        """Replace a record that is still queued; False if it was already inserted."""
        for row, _ in self._queue:
            if row["tenant"] == tenant and row["decision_id"] == decision.decision_id:
                row["record"] = decision.SerializeToString()
                row["reservation_state"] = reservation_state
                self._pending[(tenant, decision.decision_id)] = decision
                return True
        return False

    async def _run(self) -> None:
        while not (self._closed and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._max_batch and not self._closed:
                await asyncio.sleep(self._max_delay)  # let a group gather
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                rows = [row for row, _ in batch]
                try:
                    new = await self._insert(rows)
                except Exception as error:  # noqa: BLE001 - reported to every waiter; logged for async mode
                    log.error("rules.decision_write_failed", rows=len(rows), error=type(error).__name__)
                    for _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(error)
                    if not self.durable and not self._closed:
                        self._queue[:0] = batch  # keep them; retry on the next wake
                        await asyncio.sleep(0.5)
                        self._wake.set()
                    else:
                        for row in rows:
                            self._pending.pop((row["tenant"], row["decision_id"]), None)
                    break
                for row, future in batch:
                    self._pending.pop((row["tenant"], row["decision_id"]), None)
                    if future is not None and not future.done():
                        future.set_result(row["decision_id"] in new)

    async def close(self) -> None:
        """Flush what is queued and stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
