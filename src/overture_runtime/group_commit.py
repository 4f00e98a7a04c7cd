"""Group commit: rows written by concurrent callers are coalesced into one
insert (one round trip, one transaction) instead of one transaction each.

Two modes:

- durable (the default): ``write`` returns after the group holding its rows
  is committed, so an acknowledged row survives a crash of this process.
- not durable: ``write`` returns once the rows are queued; the queue is
  flushed within ``max_delay`` and on close. A crash loses at most that
  window; in exchange the database leaves the caller's latency. Rows not yet
  flushed can be read back with :meth:`GroupWriter.pending`.

Rows are identified by a key; when one group holds the same key twice, only
the first counts as new, the way the unique index would answer them in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

__all__ = ["GroupWriter"]

log = structlog.get_logger("overture.group_commit")
Key = tuple[str, str]
Insert = Callable[[list[dict[str, Any]]], Awaitable[set[Key]]]


class GroupWriter:
    """Coalesces inserts of rows keyed by *key*. One per process and table; not thread-safe.

    *insert* stores a list of rows in one transaction and returns the keys it
    actually inserted (the others existed)."""

    def __init__(
        self, insert: Insert, *, key: Callable[[dict[str, Any]], Key], name: str, durable: bool = True,
        max_batch: int = 2000, max_delay: float = 0.002,
    ) -> None:
        self._insert = insert
        self._key = key
        self._name = name
        self.durable = durable
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._queue: list[tuple[dict[str, Any], asyncio.Future[bool] | None]] = []
        self._pending: dict[Key, Any] = {}
        self._flying: dict[Key, asyncio.Future[None]] = {}
        """The rows of the group being inserted, each with the future its insert resolves."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the flushing task."""
        self._task = asyncio.create_task(self._run(), name=f"group-commit:{self._name}")

    async def write(self, rows: Sequence[dict[str, Any]], objects: Sequence[Any] | None = None) -> list[bool]:
        """Queue *rows* (and the objects they record, for :meth:`pending`);
        durable: wait for their group to commit. Returns, per row, whether it
        was new (not durable: True, as far as it can tell)."""
        if self._closed:
            raise RuntimeError(f"the {self._name} writer is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        for i, row in enumerate(rows):
            future = loop.create_future() if self.durable else None
            if future is not None:
                futures.append(future)
            self._queue.append((row, future))
            if objects is not None:
                self._pending[self._key(row)] = objects[i]
        self._wake.set()
        if not self.durable:
            return [True] * len(rows)
        return list(await asyncio.gather(*futures))

    def pending(self, key: Key) -> Any:
        """The object of a row queued but not yet inserted, if any."""
        return self._pending.get(key)

    def amend(self, key: Key, obj: Any, **changes: Any) -> bool:
        """Change a row that is still queued; False if its group was taken
        (see :meth:`landed`) or inserted."""
        for row, _ in self._queue:
            if self._key(row) == key:
                row.update(changes)
                self._pending[key] = obj
                return True
        return False

    async def landed(self, key: Key) -> bool:
        """Wait for the insert of the group that holds *key*'s row, if one is
        being made; whether one was. After it, the row is stored, or (when
        the insert failed and the writer is not durable) queued again."""
        flying = self._flying.get(key)
        if flying is None:
            return False
        await asyncio.shield(flying)
        return True

    async def _run(self) -> None:
        while not (self._closed and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._max_batch and not self._closed:
                await asyncio.sleep(self._max_delay)  # let a group gather
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                rows = [row for row, _ in batch]
                keys = [self._key(row) for row in rows]
                flying = asyncio.get_running_loop().create_future()
                for key in keys:
                    self._flying[key] = flying
                retry = failed = False
                try:
                    new = await self._insert(rows)
                except Exception as error:  # noqa: BLE001 - reported to every waiter; logged when not durable
                    failed = True
                    log.error("group_commit.failed", writer=self._name, rows=len(rows), error=type(error).__name__)
                    for _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(error)
                    retry = not self.durable and not self._closed
                    if retry:
                        self._queue[:0] = batch  # keep them; retry on the next wake
                    else:
                        for key in keys:
                            self._pending.pop(key, None)
                finally:
                    for key in keys:
                        if self._flying.get(key) is flying:
                            del self._flying[key]
                    flying.set_result(None)
                if failed:
                    if retry:
                        await asyncio.sleep(0.5)
                        self._wake.set()
                    break
                claimed: set[Key] = set()
                for key, (_, future) in zip(keys, batch, strict=True):
                    self._pending.pop(key, None)
                    first = key in new and key not in claimed
                    claimed.add(key)
                    if future is not None and not future.done():
                        future.set_result(first)
                if len(self._queue) < self._max_batch and not self._closed:
                    break  # what queued meanwhile gathers for max_delay too, instead of going in ones and twos

    async def close(self) -> None:
        """Flush what is queued and stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
