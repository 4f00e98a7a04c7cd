"""The thin path across four separate service processes, real PostgreSQL,
real Redis and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc, run_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2_grpc
from overture.rules.v1 import rules_service_pb2 as rules
from overture_cli.mailsink import MailSink
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set

from .processes import service_processes

pytestmark = pytest.mark.e2e
MD = admin_metadata()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[MailSink]:
    mail = MailSink(tmp_path / "mail", announce=lambda _: None)
    mail.start()
    yield mail
    mail.stop()


def _event(event_type: str, subject: str, event_id: str = "", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def test_thin_path_across_processes(database_url: str, redis_namespace: str, sink: MailSink, tmp_path: Path) -> None:
    """Publish rules and a journey, ingest sign-ups: the consenting subject gets
    one email (a duplicate event sends none), the other is denied for consent."""
    async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=sink.port,
                                 log_dir=tmp_path / "logs") as addr:
        async with grpc.aio.insecure_channel(addr["rules"]) as rc, grpc.aio.insecure_channel(addr["orchestrator"]) as oc, \
                grpc.aio.insecure_channel(addr["ingest"]) as ic:
            rules_stub = rules_service_pb2_grpc.RulesServiceStub(rc)
            orch_stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(oc)
            ingest_stub = ingest_service_pb2_grpc.IngestServiceStub(ic)

            name, spec = example_rule_set()
            created = await rules_stub.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="e2e"), metadata=MD)
            await rules_stub.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
                rule_set=name, version=created.rule_set_version.version, reason="e2e"), metadata=MD)
            name, journey = example_journey()
            await orch_stub.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey, reason="e2e"), metadata=MD)

            await ingest_stub.IngestEvents(ingest.IngestEventsRequest(events=[
                _event("identify", "alice", traits={"email": "alice@example.com", "first_name": "Alice"}),
                _event("consent.granted", "alice", channel="email", purpose="marketing"),
                _event("identify", "bob", traits={"email": "bob@example.com"}),
            ]), metadata=MD)
            signup = _event("user.signed_up", "alice", "e2e-signup-alice", plan="pro")
            for _ in range(2):  # the same event twice: one email
                await ingest_stub.IngestEvents(ingest.IngestEventsRequest(events=[signup]), metadata=MD)
            await ingest_stub.IngestEvents(ingest.IngestEventsRequest(events=[_event("user.signed_up", "bob", "e2e-signup-bob")]), metadata=MD)

            async def completed(subject: str) -> run_pb2.Run | None:
                found = (await orch_stub.ListRuns(orch.ListRunsRequest(subject_id=subject), metadata=MD)).runs
                return found[0] if found and found[0].state == run_pb2.RUN_STATE_COMPLETED else None

            await eventually(lambda: completed("alice"), what="alice's run")
            bob = await eventually(lambda: completed("bob"), what="bob's run")

            async def received() -> list[object]:
                return sink.messages  # type: ignore[return-value]

            mail = await eventually(received, what="the welcome email")
            assert [m["To"] for m in sink.messages] == ["alice@example.com"]  # type: ignore[index]
            assert mail[0]["Subject"] == "Welcome to Overture, Alice!"  # type: ignore[index]
            assert len((await orch_stub.ListRuns(orch.ListRunsRequest(subject_id="alice"), metadata=MD)).runs) == 1

            decision = (await rules_stub.GetDecision(rules.GetDecisionRequest(decision_id=bob.steps[0].decision_id), metadata=MD)).decision
            assert not decision.allowed
            assert [v.id for v in decision.verdicts if v.outcome == decision_pb2.VERDICT_OUTCOME_DENY] == ["email/marketing"]
            assert decision.summary.startswith("denied by consent")
