"""Timers are tokens in PostgreSQL, claimed like any work: on the injected
clock, 10,000 delayed runs fire once each, never early, including when every
worker was stopped while they waited (guarantee 5)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture_orchestrator import OrchestratorApp
from overture_orchestrator.tables import runs, step_attempts
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import TENANT, admin_metadata
from tests.thinpath import eventually

MD = admin_metadata()
RUNS = 10_000
DELAY = dt.timedelta(hours=1)
START = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def _journey() -> journey_pb2.JourneySpec:
    spec = journey_pb2.JourneySpec(description="wait an hour, then end")
    spec.trigger.event.event_type = "trial.started"
    wait = spec.steps.add(id="wait", next="done")
    wait.delay.duration.FromTimedelta(DELAY)
    spec.steps.add(id="done").exit.SetInParent()
    return spec


@contextlib.asynccontextmanager
async def _orchestrator(settings: Settings, clock: ManualClock) -> AsyncIterator[tuple[OrchestratorApp, Any]]:
    app = OrchestratorApp(settings, clock=clock)
    async with serving(app, settings) as address, grpc.aio.insecure_channel(address) as channel:
        yield app, orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)


async def _count(app: OrchestratorApp, query: Any) -> int:
    async with app.db.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_ten_thousand_delays_fire_once_and_never_early_across_a_stop_of_every_worker(
    make_settings: Callable[..., Settings],
) -> None:
    """Runs wait on a one-hour delay; every worker stops; nothing fires a second before the hour, and after it every run fires exactly once."""
    clock = ManualClock(START)
    settings = make_settings(orchestrator_workers=4, orchestrator_batch=500)
    async with _orchestrator(settings, clock) as (app, stub):
        await stub.PublishJourney(O.PublishJourneyRequest(name="trial", spec=_journey(), reason="timers"), metadata=MD)
        for start in range(0, RUNS, 1000):
            await app.starter.on_events([(TENANT, event_pb2.Event(event_id=f"t-{i}", event_type="trial.started", subject_id=f"s{i}"))
                                         for i in range(start, start + 1000)])
        waiting = sa.select(sa.func.count()).select_from(runs).where(runs.c.state == "waiting")

        async def all_waiting() -> bool:
            return await _count(app, waiting) == RUNS

        await eventually(all_waiting, within=240, what="every run waiting on its delay")
    # Every worker is stopped now. The clock moves to one second before the hour.
    clock.set(START + DELAY - dt.timedelta(seconds=1))
    async with _orchestrator(settings, clock) as (app, _):
        assert await app.workers.run_once() == 0  # nothing is due yet: no timer fires early
        assert await _count(app, waiting) == RUNS
        clock.set(START + DELAY + dt.timedelta(seconds=1))
        completed = sa.select(sa.func.count()).select_from(runs).where(runs.c.state == "completed")

        async def all_completed() -> bool:
            return await _count(app, completed) == RUNS

        await eventually(all_completed, within=240, what="every delayed run completed after the restart")
        fired = step_attempts.c.outcome == "delay elapsed"
        async with app.db.connect() as conn:
            per_run = (await conn.execute(sa.select(step_attempts.c.run_id, sa.func.count()).where(fired)
                                          .group_by(step_attempts.c.run_id))).all()
            early = (await conn.execute(sa.select(sa.func.count()).select_from(step_attempts).where(
                fired & (step_attempts.c.start_time < START + DELAY)))).scalar_one()
    assert len(per_run) == RUNS  # 100% fired
    assert all(count == 1 for _, count in per_run)  # none twice
    assert early == 0  # none early
