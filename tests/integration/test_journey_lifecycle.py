"""A journey's lifecycle on real PostgreSQL and Redis: drafts that are checked
but never run, versions listed newest first, and archive, which cancels
live runs and their timers with the reason, keeps their history, is audited,
and is undone only by publishing a new version."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture_orchestrator import OrchestratorApp
from overture_orchestrator.tables import inactivity, journey_drafts, tokens
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_to_dict
from overture_runtime.testing import free_port, serving
from tests.conftest import TENANT
from tests.thinpath import example_journey

from .cluster import Cluster
from .lifecycle_support import MD, World, audit_entries, delay_journey, lifecycle_cluster, orchestrator_app, publish, waiting_runs
from .test_journey_publish_checks import _publish_rules, _refusal


@pytest.fixture
async def world(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[World]:
    async with lifecycle_cluster(make_settings, tmp_path) as running:
        yield running


async def _started(c: Cluster, event_type: str, subject: str, event_id: str) -> int:
    """How many runs one event starts, handed to the starter as the consumer would."""
    return await orchestrator_app(c).starter.on_events([(TENANT, event_pb2.Event(event_id=event_id, event_type=event_type, subject_id=subject))])


# -- drafts ------------------------------------------------------------------


async def test_a_draft_keeps_what_publish_would_refuse_and_starts_no_run(world: World) -> None:
    """A draft of a new journey with a dangling step and an unknown rule set is saved with both problems at their fields, is not a version, and its trigger starts nothing."""
    c, _ = world
    await _publish_rules(c)
    name, spec = example_journey()
    spec.rule_set = "marketing-emial"
    spec.steps[0].next = "nowhere"
    draft = (await c.orchestrator.SaveJourneyDraft(O.SaveJourneyDraftRequest(name=name, spec=spec), metadata=MD)).draft
    problems = {(p.field, p.reason) for p in draft.problems}
    assert ("spec.steps[0].next", "UNKNOWN_STEP") in problems and ("spec.rule_set", "UNKNOWN_RULE_SET") in problems
    assert (draft.name, draft.author, list(draft.warnings)) == (name, "alice@acme", [])
    assert draft.spec == spec and draft.HasField("update_time")
    assert (await c.orchestrator.GetJourneyDraft(O.GetJourneyDraftRequest(name=name), metadata=MD)).draft == draft
    code, _, reason = await _refusal(c.orchestrator.GetJourney(O.GetJourneyRequest(name=name), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOURNEY_NOT_FOUND")
    assert await _started(c, spec.trigger.event.event_type, "alice", "signup-1") == 0


async def test_saving_replaces_the_draft_and_publishing_its_content_discards_it(world: World) -> None:
    """Each save replaces the journey's one draft; publishing other content keeps it, publishing the draft's content discards it."""
    c, _ = world
    await _publish_rules(c)
    name, spec = example_journey()
    broken = J.JourneySpec()
    broken.CopyFrom(spec)
    broken.steps[0].send.template = "missing"
    await c.orchestrator.SaveJourneyDraft(O.SaveJourneyDraftRequest(name=name, spec=broken), metadata=MD)
    draft = (await c.orchestrator.SaveJourneyDraft(O.SaveJourneyDraftRequest(name=name, spec=spec), metadata=MD)).draft
    assert (list(draft.problems), draft.spec) == ([], spec)
    other = J.JourneySpec()
    other.CopyFrom(spec)
    other.templates["welcome"].subject = "Hello!"
    await publish(c, name, other)
    assert (await c.orchestrator.GetJourneyDraft(O.GetJourneyDraftRequest(name=name), metadata=MD)).draft.spec == spec
    await publish(c, name, spec)
    code, _, reason = await _refusal(c.orchestrator.GetJourneyDraft(O.GetJourneyDraftRequest(name=name), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "DRAFT_NOT_FOUND")


async def test_concurrent_first_saves_of_a_draft_keep_one_draft(world: World) -> None:
    """Eight concurrent saves of a new journey's first draft all succeed and leave one draft, holding one of the saved versions."""
    c, _ = world
    specs = [delay_journey(("wait", "delay"), ("done", "exit"), description=f"take {i}") for i in range(8)]
    saved = await asyncio.gather(*(c.orchestrator.SaveJourneyDraft(O.SaveJourneyDraftRequest(name="trial", spec=spec), metadata=MD)
                                   for spec in specs))
    assert sorted(r.draft.spec.description for r in saved) == sorted(s.description for s in specs)
    kept = (await c.orchestrator.GetJourneyDraft(O.GetJourneyDraftRequest(name="trial"), metadata=MD)).draft
    assert kept.spec in specs
    async with orchestrator_app(c).db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(journey_drafts))).scalar_one() == 1


