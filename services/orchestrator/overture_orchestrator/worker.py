"""The bounded pool of workers that executes due tokens.

``concurrency`` slots bound the batches in flight. A polling worker takes a
slot, claims up to ``batch`` due tokens (timers that came due, retries,
tokens whose worker died, runs started while every slot was busy), executes
them as one batch and records the outcomes in one transaction, then claims
again. Idle workers sleep until woken or for at most ``poll`` seconds, so a
timer fires within about ``poll`` of its time.

Runs started in this replica while a slot is free skip the claim: the
starter inserts their tokens already leased to a claim name from
:meth:`WorkerPool.eager`, and :meth:`WorkerPool.dispatch` executes them at
once (one transaction and one wake-up less between an event and its send).
They are held exactly like claimed tokens: if this process dies, their lease
runs out and another worker claims them. Any number of replicas can run
pools side by side: claims never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import structlog
from prometheus_client import Counter, Histogram

from .executor import Executor
from .runs import RunStore, Work

__all__ = ["WorkerPool"]

log = structlog.get_logger("overture.orchestrator.worker")

CLAIMED = Counter("overture_orchestrator_tokens_claimed_total", "Due tokens claimed by workers (eagerly dispatched ones included).",
                  ["how"])
RECORDED = Counter("overture_orchestrator_tokens_recorded_total", "Claimed tokens whose outcome was recorded.")
BATCH_SECONDS = Histogram("overture_orchestrator_batch_seconds", "Time to execute and record one claimed batch.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class WorkerPool:
    """Claims and executes due tokens until stopped. Not thread-safe."""

    def __init__(self, *, runs: RunStore, executor: Executor, owner: str, concurrency: int = 4, batch: int = 100,
                 poll: float = 0.2) -> None:
        self._runs = runs
        self._executor = executor
        self._owner = owner
        self._concurrency = concurrency
        self._batch = batch
        self._poll = poll
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._claims = itertools.count()
        self._eager: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """New work is due now: idle workers claim it without waiting for their poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the workers until *stopping* is set; each finishes its batch first."""
        await asyncio.gather(*(self._work(stopping) for _ in range(self._concurrency)))
        if self._eager:
            await asyncio.gather(*self._eager, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim and execute one batch now; how many tokens it held (for tests on the injected clock)."""
        async with self._slots:
            return await self._batch_once()

    async def eager(self) -> str | None:
        """A claim name for runs about to start, holding a free slot for them;
        None when every slot is busy (the runs are then claimed as usual).
        The caller must hand the claim to :meth:`dispatch`, even with no work."""
        if self._slots.locked():
            return None
        await self._slots.acquire()  # free: returns at once
        return self._claim_name()

    def dispatch(self, owner: str, work: Sequence[Work]) -> None:
        """Execute *work*, leased to *owner* from :meth:`eager`, at once, and free the slot after."""
        if not work:
            self._slots.release()
            return
        CLAIMED.labels("eager").inc(len(work))
        task = asyncio.get_running_loop().create_task(self._execute(owner, list(work)))
        self._eager.add(task)
        task.add_done_callback(self._eager.discard)

    async def _execute(self, owner: str, work: list[Work]) -> None:
        try:
            await self._record(owner, work)
        except Exception:
            log.exception("worker.batch_failed")  # its tokens come due again when their lease runs out
        finally:
            self._slots.release()

    async def _work(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                async with self._slots:
                    done = await self._batch_once()
            except Exception:
                log.exception("worker.batch_failed")  # its tokens come due again when their lease runs out
                done = 0
            if done:
                continue
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stopper}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    def _claim_name(self) -> str:
        return f"{self._owner}#{next(self._claims)}"

    async def _batch_once(self) -> int:
        owner = self._claim_name()
        work = await self._runs.claim(owner=owner, limit=self._batch)
        if not work:
            return 0
        CLAIMED.labels("claimed").inc(len(work))
        await self._record(owner, work)
        return len(work)

    async def _record(self, owner: str, work: list[Work]) -> None:
        started = time.perf_counter()
        outcomes = await self._executor.execute(work)
        recorded = await self._runs.record(owner=owner, outcomes=outcomes)
        RECORDED.inc(recorded)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if recorded < len(outcomes):
            log.warning("worker.lease_lost", claimed=len(work), recorded=recorded)
