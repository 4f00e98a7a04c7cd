"""Journey backtests on real services: a window of stored events replayed
through a candidate definition and the active version (entry, waits against
the window's events, goals, dry-run decisions), reported side by side, with
no side effect; a long-running operation that survives restarts by failing
cleanly (a running one) or running later (a queued one)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import timestamp_pb2

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.rules.v1 import profile_service_pb2 as P
from overture.rules.v1 import rules_service_pb2 as R
from overture_orchestrator.backtests import INTERRUPTED
from overture_orchestrator.tables import backtests
from tests.integration import journeys_support
from tests.integration.journeys_support import MD, World, event
from tests.thinpath import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world


def _ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def _finished(world: World, backtest_id: str) -> O.JourneyBacktest:
    async def done() -> O.JourneyBacktest | None:
        found = (await world.c.orchestrator.GetJourneyBacktest(O.GetJourneyBacktestRequest(backtest_id=backtest_id), metadata=MD)).backtest
        return found if found.state != O.BACKTEST_STATE_RUNNING else None

    return await eventually(done, what=f"backtest {backtest_id} to finish")


async def test_a_backtest_projects_the_candidate_and_the_active_version_over_the_window_without_effects(world: World) -> None:
    """Entry (filter, erased subject), waits against the window's own events, a goal and consent denials come out per
    version: a longer wait in the candidate turns a late payment into thanks; no run, decision or message is made."""
    for subject in ("bt-a", "bt-b", "bt-e", "bt-z"):
        await world.person(subject)
    await world.person("bt-c", consent=False)
    await world.c.profiles.EraseProfile(P.EraseProfileRequest(subject_id="bt-z", reason="GDPR"), metadata=MD)
    t0 = world.clock.now()
    await world.ingest(*(event("cart.started", s, f"bt-start-{s}", total=10) for s in ("bt-a", "bt-b", "bt-c", "bt-e", "bt-z")),
                       event("cart.started", "bt-d", "bt-start-bt-d", total=0))
    await world.advance(dt.timedelta(minutes=30))
    await world.ingest(event("cart.paid", "bt-a", "bt-paid-a"), event("cart.bought", "bt-e", "bt-bought-e"))
    await world.advance(dt.timedelta(minutes=90))
    await world.ingest(event("cart.paid", "bt-c", "bt-paid-c"))
    await world.advance(dt.timedelta(hours=1))
    await world.consumed()
    await world.publish("backtest-checkout")  # after the events: the live engine started nothing from them
    candidate = world.spec("backtest-checkout")
    candidate.steps[0].wait_for_event.timeout.FromTimedelta(dt.timedelta(hours=3))

    started = (await world.c.orchestrator.StartJourneyBacktest(O.StartJourneyBacktestRequest(
        name="backtest-checkout", spec=candidate, start_time=_ts(t0 - dt.timedelta(minutes=1))), metadata=MD)).backtest
    assert started.state == O.BACKTEST_STATE_RUNNING and started.name == "backtest-checkout"
    done = await _finished(world, started.backtest_id)
    assert done.state == O.BACKTEST_STATE_SUCCEEDED, done.error
    assert done.events_scanned == done.events_total == 9 and done.HasField("end_time")

    base, cand = done.baseline, done.candidate
    assert (base.version, cand.version) == (1, 0)
    assert (base.runs_entered, base.subjects_entered, base.runs_converted) == (4, 4, 1)
    assert dict(base.edge_counts) == {"wait-pay:event": 1, "wait-pay:timeout": 2, "wait-pay:goal": 1, "thanks:next": 1, "remind:next": 2}
    assert dict(base.sends_by_channel) == {"email": 2} and dict(base.denials_by_guardrail) == {"consent": 1}
    assert dict(cand.edge_counts) == {"wait-pay:event": 2, "wait-pay:timeout": 1, "wait-pay:goal": 1, "thanks:next": 2, "remind:next": 1}
    assert dict(cand.step_counts) == {"wait-pay": 4, "thanks": 2, "remind": 1}
    assert dict(cand.sends_by_channel) == {"email": 2} and dict(cand.denials_by_guardrail) == {"consent": 1}

    assert await world.runs("backtest-checkout") == []
    for subject in ("bt-a", "bt-b", "bt-c"):
        decisions = await world.c.rules.ListDecisions(R.ListDecisionsRequest(subject_id=subject), metadata=MD)
        assert list(decisions.decisions) == []
    assert world.mail_to("bt-a@example.com", "bt-b@example.com") == []


async def test_a_repeated_start_returns_the_first_backtest_and_bad_starts_are_refused(world: World) -> None:
    """The same request_id gives the same backtest; a manual trigger, an unknown journey, no start or an end before it are refused."""
    await world.publish("backtest-checkout")
    now = world.clock.now()
    request = O.StartJourneyBacktestRequest(name="backtest-checkout", start_time=_ts(now - dt.timedelta(hours=1)), request_id="bt-once")
    first = (await world.c.orchestrator.StartJourneyBacktest(request, metadata=MD)).backtest
    again = (await world.c.orchestrator.StartJourneyBacktest(request, metadata=MD)).backtest
    assert first.backtest_id == again.backtest_id
    assert (await _finished(world, first.backtest_id)).state == O.BACKTEST_STATE_SUCCEEDED
    manual = world.spec("backtest-checkout")
    manual.trigger.CopyFrom(J.JourneyTrigger(manual=J.ManualTrigger()))
    cases: list[tuple[Any, grpc.StatusCode]] = [
        (O.StartJourneyBacktestRequest(name="backtest-checkout", spec=manual, start_time=_ts(now - dt.timedelta(hours=1))),
         grpc.StatusCode.FAILED_PRECONDITION),
        (O.StartJourneyBacktestRequest(name="no-such-journey", start_time=_ts(now - dt.timedelta(hours=1))), grpc.StatusCode.NOT_FOUND),
        (O.StartJourneyBacktestRequest(name="backtest-checkout"), grpc.StatusCode.INVALID_ARGUMENT),
        (O.StartJourneyBacktestRequest(name="backtest-checkout", start_time=_ts(now), end_time=_ts(now - dt.timedelta(hours=1))),
         grpc.StatusCode.INVALID_ARGUMENT),
        (O.StartJourneyBacktestRequest(name="backtest-checkout", start_time=_ts(now + dt.timedelta(hours=1))), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for bad, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.c.orchestrator.StartJourneyBacktest(bad, metadata=MD)
        assert caught.value.code() == code, bad
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.c.orchestrator.GetJourneyBacktest(O.GetJourneyBacktestRequest(backtest_id="nope"), metadata=MD)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_backtest_whose_replica_stopped_fails_cleanly_and_a_queued_one_runs_later(world: World) -> None:
    """A running backtest whose lease ran out (its replica stopped) is marked failed as interrupted; one queued before the
    restart, never claimed, is run by the replica that is up."""
    await world.publish("backtest-checkout")
    app = world.c.apps["orchestrator"]
    now = world.clock.now()
    row = dict(tenant="acme", journey="backtest-checkout", candidate_spec=None, candidate_version=1, baseline_version=None,
               start_time=now - dt.timedelta(hours=1), end_time=now, events_scanned=10, events_total=100, error="", create_time=now)
    async with app.db.begin() as conn:
        await conn.execute(sa.insert(backtests).values(backtest_id="bt-orphan", state="running", lease_owner="gone:1",
                                                       lease_until=now - dt.timedelta(seconds=1), **row))
        await conn.execute(sa.insert(backtests).values(backtest_id="bt-queued", state="queued", **{**row, "events_scanned": 0, "events_total": 0}))
    app.backtests._wake.set()
    orphan = await _finished(world, "bt-orphan")
    assert orphan.state == O.BACKTEST_STATE_FAILED and orphan.error == INTERRUPTED
    assert (await _finished(world, "bt-queued")).state == O.BACKTEST_STATE_SUCCEEDED
