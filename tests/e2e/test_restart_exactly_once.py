"""Guarantee 2 across a restart that loses the stream: the four services as
separate processes on a private redis-server, a real SMTP server (aiosmtpd)
that refuses one recipient for good, a journey republished as a new version,
then Redis restarted empty so that ingest republishes the log."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc, run_pb2
from overture.rules.v1 import rules_service_pb2 as rules
from overture.rules.v1 import rules_service_pb2_grpc
from overture_runtime.testing import free_port
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set

from .processes import service_processes

pytestmark = pytest.mark.e2e
MD = admin_metadata()


class _Recipients:
    """An SMTP handler that counts messages per recipient and refuses one address for good (550)."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.received: collections.Counter[str] = collections.Counter()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address == self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for address in envelope.rcpt_tos:
            self.received[address] += 1
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[_Recipients, int]]:
    handler = _Recipients(refused="carol@example.com")
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def _event(event_type: str, subject: str, event_id: str = "", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def _consumed(url: str, namespace: str) -> bool:
    """Whether the orchestrator's consumer group has read and acknowledged every entry of every partition."""
    client = aioredis.Redis.from_url(url)
    try:
        streams = [k async for k in client.scan_iter(match=f"{namespace}:stream:events:*", _type="stream")]
        if not streams:
            return False
        for stream in streams:
            groups = await client.xinfo_groups(stream)
            group = next((g for g in groups if g["name"] == b"orchestrator"), None)
            if group is None or group["pending"] or group.get("lag"):
                return False
        return True
    finally:
        await client.aclose()


async def test_a_restart_that_loses_the_stream_sends_nothing_twice(
    database_url: str, redis_namespace: str, throwaway_redis: Callable[[], str], smtp: tuple[_Recipients, int], tmp_path: Path,
) -> None:
    """After a send and a dead-lettered run, republishing the journey and restarting with an empty Redis (so that
    the log is republished) starts no run and sends no email a second time."""
    handler, smtp_port = smtp
    url = throwaway_redis()
    env = {"REDIS_URL": url}

    async def runs_of(stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, subject: str) -> list[run_pb2.Run]:
        return list((await stub.ListRuns(orch.ListRunsRequest(subject_id=subject), metadata=MD)).runs)

    async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=smtp_port,
                                 log_dir=tmp_path / "logs-1", extra_env=env) as addr:
        async with grpc.aio.insecure_channel(addr["rules"]) as rc, grpc.aio.insecure_channel(addr["orchestrator"]) as oc, \
                grpc.aio.insecure_channel(addr["ingest"]) as ic:
            rules_stub = rules_service_pb2_grpc.RulesServiceStub(rc)
            orch_stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(oc)
            ingest_stub = ingest_service_pb2_grpc.IngestServiceStub(ic)
            name, spec = example_rule_set()
            created = await rules_stub.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="e2e"), metadata=MD)
            await rules_stub.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
                rule_set=name, version=created.rule_set_version.version, reason="e2e"), metadata=MD)
            journey_name, journey = example_journey()
            for step in journey.steps:
                if step.HasField("send"):
                    step.retry.max_attempts = 1  # carol's refused address dead-letters at once
            await orch_stub.PublishJourney(orch.PublishJourneyRequest(name=journey_name, spec=journey, reason="v1"), metadata=MD)
            people = []
            for subject in ("alice", "carol"):
                people += [_event("identify", subject, traits={"email": f"{subject}@example.com", "first_name": subject.title()}),
                           _event("consent.granted", subject, channel="email", purpose="marketing")]
            await ingest_stub.IngestEvents(ingest.IngestEventsRequest(events=people), metadata=MD)
            await ingest_stub.IngestEvents(ingest.IngestEventsRequest(events=[
                _event("user.signed_up", "alice", "restart-signup-alice"), _event("user.signed_up", "carol", "restart-signup-carol"),
            ]), metadata=MD)

            async def ended(subject: str) -> run_pb2.Run | None:
                found = await runs_of(orch_stub, subject)
                return found[0] if found and found[0].state in (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED) else None

            assert (await eventually(lambda: ended("alice"), what="alice's run")).state == run_pb2.RUN_STATE_COMPLETED
            assert (await eventually(lambda: ended("carol"), what="carol's run")).state == run_pb2.RUN_STATE_FAILED
            letters = (await orch_stub.ListDeadLetters(orch.ListDeadLettersRequest(journey=journey_name), metadata=MD)).runs
            assert len(letters) == 1
            assert handler.received == {"alice@example.com": 1}

            journey.description = "version 2: a new welcome"
            published = await orch_stub.PublishJourney(orch.PublishJourneyRequest(name=journey_name, spec=journey, reason="v2"), metadata=MD)
            assert published.journey.version == 2

    # Redis restarts empty: the stream and the relay's epoch marker are gone, so ingest republishes the recent log.
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=smtp_port,
                                 log_dir=tmp_path / "logs-2", extra_env=env) as addr:
        await eventually(lambda: _consumed(url, redis_namespace), within=30, what="the republished log to be consumed")
        async with grpc.aio.insecure_channel(addr["orchestrator"]) as oc:
            orch_stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(oc)
            for subject in ("alice", "carol"):
                found = await runs_of(orch_stub, subject)
                assert [r.journey_version for r in found] == [1], (subject, found)
    assert handler.received == {"alice@example.com": 1}
