"""Guarantee 2 across a restart that loses the stream: the four services as
separate processes on a private redis-server, a real SMTP server (aiosmtpd)
that refuses one recipient for good, a journey republished as a new version,
then Redis restarted empty so that ingest republishes the log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc, run_pb2
from tests.thinpath import eventually

from .harness import MD, RecordingSMTP, ingest_all, people, publish_journey, publish_tour, recording_smtp, signups
from .processes import service_processes

pytestmark = pytest.mark.e2e


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingSMTP, int]]:
    with recording_smtp(refused=frozenset({"carol@example.com"})) as running:
        yield running


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
    database_url: str, redis_namespace: str, throwaway_redis: Callable[[], str], smtp: tuple[RecordingSMTP, int], tmp_path: Path,
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
        async with grpc.aio.insecure_channel(addr["orchestrator"]) as oc:
            orch_stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(oc)
            await publish_tour(addr, max_attempts=1)  # carol's refused address dead-letters at once
            journey_name = "welcome"
            await ingest_all(addr, people(["alice", "carol"]))
            await ingest_all(addr, signups(["alice", "carol"], "restart-signup"))

            async def ended(subject: str) -> run_pb2.Run | None:
                found = await runs_of(orch_stub, subject)
                return found[0] if found and found[0].state in (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED) else None

            assert (await eventually(lambda: ended("alice"), what="alice's run")).state == run_pb2.RUN_STATE_COMPLETED
            assert (await eventually(lambda: ended("carol"), what="carol's run")).state == run_pb2.RUN_STATE_FAILED
            letters = (await orch_stub.ListDeadLetters(orch.ListDeadLettersRequest(journey=journey_name), metadata=MD)).runs
            assert len(letters) == 1
            assert handler.by_recipient == {"alice@example.com": 1}

            assert await publish_journey(oc, max_attempts=1, description="version 2: a new welcome", reason="v2") == 2

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
    assert handler.by_recipient == {"alice@example.com": 1}
