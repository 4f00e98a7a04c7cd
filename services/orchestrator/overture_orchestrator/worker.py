"""The bounded pool of workers that executes due tokens.

``concurrency`` workers each execute one batch at a time: a batch of runs
this replica just started, when there are some, else up to ``batch`` due
tokens claimed from the database (timers that came due, retries, tokens
whose worker died, runs started elsewhere or while the queue was full). A
batch is executed, and its outcomes recorded in one transaction; then the
worker takes the next. Idle workers sleep until woken or for at most
``poll`` seconds, so a timer fires within about ``poll`` of its time. A
claim that finds nothing is not repeated within ``poll`` unless the workers
are woken (:meth:`WorkerPool.wake`: work came due in the database): after a
batch of runs started here, a worker goes back to the queue instead of
asking the database again, and the workers a dispatch wakes but finds no
queue for do not claim either.

Runs started in this replica skip the claim: the starter inserts their
tokens already leased to the claim name of :meth:`WorkerPool.eager`, and
queues them with :meth:`WorkerPool.dispatch`. Everything queued under one
name is executed as one batch by the next free worker, so a lone event is
sent at once and a burst forms batches by itself. The queue is bounded
(``batch`` tokens per name, four names); past that, runs are left due for a
claim. Queued tokens are held exactly like claimed ones: if this process
dies, their lease runs out and another worker claims them. Any number of
replicas can run pools side by side: claims never overlap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter, Histogram

from overture_runtime.clock import Clock

from .executor import Executor
from .model import LIVE, TokenState
from .runs import LEASE, RunStore, Work
from .work import Outcome

__all__ = ["WorkerPool"]

log = structlog.get_logger("overture.orchestrator.worker")

CLAIMED = Counter("overture_orchestrator_tokens_claimed_total", "Due tokens claimed by workers (eagerly dispatched ones included).",
                  ["how"])
RECORDED = Counter("overture_orchestrator_tokens_recorded_total", "Claimed tokens whose outcome was recorded.")
QUEUE_SECONDS = Histogram("overture_orchestrator_queue_wait_seconds",
                          "Time runs started in this replica wait in memory for a free worker, from the first start of their batch.",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_SECONDS = Histogram("overture_orchestrator_batch_seconds", "Time to execute and record one claimed batch.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class WorkerPool:
    """Claims and executes due tokens until stopped. Not thread-safe."""

    _QUEUED_NAMES = 4
    """Claim names whose runs may wait in memory for a worker at once."""

    def __init__(self, *, runs: RunStore, executor: Executor, owner: str, clock: Clock, concurrency: int = 4, batch: int = 100,
                 poll: float = 0.2) -> None:
        self._runs = runs
        self._executor = executor
        self._owner = owner
        self._clock = clock
        self._concurrency = concurrency
        self._batch = batch
        self._poll = poll
        self._wake = asyncio.Event()
        self._claims = itertools.count()
        self._open: str | None = None
        """The claim name new runs are queued under, until a worker takes its queue."""
        self._queued: dict[str, _Queued] = {}
        self._found_none_at: float | None = None
        """When a claim last found no due token (monotonic), None if the last one found some or work came due since."""
        self._wakes = 0
        """How many times :meth:`wake` was called: a claim that began before a wake cannot say nothing is due."""

    def wake(self) -> None:
        """New work is due now in the database: idle workers claim it without waiting for their poll."""
        self._wakes += 1
        self._found_none_at = None
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the workers until *stopping* is set; each finishes its batch first."""
        await asyncio.gather(*(self._work(stopping) for _ in range(self._concurrency)))

    async def run_once(self) -> int:
        """Claim and execute one batch now; how many tokens it held (for tests on the injected clock)."""
        return await self._batch_once()

    def eager(self, size: int) -> str | None:
        """The claim name to lease *size* runs about to start to, so that a
        worker of this pool executes them without claiming; None when the
        queue is full (start them due, for a claim). The caller must hand
        what it started, even nothing, to :meth:`dispatch`."""
        self._forget_empty()
        queued = self._queued.get(self._open) if self._open is not None else None
        if queued is None or queued.closed or queued.reserved + size > self._batch:
            if len(self._queued) >= self._QUEUED_NAMES or size > self._batch:
                return None
            self._open = self._claim_name()
            queued = self._queued[self._open] = _Queued(since=self._clock.now())
        queued.reserved += size
        queued.starting += 1
        return self._open

    def dispatch(self, owner: str, work: Sequence[Work]) -> None:
        """Queue *work*, leased to *owner* (from :meth:`eager`), for the next free worker."""
        queued = self._queued[owner]
        queued.work.extend(work)
        queued.starting -= 1
        if queued.work and queued.starting == 0:
            self._wake.set()

    def _forget_empty(self) -> None:
        for name in [n for n, q in self._queued.items() if not q.work and not q.starting and n != self._open]:
            del self._queued[name]

    async def _work(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                done = await self._take_queued()
                if not done and self._claim_due():
                    done = await self._batch_once()
            except Exception:
                log.exception("worker.batch_failed")  # its tokens come due again when their lease runs out
                done = 0
            if done:
                continue
            self._wake.clear()
            if self._ready():
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stopper}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    def _claim_due(self) -> bool:
        """Whether to look for due tokens now: not when a claim found none
        less than ``poll`` ago and nothing was woken since (eager batches and
        dispatches need no claim), so timers still fire within about ``poll``
        of their time."""
        return self._found_none_at is None or time.monotonic() - self._found_none_at >= self._poll

    def _ready(self) -> bool:
        return any(q.work and not q.starting for q in self._queued.values())

    async def _take_queued(self) -> int:
        """Execute the oldest queue of started runs whose starts are all in.
        A queue some start is still adding to is closed to new starts, so it
        is complete soon; its last start wakes the workers."""
        owner = None
        for name, queued in self._queued.items():
            if queued.work and not queued.starting:
                owner = name
                break
            if queued.work:
                queued.closed = True
        if owner is None:
            return 0
        queued = self._queued.pop(owner)
        if owner == self._open:
            self._open = None
        waited = self._clock.now() - queued.since
        QUEUE_SECONDS.observe(max(0.0, waited.total_seconds()))
        if waited > LEASE / 2:
            # Held so long its lease may be running out: leave the tokens to a claim.
            log.warning("worker.queued_too_long", tokens=len(queued.work))
            return 0
        CLAIMED.labels("eager").inc(len(queued.work))
        await self._record(owner, queued.work)
        return len(queued.work)

    def _claim_name(self) -> str:
        return f"{self._owner}#{next(self._claims)}"

    async def _batch_once(self) -> int:
        owner = self._claim_name()
        wakes = self._wakes
        work = await self._runs.claim(owner=owner, limit=self._batch)
        self._found_none_at = time.monotonic() if not work and wakes == self._wakes else None
        if not work:
            return 0
        CLAIMED.labels("claimed").inc(len(work))
        await self._record(owner, work)
        return len(work)

    async def _record(self, owner: str, work: list[Work]) -> None:
        started = time.perf_counter()
        outcomes = await self._executor.execute(work)
        recorded = await self._runs.record(owner=owner, outcomes=outcomes)
        if any(_due_now(o, self._clock.now()) for o in outcomes):
            self.wake()  # forks and tokens that go on at once are left due for a claim: claim them now
        RECORDED.inc(recorded)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if recorded < len(outcomes):
            log.warning("worker.lease_lost", claimed=len(work), recorded=recorded)


@dataclass
class _Queued:
    """Runs started under one claim name, waiting for a worker."""

    since: dt.datetime
    """When the first start joined."""
    reserved: int = 0
    """Runs the starts under this name may add (at most a batch)."""
    starting: int = 0
    """Starts still inserting their runs."""
    closed: bool = False
    """A worker waits for it: no new start joins."""
    work: list[Work] = field(default_factory=list)


def _due_now(outcome: Outcome, now: dt.datetime) -> bool:
    """Whether *outcome* leaves work due at once for a claim: a fork's new
    tokens, or its own token going on (not waiting, joined or ended)."""
    if outcome.effects is not None and outcome.effects.forks:
        return True
    return (outcome.run_state in LIVE and outcome.token_state not in (TokenState.JOINED, TokenState.WAITING)
            and (outcome.due_time is None or outcome.due_time <= now))
