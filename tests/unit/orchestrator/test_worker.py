"""The worker pool's queue of runs started in this replica: what joins a
batch, when a worker may take it, and what is left to a claim."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from overture.common.v1 import event_pb2
from overture_orchestrator.model import RunState, TokenState
from overture_orchestrator.runs import Outcome, Work
from overture_orchestrator.worker import WorkerPool
from overture_runtime.clock import ManualClock


class _Runs:
    """Records what was recorded, under which claim name; claims nothing."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, list[str]]] = []

    async def claim(self, *, owner: str, limit: int) -> list[Work]:
        return []

    async def record(self, *, owner: str, outcomes: list[Outcome]) -> int:
        self.recorded.append((owner, [o.work.run_id for o in outcomes]))
        return len(outcomes)


class _Executor:
    async def execute(self, batch: list[Work]) -> list[Outcome]:
        return [Outcome(work=w, run_state=RunState.COMPLETED, node="") for w in batch]


def _work(run_id: str) -> Work:
    return Work(tenant="t", run_id=run_id, token=0, journey="j", journey_version=1, subject_id="s", trigger_event=event_pb2.Event(),
                inline_spec=None, node="a", state=TokenState.READY, attempts=0, evaluations=0)


def _pool(clock: ManualClock, runs: _Runs, batch: int = 10) -> WorkerPool:
    return WorkerPool(runs=runs, executor=_Executor(), owner="me", clock=clock, concurrency=1, batch=batch)  # type: ignore[arg-type]


async def _drain(pool: WorkerPool) -> int:
    return await pool._take_queued()


async def test_starts_under_one_name_run_as_one_batch_once_every_start_is_in() -> None:
    """Two starts share a claim name; a worker takes their runs together, and not while one of them is still inserting."""
    runs = _Runs()
    pool = _pool(ManualClock(), runs)
    first, second = pool.eager(2), pool.eager(3)
    assert first is not None and first == second
    pool.dispatch(first, [_work("a"), _work("b")])
    assert await _drain(pool) == 0 and runs.recorded == []  # the second start is still inserting
    assert pool.eager(1) != first  # the waited-for queue is closed to new starts
    pool.dispatch(first, [_work("c")])
    assert await _drain(pool) == 3
    assert runs.recorded == [(first, ["a", "b", "c"])]


async def test_a_full_batch_opens_a_new_name_and_a_full_queue_refuses() -> None:
    """A start that would overflow the open batch gets a new name; past four names, eager answers None."""
    pool = _pool(ManualClock(), _Runs(), batch=10)
    names = [pool.eager(6) for _ in range(4)]
    assert len(set(names)) == 4 and None not in names
    assert pool.eager(5) is None and pool.eager(11) is None  # the open name has room for 4 more only
    for name in names:
        assert name is not None
        pool.dispatch(name, [])  # nothing new was started: the names are forgotten
    assert pool.eager(1) is not None


async def test_runs_queued_past_half_their_lease_are_left_to_a_claim() -> None:
    """A queue that waited past half the lease is not executed: its tokens may already be due for another worker."""
    clock = ManualClock()
    runs = _Runs()
    pool = _pool(clock, runs)
    name = pool.eager(1)
    assert name is not None
    pool.dispatch(name, [_work("late")])
    clock.advance(dt.timedelta(seconds=16))
    assert await _drain(pool) == 0 and runs.recorded == []


async def test_a_dispatch_wakes_an_idle_worker() -> None:
    """A worker asleep on its poll executes queued runs as soon as they are dispatched."""
    runs = _Runs()
    pool = WorkerPool(runs=runs, executor=_Executor(), owner="me", clock=ManualClock(), concurrency=1, batch=10,  # type: ignore[arg-type]
                      poll=3600)
    stopping = asyncio.Event()
    task = asyncio.create_task(pool.run(stopping))
    await asyncio.sleep(0.01)
    name = pool.eager(1)
    assert name is not None
    pool.dispatch(name, [_work("now")])
    for _ in range(100):
        if runs.recorded:
            break
        await asyncio.sleep(0.01)
    stopping.set()
    pool.wake()
    await task
    assert runs.recorded == [(name, ["now"])]


class _CountingRuns(_Runs):
    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim(self, *, owner: str, limit: int) -> list[Work]:
        self.claims += 1
        return []


