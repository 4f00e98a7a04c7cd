"""Journey and run changes join rule changes in the tenant's one hash-chained
audit log (guarantee 9), through the orchestrator's outbox and
AuditService.RecordAuditEvents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2

from overture.common.v1 import messaging_pb2 as M
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture.rules.v1 import audit_service_pb2 as AS
from overture.rules.v1 import audit_service_pb2_grpc
from overture.rules.v1 import rules_service_pb2 as R
from overture_orchestrator.journeys import JourneyStore
from overture_rules.audit import verify_chain
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.protojson import struct_to_dict
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, admin_metadata
from tests.thinpath import eventually

from .cluster import Cluster, running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


async def _audit(c: Cluster) -> list[A.AuditEvent]:
    return list((await c.rules.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000), metadata=MD)).audit_events)


def _actions(events: list[A.AuditEvent]) -> list[str]:
    return [A.AuditAction.Name(e.action).removeprefix("AUDIT_ACTION_") for e in events]


async def test_journey_publish_pause_and_resume_join_rule_changes_in_one_verified_chain(cluster: Cluster) -> None:
    """Publishing, pausing and resuming a journey are in the audit log at once, with their actor and reason, chained after the rule-set changes; a repeated pause records nothing."""
    c = cluster
    await publish_tour(c)
    await c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="welcome", reason="copy review"), metadata=MD)
    await c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="welcome", reason="again"), metadata=MD)
    await c.orchestrator.ResumeJourney(O.ResumeJourneyRequest(name="welcome", reason="approved"), metadata=MD)
    events = await _audit(c)
    assert _actions(events) == ["RULE_SET_VERSION_CREATED", "RULE_SET_VERSION_ACTIVATED", "JOURNEY_VERSION_PUBLISHED",
                                "JOURNEY_PAUSED", "JOURNEY_RESUMED"]
    published, paused, resumed = events[2:]
    assert (published.target, published.reason, published.actor) == ("journey/welcome/1", "tour", "alice@acme")
    assert struct_to_dict(published.details)["rule_set"] == "marketing-email"
    assert [(e.target, e.reason, e.actor) for e in (paused, resumed)] == [("journey/welcome", "copy review", "alice@acme"),
                                                                          ("journey/welcome", "approved", "alice@acme")]
    assert all(e.record_id and e.recorded_by == "svc:test" for e in events[2:])
    assert not events[0].record_id and not events[0].recorded_by
    assert verify_chain(events) is None


async def test_overture_audit_list_and_verify_cover_journey_entries(cluster: Cluster, database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`overture audit list` shows journey entries next to rule entries, and `audit verify` fails once a journey entry is edited by hand."""
    from overture_cli.main import main

    c = cluster
    await publish_tour(c)
    monkeypatch.setenv("OVERTURE_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("OVERTURE_RULES_ADDRESS", c.addresses["rules"])
    monkeypatch.chdir(str(tmp_path))
    assert await asyncio.to_thread(main, ["audit", "list"]) == 0
    listed = capsys.readouterr().out
    assert "journey/welcome/1" in listed and "rule_set/marketing-email" in listed
    assert await asyncio.to_thread(main, ["audit", "verify"]) == 0
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("UPDATE rules_audit_events SET actor = 'mallory' WHERE target = 'journey/welcome/1'")
    finally:
        await conn.close()
    assert await asyncio.to_thread(main, ["audit", "verify"]) == 1


async def test_a_change_committed_without_its_audit_write_reaches_the_log_once(cluster: Cluster, database_url: str) -> None:
    """A pause committed by a process that stopped before forwarding its record is forwarded by the background loop; forwarding it again appends nothing."""
    c = cluster
    await publish_tour(c)
    before = len(await _audit(c))
    db = Database(database_url)
    try:
        # A JourneyStore with no after-commit hook: the change and its outbox
        # row commit, and nothing forwards them, as if the process died.
        crashed = JourneyStore(db, ManualClock())
        await crashed.set_state(tenant="acme", name="welcome", state="paused", actor="ops@acme", reason="incident 7")
    finally:
        await db.close()

    async def forwarded() -> A.AuditEvent | None:
        events = await _audit(c)
        return events[-1] if len(events) > before else None

    entry = await eventually(forwarded, what="the background loop to forward the pause")
    assert (A.AuditAction.Name(entry.action), entry.actor, entry.reason) == ("AUDIT_ACTION_JOURNEY_PAUSED", "ops@acme", "incident 7")
    again = AS.AuditRecord(record_id=entry.record_id, action=entry.action, actor=entry.actor, time=entry.time, reason=entry.reason,
                           target=entry.target, details=entry.details)
    async with grpc.aio.insecure_channel(c.addresses["rules"]) as channel:
        (result,) = (await audit_service_pb2_grpc.AuditServiceStub(channel).RecordAuditEvents(
            AS.RecordAuditEventsRequest(records=[again]), metadata=MD)).results
    assert result.duplicate and result.sequence == entry.sequence
    events = await _audit(c)
    assert len(events) == before + 1 and verify_chain(events) is None


async def test_record_audit_events_needs_its_role_and_refuses_bad_records_one_by_one(cluster: Cluster) -> None:
    """Without audit.write the call is PERMISSION_DENIED; a record of a rules action or without a time is refused alone while its neighbour is appended."""
    c = cluster
    good = AS.AuditRecord(record_id="r-1", action=A.AUDIT_ACTION_JOURNEY_RESUMED, actor="alice@acme", reason="ok", target="journey/x")
    good.time.GetCurrentTime()
    forged = AS.AuditRecord()
    forged.CopyFrom(good)
    forged.record_id, forged.action = "r-2", A.AUDIT_ACTION_RULE_SET_VERSION_ACTIVATED
    timeless = AS.AuditRecord(record_id="r-3", action=A.AUDIT_ACTION_JOURNEY_PAUSED, actor="alice@acme", target="journey/x")
    async with grpc.aio.insecure_channel(c.addresses["rules"]) as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.RecordAuditEvents(AS.RecordAuditEventsRequest(records=[good]), metadata=admin_metadata(READER_TOKEN))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        results = (await stub.RecordAuditEvents(AS.RecordAuditEventsRequest(records=[good, forged, timeless]), metadata=MD)).results
    assert results[0].sequence == 1 and not results[0].violations
    assert [(v.field, v.reason) for v in results[1].violations] == [("action", "NOT_RECORDABLE")] and results[1].sequence == 0
    assert [v.field for v in results[2].violations] == ["time"]
    assert _actions(await _audit(c)) == ["JOURNEY_RESUMED"]


async def test_cancelled_and_retried_runs_are_audited(cluster: Cluster) -> None:
    """CancelRun and RetryRun each leave an entry for the run with the operator, the reason and, for a retry, the versions."""
    c = cluster
    await publish_tour(c)
    spec = J.JourneySpec(
        trigger=J.JourneyTrigger(manual=J.ManualTrigger()), rule_set="marketing-email",
        steps=[J.Step(id="wait", next="nudge", delay=J.DelayStep(duration=duration_pb2.Duration(seconds=3600))),
               J.Step(id="nudge", send=J.SendStep(channel=M.CHANNEL_EMAIL, template="nudge"))],
        templates={"nudge": J.MessageTemplate(subject="Hi {{ profile.traits.nickname }}", text_body="Come back")},
    )
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="nudge", spec=spec, reason="drip"), metadata=MD)
    first = (await c.orchestrator.Trigger(O.TriggerRequest(journey="nudge", subject_id="fay", request_id="t1"), metadata=MD)).run

    async def at_the_delay() -> run_pb2.Run | None:
        run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=first.run_id), metadata=MD)).run
        return run if run.state == run_pb2.RUN_STATE_WAITING else None

    waiting = await eventually(at_the_delay, what="the run to wait at its delay")
    await c.orchestrator.CancelRun(O.CancelRunRequest(run_id=waiting.run_id, reason="asked to stop"), metadata=MD)

    del spec.steps[0]
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="nudge", spec=spec, reason="no wait"), metadata=MD)
    await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
        _event("identify", "gus", traits={"email": "gus@example.com"}), _event("consent.granted", "gus", channel="email", purpose="marketing"),
    ]), metadata=MD)
    started = (await c.orchestrator.Trigger(O.TriggerRequest(journey="nudge", subject_id="gus", request_id="t2"), metadata=MD)).run

    async def failed() -> run_pb2.Run | None:
        run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=started.run_id), metadata=MD)).run
        return run if run.state == run_pb2.RUN_STATE_FAILED else None

    await eventually(failed, what="the nudge to fail on the missing nickname")
    await c.orchestrator.RetryRun(O.RetryRunRequest(run_id=started.run_id, reason="nickname added"), metadata=MD)
    events = await _audit(c)
    cancelled = next(e for e in events if e.action == A.AUDIT_ACTION_RUN_CANCELLED)
    assert (cancelled.target, cancelled.actor, cancelled.reason) == (f"run/{waiting.run_id}", "alice@acme", "asked to stop")
    retried = next(e for e in events if e.action == A.AUDIT_ACTION_RUN_RETRIED)
    assert (retried.target, retried.reason) == (f"run/{started.run_id}", "nickname added")
    details = struct_to_dict(retried.details)
    assert (details["step_id"], details["from_version"], details["to_version"], details["via"]) == ("nudge", "2", "2", "RetryRun")
    assert verify_chain(events) is None
