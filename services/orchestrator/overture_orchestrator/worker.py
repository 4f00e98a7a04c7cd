"""The bounded pool of workers that executes due tokens.

Each of ``concurrency`` workers claims up to ``batch`` due tokens (new runs,
timers that came due, retries, tokens whose worker died), executes them as
one batch and records the outcomes in one transaction, then claims again.
Idle workers sleep until woken (a run was started here) or for at most
``poll`` seconds, so a timer fires within about ``poll`` of its time. Any
number of replicas can run pools side by side: claims never overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import structlog
from prometheus_client import Counter, Histogram

from .executor import Executor
from .runs import RunStore

__all__ = ["WorkerPool"]

log = structlog.get_logger("overture.orchestrator.worker")

CLAIMED = Counter("overture_orchestrator_tokens_claimed_total", "Due tokens claimed by workers.")
RECORDED = Counter("overture_orchestrator_tokens_recorded_total", "Claimed tokens whose outcome was recorded.")
BATCH_SECONDS = Histogram("overture_orchestrator_batch_seconds", "Time to execute and record one claimed batch.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class WorkerPool:
    """Claims and executes due tokens until stopped."""

    def __init__(self, *, runs: RunStore, executor: Executor, owner: str, concurrency: int = 4, batch: int = 100,
                 poll: float = 0.2) -> None:
        self._runs = runs
        self._executor = executor
        self._owner = owner
        self._concurrency = concurrency
        self._batch = batch
        self._poll = poll
        self._wake = asyncio.Event()
        self._claims = itertools.count()

    def wake(self) -> None:
        """New work is due now: idle workers claim it without waiting for their poll."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the workers until *stopping* is set; each finishes its batch first."""
        await asyncio.gather(*(self._work(stopping) for _ in range(self._concurrency)))

    async def run_once(self) -> int:
        """Claim and execute one batch now; how many tokens it held (for tests on the injected clock)."""
        return await self._batch_once()

    async def _work(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
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

    async def _batch_once(self) -> int:
        owner = f"{self._owner}#{next(self._claims)}"
        work = await self._runs.claim(owner=owner, limit=self._batch)
        if not work:
            return 0
        started = time.perf_counter()
        CLAIMED.inc(len(work))
        outcomes = await self._executor.execute(work)
        recorded = await self._runs.record(owner=owner, outcomes=outcomes)
        RECORDED.inc(recorded)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if recorded < len(outcomes):
            log.warning("worker.lease_lost", claimed=len(work), recorded=recorded)
        return len(work)