async def test_a_draft_saved_while_the_rules_service_is_down_warns_that_its_rule_set_was_not_checked(
    make_settings: Callable[..., Settings],
) -> None:
    """With the rules service unreachable a draft is still saved, with a NOT_CHECKED warning at spec.rule_set instead of a problem."""
    settings = make_settings(rules_address=f"127.0.0.1:{free_port()}", rpc_timeout_seconds=0.5)
    async with serving(OrchestratorApp(settings), settings) as address, grpc.aio.insecure_channel(address) as channel:
        from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

        name, spec = example_journey()
        stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
        draft = (await stub.SaveJourneyDraft(O.SaveJourneyDraftRequest(name=name, spec=spec), metadata=MD)).draft
    assert list(draft.problems) == []
    assert [(w.field, w.reason) for w in draft.warnings] == [("spec.rule_set", "NOT_CHECKED")]


async def test_a_long_journey_is_warned_about_by_its_draft_and_by_publish(world: World) -> None:
    """A journey of 51 action steps is saved as a draft and published, both with the MANY_ACTIONS warning at spec.steps and no problem."""
    c, _ = world
    spec = delay_journey(("done", "exit"))
    del spec.steps[:]
    for i in range(51):
        spec.steps.add(id=f"tag-{i}", next=f"tag-{i + 1}" if i < 50 else "done").update_profile.add_tags.append(f"t{i}")
    spec.steps.add(id="done").exit.SetInParent()
    draft = (await c.orchestrator.SaveJourneyDraft(O.SaveJourneyDraftRequest(name="long", spec=spec), metadata=MD)).draft
    published = await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="long", spec=spec, reason="r"), metadata=MD)
    for item in (draft, published):
        assert [(w.field, w.reason) for w in item.warnings] == [("spec.steps", "MANY_ACTIONS")]
    assert list(draft.problems) == []


# -- versions ----------------------------------------------------------------


async def test_versions_are_listed_newest_first_page_by_page(world: World) -> None:
    """ListJourneyVersions pages through every published version newest first; an unchanged publish adds none; only the latest is active."""
    c, _ = world
    for days in (1, 2, 3):
        spec = delay_journey(("wait", "delay"), ("done", "exit"), description=f"v{days}")
        await publish(c, "trial", spec, reason=f"version {days}")
    await publish(c, "trial", spec)
    first = await c.orchestrator.ListJourneyVersions(O.ListJourneyVersionsRequest(name="trial", page_size=2), metadata=MD)
    rest = await c.orchestrator.ListJourneyVersions(
        O.ListJourneyVersionsRequest(name="trial", page_size=2, page_token=first.next_page_token), metadata=MD)
    assert [j.version for j in first.journeys] == [3, 2] and first.next_page_token
    assert [j.version for j in rest.journeys] == [1] and not rest.next_page_token
    assert [(j.reason, j.state) for j in [*first.journeys, *rest.journeys]] == [
        ("version 3", J.JOURNEY_STATE_ACTIVE), ("version 2", J.JOURNEY_STATE_SUPERSEDED), ("version 1", J.JOURNEY_STATE_SUPERSEDED)]
    assert first.journeys[1].spec.description == "v2"


# -- archive -----------------------------------------------------------------


async def test_archiving_cancels_live_runs_and_their_timers_with_the_reason_and_keeps_their_history(world: World) -> None:
    """ArchiveJourney cancels every waiting run with the reason, deletes their timers so nothing fires later, keeps their steps, and counts them."""
    c, clock = world
    await publish(c, "trial", delay_journey(("wait", "delay"), ("done", "exit")))
    await publish(c, "other", delay_journey(("wait", "delay"), ("done", "exit"), event_type="other.started"))
    runs = await waiting_runs(c, "trial", ["ann", "ben", "cat"])
    (bystander,) = await waiting_runs(c, "other", ["dan"])
    async with orchestrator_app(c).db.begin() as conn:  # an inactivity timer of the journey (its trigger's own timer)
        await conn.execute(inactivity.insert().values(tenant=TENANT, journey="trial", subject_id="eve", due_time=clock.now(),
                                                      fire_time=clock.now()))
    archived = await c.orchestrator.ArchiveJourney(O.ArchiveJourneyRequest(name="trial", reason="campaign over"), metadata=MD)
    assert (archived.cancelled_runs, archived.journey.state, archived.journey.version) == (3, J.JOURNEY_STATE_ARCHIVED, 1)
    for before in runs:
        after = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=before.run_id), metadata=MD)).run
        assert (after.state, after.cancel_reason) == (run_pb2.RUN_STATE_CANCELLED, "journey archived: campaign over")
        assert [s.step_id for s in after.steps] == ["wait"]  # the history is kept
    async with orchestrator_app(c).db.connect() as conn:
        left = (await conn.execute(sa.select(tokens.c.run_id))).scalars().all()
    assert left == [bystander.run_id]  # no timer of the archived journey is left to fire
    async with orchestrator_app(c).db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(inactivity))).scalar_one() == 0
    stats = (await c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name="trial"), metadata=MD)).stats
    assert (stats.entered, stats.cancelled, stats.active) == (3, 3, 0)
    assert [(s.step_id, s.waiting) for s in stats.steps] == [("wait", 0)]
    clock.advance(dt.timedelta(days=2))
    assert (await c.orchestrator.GetRun(O.GetRunRequest(run_id=runs[0].run_id), metadata=MD)).run.state == run_pb2.RUN_STATE_CANCELLED
    listed = (await c.orchestrator.ListJourneys(O.ListJourneysRequest(), metadata=MD)).journeys
    assert {j.name: j.state for j in listed} == {"other": J.JOURNEY_STATE_ACTIVE, "trial": J.JOURNEY_STATE_ARCHIVED}