async def test_a_dispatch_does_not_make_idle_workers_claim_but_a_wake_does() -> None:
    """Runs started here are queued: the workers a dispatch wakes take the queue, and those that find none go back to
    sleep without asking the database (one empty claim per idle worker per started run was most of a lone event's
    cost). A wake (work due in the database) makes them claim at once."""
    runs = _CountingRuns()
    pool = WorkerPool(runs=runs, executor=_Executor(), owner="me", clock=ManualClock(), concurrency=3, batch=10,  # type: ignore[arg-type]
                      poll=3600)
    stopping = asyncio.Event()
    task = asyncio.create_task(pool.run(stopping))

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    await settle()
    assert 1 <= runs.claims <= 3  # the first round of the idle workers: nothing due
    before = runs.claims
    for i in range(5):
        name = pool.eager(1)
        assert name is not None
        pool.dispatch(name, [_work(f"r{i}")])
        await settle()
    assert [r for _, rs in runs.recorded for r in rs] == [f"r{i}" for i in range(5)]
    assert runs.claims == before
    pool.wake()
    await settle()
    assert runs.claims > before
    stopping.set()
    pool.wake()
    await task


class _SlowRuns(_Runs):
    """A claim that takes a while and finds nothing, then finds *later* once asked again."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.release = asyncio.Event()
        self.later: list[Work] = []

    async def claim(self, *, owner: str, limit: int) -> list[Work]:
        self.claims += 1
        if self.claims == 1:
            await self.release.wait()
            return []
        found, self.later = self.later, []
        return found


async def test_a_claim_that_found_nothing_holds_off_the_next_one_but_not_past_a_wake() -> None:
    """After a claim finds nothing, workers do not ask again within the poll; a wake during that claim (work inserted
    after it looked) must not be swallowed: the next round claims at once."""
    runs = _SlowRuns()
    pool = _pool(ManualClock(), runs)
    claiming = asyncio.create_task(pool._batch_once())
    await asyncio.sleep(0)
    runs.later = [_work("inserted-meanwhile")]
    pool.wake()  # a start left its runs due for a claim while the first claim was looking
    runs.release.set()
    assert await claiming == 0
    assert pool._claim_due()  # the wake came after the claim began: it cannot say nothing is due
    assert await pool._batch_once() == 1 and runs.recorded[-1][1] == ["inserted-meanwhile"]
    assert await pool._batch_once() == 0
    assert not pool._claim_due()  # nothing due, no wake since: the next claim waits for the poll


async def test_work_left_due_by_a_batch_wakes_the_workers() -> None:
    """A batch whose outcome leaves its token going on at once (or forks) wakes the workers to claim it."""
    class _GoesOn(_Executor):
        async def execute(self, batch: list[Work]) -> list[Outcome]:
            return [Outcome(work=w, run_state=RunState.RUNNING, node="next") for w in batch]

    pool = WorkerPool(runs=_Runs(), executor=_GoesOn(), owner="me", clock=ManualClock(), concurrency=1, batch=10)  # type: ignore[arg-type]
    name = pool.eager(1)
    assert name is not None
    pool.dispatch(name, [_work("a")])
    pool._wake.clear()
    assert await pool._take_queued() == 1
    assert pool._wake.is_set()


async def test_the_wait_of_started_runs_for_a_worker_is_measured() -> None:
    """The queue-wait histogram counts each batch a worker takes, from its first start (on the injected clock)."""
    from prometheus_client import REGISTRY

    count_before = REGISTRY.get_sample_value("overture_orchestrator_queue_wait_seconds_count") or 0
    sum_before = REGISTRY.get_sample_value("overture_orchestrator_queue_wait_seconds_sum") or 0
    clock = ManualClock()
    pool = _pool(clock, _Runs())
    name = pool.eager(1)
    assert name is not None
    pool.dispatch(name, [_work("a")])
    clock.advance(dt.timedelta(milliseconds=40))
    assert await _drain(pool) == 1
    assert (REGISTRY.get_sample_value("overture_orchestrator_queue_wait_seconds_count") or 0) - count_before == 1
    assert (REGISTRY.get_sample_value("overture_orchestrator_queue_wait_seconds_sum") or 0) - sum_before == pytest.approx(0.04)
