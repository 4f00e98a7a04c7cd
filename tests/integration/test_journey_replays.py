"""ReplayEvents on real services: a window's stored events fed to one
journey's trigger through the normal path start the runs they had not
started, exactly once (replaying twice sends nothing new), audited, with
its own role."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from google.protobuf import timestamp_pb2

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from tests.integration import journeys_support
from tests.integration.journeys_support import DECIDER, MD, World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world


def _ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _replay(start: dt.datetime, *, request_id: str, journey: str = "replay-welcome") -> O.ReplayEventsRequest:
    return O.ReplayEventsRequest(journey=journey, start_time=_ts(start), reason="welcome missed during the outage", request_id=request_id)


async def test_a_replay_starts_the_missed_runs_once_and_a_second_replay_sends_nothing_new(world: World) -> None:
    """Events from before the journey existed start their runs (the filter still applies); the event that already had a run
    starts nothing; replaying again starts nothing and sends no second email; each replay is audited with who and why."""
    addresses = {s: await world.person(s) for s in ("rp-a", "rp-b", "rp-c", "rp-i")}
    start = world.clock.now()
    await world.ingest(event("replay.signed_up", "rp-a", "rp-a-1", plan="pro"), event("replay.signed_up", "rp-b", "rp-b-1", plan="pro"),
                       event("replay.signed_up", "rp-i", "rp-i-1", plan="internal"))
    await world.consumed()
    await world.publish("replay-welcome")
    await world.ingest(event("replay.signed_up", "rp-c", "rp-c-1", plan="pro"))
    await world.ended((await world.run_of("replay-welcome", "rp-c")).run_id)
    await world.advance(dt.timedelta(minutes=1))

    first = await world.c.orchestrator.ReplayEvents(_replay(start, request_id="replay-1"), metadata=MD)
    assert (first.events_read, first.runs_started) == (4, 2)
    for subject in ("rp-a", "rp-b"):
        run = await world.ended((await world.run_of("replay-welcome", subject)).run_id)
        assert run.state == run_pb2.RUN_STATE_COMPLETED and run.trigger_event_id == f"{subject}-1"
    sent = await world.mail_settles([addresses[s] for s in ("rp-a", "rp-b", "rp-c")], 3)
    assert sorted(m["To"] for m in sent) == sorted(addresses[s] for s in ("rp-a", "rp-b", "rp-c"))
    assert await world.runs("replay-welcome", "rp-i") == []

    again = await world.c.orchestrator.ReplayEvents(_replay(start, request_id="replay-2"), metadata=MD)
    assert (again.events_read, again.runs_started) == (4, 0)
    repeat = await world.c.orchestrator.ReplayEvents(_replay(start, request_id="replay-1"), metadata=MD)
    assert repeat == first  # the same request id answers as the first time, replaying nothing
    timer = await world.hour_timer()
    await world.advance(dt.timedelta(hours=1))
    await world.ended(timer)  # the workers handled everything due with it
    assert len(await world.runs("replay-welcome")) == 3
    assert len(world.mail_to(*addresses.values())) == 3
    audited = await world.audit(A.AUDIT_ACTION_EVENTS_REPLAYED, "journey/replay-welcome")
    assert [(e.actor, e.reason, e.details["runs_started"]) for e in audited] == [
        ("alice@acme", "welcome missed during the outage", "2"), ("alice@acme", "welcome missed during the outage", "0")]
    assert audited[0].details["events_read"] == "4" and audited[0].details["outcome"] == "completed"


async def test_a_replay_needs_its_role_an_active_event_journey_and_a_window(world: World) -> None:
    """Without journeys.replay the call is PERMISSION_DENIED; a paused or manual journey is FAILED_PRECONDITION, an unknown one
    NOT_FOUND; no start, no reason or an end before the start are field violations."""
    start = world.clock.now() - dt.timedelta(hours=1)
    await world.publish("replay-welcome")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.c.orchestrator.ReplayEvents(_replay(start, request_id="r"), metadata=DECIDER)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    manual = world.spec("replay-welcome")
    manual.trigger.CopyFrom(J.JourneyTrigger(manual=J.ManualTrigger()))
    await world.publish("replay-manual", manual)
    await world.publish("replay-paused", world.spec("replay-welcome"))
    await world.c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="replay-paused", reason="test"), metadata=MD)
    cases = [
        (_replay(start, request_id="", journey="replay-manual"), grpc.StatusCode.FAILED_PRECONDITION),
        (_replay(start, request_id="", journey="replay-paused"), grpc.StatusCode.FAILED_PRECONDITION),
        (_replay(start, request_id="", journey="no-such-journey"), grpc.StatusCode.NOT_FOUND),
        (O.ReplayEventsRequest(journey="replay-welcome", reason="r"), grpc.StatusCode.INVALID_ARGUMENT),
        (O.ReplayEventsRequest(journey="replay-welcome", start_time=_ts(start)), grpc.StatusCode.INVALID_ARGUMENT),
        (O.ReplayEventsRequest(journey="replay-welcome", start_time=_ts(start), end_time=_ts(start - dt.timedelta(hours=1)), reason="r"),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.c.orchestrator.ReplayEvents(request, metadata=MD)
        assert caught.value.code() == code, request
