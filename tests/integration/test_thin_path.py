"""The foundation's thin path through all four services, in one process,
against real PostgreSQL, Redis and an SMTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import decision_pb2
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set

from .cluster import Cluster, running_cluster

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


def _event(event_type: str, subject: str, event_id: str = "", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def publish_tour(c: Cluster) -> None:
    name, spec = example_rule_set()
    created = await c.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="tour"), metadata=MD)
    await c.rules.ActivateRuleSetVersion(
        rules.ActivateRuleSetVersionRequest(rule_set=name, version=created.rule_set_version.version, reason="tour"), metadata=MD)
    name, journey = example_journey()
    await c.orchestrator.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey, reason="tour"), metadata=MD)


async def test_consented_subject_gets_one_email_and_the_other_is_denied_for_consent(cluster: Cluster) -> None:
    """A consenting subject gets exactly one email, even for a repeated event; a
    subject without consent gets none, and GetDecision says consent denied it."""
    c = cluster
    await publish_tour(c)
    setup = [
        _event("identify", "alice", traits={"email": "alice@example.com", "first_name": "Alice", "plan": "pro"}),
        _event("consent.granted", "alice", channel="email", purpose="marketing"),
        _event("identify", "bob", traits={"email": "bob@example.com", "plan": "pro"}),
    ]
    results = (await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=setup), metadata=MD)).results
    assert [r.status for r in results] == [ingest.EVENT_RESULT_STATUS_ACCEPTED] * 3

    signups = [_event("user.signed_up", "alice", "signup-alice", plan="pro"), _event("user.signed_up", "bob", "signup-bob")]
    first = await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=signups), metadata=MD)
    again = await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=signups[:1]), metadata=MD)
    assert [r.status for r in first.results] == [ingest.EVENT_RESULT_STATUS_ACCEPTED] * 2
    assert again.results[0].status == ingest.EVENT_RESULT_STATUS_DUPLICATE

    async def finished(subject: str) -> run_pb2.Run | None:
        runs = (await c.orchestrator.ListRuns(orch.ListRunsRequest(subject_id=subject), metadata=MD)).runs
        return runs[0] if runs and runs[0].state == run_pb2.RUN_STATE_COMPLETED else None

    alice_run = await eventually(lambda: finished("alice"), what="alice's run to complete")
    bob_run = await eventually(lambda: finished("bob"), what="bob's run to complete")

    mail = await eventually(lambda: _async(c.mail.messages), what="the welcome email")
    assert len(mail) == 1
    assert mail[0]["To"] == "alice@example.com"
    assert mail[0]["Subject"] == "Welcome to Overture, Alice!"
    assert "pro plan" in mail[0].get_content()

    # The repeated event started no second run and sent no second email.
    runs = (await c.orchestrator.ListRuns(orch.ListRunsRequest(subject_id="alice"), metadata=MD)).runs
    assert len(runs) == 1
    assert alice_run.steps[0].outcome == "sent"

    step = bob_run.steps[0]
    assert step.state == run_pb2.STEP_RUN_STATE_SKIPPED
    decision = (await c.rules.GetDecision(rules.GetDecisionRequest(decision_id=step.decision_id), metadata=MD)).decision
    assert not decision.allowed
    denying = [v for v in decision.verdicts if v.outcome == decision_pb2.VERDICT_OUTCOME_DENY]
    assert [(v.kind, v.id) for v in denying] == [(decision_pb2.VERDICT_KIND_CONSENT, "email/marketing")]
    assert "consent" in decision.summary
    assert decision.rule_set == "marketing-email" and decision.version == 1 and len(decision.digest) == 64

    event = (await c.ingest.GetEvent(ingest.GetEventRequest(event_id="signup-alice"), metadata=MD)).event
    assert list(event.run_ids) == [alice_run.run_id]


async def _async(value: list[object]) -> list[object]:
    return value