async def test_an_archived_journey_starts_nothing_until_a_new_version_revives_it(world: World) -> None:
    """After archive, events and Trigger start no run, resume is refused and pause changes nothing; publishing (even the same content) makes a new active version that starts runs."""
    c, _ = world
    spec = delay_journey(("wait", "delay"), ("done", "exit"))
    await publish(c, "trial", spec)
    await c.orchestrator.ArchiveJourney(O.ArchiveJourneyRequest(name="trial", reason="retired"), metadata=MD)
    assert await _started(c, "trial.started", "ann", "e-1") == 0
    code, _, reason = await _refusal(c.orchestrator.Trigger(O.TriggerRequest(journey="trial", subject_id="ann"), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOURNEY_ARCHIVED")
    code, _, reason = await _refusal(c.orchestrator.ResumeJourney(O.ResumeJourneyRequest(name="trial", reason="oops"), metadata=MD))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOURNEY_ARCHIVED")
    paused = (await c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="trial", reason="x"), metadata=MD)).journey
    assert paused.state == J.JOURNEY_STATE_ARCHIVED
    revived = await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="trial", spec=spec, reason="back"), metadata=MD)
    assert (revived.unchanged, revived.journey.version, revived.journey.state) == (False, 2, J.JOURNEY_STATE_ACTIVE)
    assert revived.journey.digest == (await c.orchestrator.GetJourney(O.GetJourneyRequest(name="trial", version=1), metadata=MD)).journey.digest
    assert await _started(c, "trial.started", "ann", "e-2") == 1


async def test_archive_and_revival_are_audited_once_with_actor_reason_and_count(world: World) -> None:
    """The audit log gets one JOURNEY_ARCHIVED entry with the actor, the reason and the cancelled runs (archiving again records nothing), and the reviving publish says so."""
    c, _ = world
    spec = delay_journey(("wait", "delay"), ("done", "exit"))
    await publish(c, "trial", spec)
    await waiting_runs(c, "trial", ["ann", "ben"])
    await c.orchestrator.ArchiveJourney(O.ArchiveJourneyRequest(name="trial", reason="campaign over"), metadata=MD)
    again = await c.orchestrator.ArchiveJourney(O.ArchiveJourneyRequest(name="trial", reason="twice"), metadata=MD)
    assert again.cancelled_runs == 0
    await c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="trial", reason="x"), metadata=MD)
    await publish(c, "trial", spec, reason="back for summer")
    (entry,) = await audit_entries(c, A.AUDIT_ACTION_JOURNEY_ARCHIVED)
    assert (entry.actor, entry.reason, entry.target) == ("alice@acme", "campaign over", "journey/trial")
    assert struct_to_dict(entry.details) == {"journey": "trial", "latest_version": "1", "previous_state": "active", "cancelled_runs": "2"}
    assert await audit_entries(c, A.AUDIT_ACTION_JOURNEY_PAUSED) == []
    revival = (await audit_entries(c, A.AUDIT_ACTION_JOURNEY_VERSION_PUBLISHED))[-1]
    assert (revival.target, revival.reason) == ("journey/trial/2", "back for summer")
    assert struct_to_dict(revival.details)["revived"] == "archived"


async def test_pausing_keeps_the_reason_on_each_cancelled_run(world: World) -> None:
    """Runs cancelled by PauseJourney carry the pause's reason."""
    c, _ = world
    await publish(c, "trial", delay_journey(("wait", "delay"), ("done", "exit")))
    (run,) = await waiting_runs(c, "trial", ["ann"])
    await c.orchestrator.PauseJourney(O.PauseJourneyRequest(name="trial", reason="copy review"), metadata=MD)
    after = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=run.run_id), metadata=MD)).run
    assert (after.state, after.cancel_reason) == (run_pb2.RUN_STATE_CANCELLED, "journey paused: copy review")
