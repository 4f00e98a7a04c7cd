"""OVERTURE_WORKERS: one ``overture serve`` runs N worker processes on the
same gRPC and HTTP ports, which answer alike, drain together on SIGTERM,
and stop together when one of them dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture_runtime.clients import wait_until_serving
from overture_runtime.testing import free_port
from tests.conftest import ADMIN_TOKEN, REDIS_URL, SERVICE_TOKEN, TOKENS, admin_metadata

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    """The processes whose parent is *pid*."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _workers(pid: int) -> list[int]:
    """The worker processes of the supervisor *pid* (not multiprocessing's helpers)."""
    return [child for child in _children(pid) if b"from multiprocessing.spawn import spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


@contextlib.asynccontextmanager
async def _ingest(database_url: str, redis_namespace: str, tmp_path: Path, workers: int) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, int]]:
    """``overture serve ingest`` with *workers*; yields the supervisor, the gRPC address and the HTTP port; kills what is left after."""
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, OVERTURE_REDIS_NAMESPACE=redis_namespace, OVERTURE_WORKERS=str(workers),
               OVERTURE_AUTH_TOKENS=json.dumps(TOKENS), OVERTURE_SERVICE_TOKEN=SERVICE_TOKEN,
               OVERTURE_INGEST_GRPC_PORT=str(port), OVERTURE_INGEST_HTTP_PORT=str(http_port), OVERTURE_INGEST_METRICS_PORT="0",
               OVERTURE_RULES_ADDRESS="127.0.0.1:1", OVERTURE_ORCHESTRATOR_ADDRESS="127.0.0.1:1", OVERTURE_SHUTDOWN_GRACE_SECONDS="2")
    with (tmp_path / "ingest.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "overture_cli.main", "serve", "ingest"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            address = f"127.0.0.1:{port}"
            assert await wait_until_serving(address), (tmp_path / "ingest.log").read_text()[-3000:]
            for _ in range(100):  # every worker up, not only the first
                if len(_workers(proc.pid)) == workers:
                    break
                await asyncio.sleep(0.1)
            yield proc, address, http_port
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 30)


async def test_workers_share_the_ports_and_drain_together(database_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """Two workers serve one gRPC and one HTTP port, each event is stored once whichever worker took it, and SIGTERM stops all with code 0."""
    async with _ingest(database_url, redis_namespace, tmp_path, workers=2) as (proc, address, http_port):
        workers = _workers(proc.pid)
        assert len(workers) == 2
        statuses = set()
        for i in range(20):  # new channels land on either worker
            async with grpc.aio.insecure_channel(address) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                statuses.add(health.status)
                ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
                request = ingest_service_pb2.IngestEventsRequest()
                request.events.add(event_id=f"w-{i}", event_type="item.viewed", subject_id="s")
                reply = await ingest.IngestEvents(request, metadata=admin_metadata())
                assert reply.results[0].status == ingest_service_pb2.EVENT_RESULT_STATUS_ACCEPTED
        assert statuses == {health_pb2.HealthCheckResponse.SERVING}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            for i in range(10):
                answer = await http.post("/automation/events", json={"event_type": "item.viewed", "subject_id": "s", "event_id": f"w-{i}"})
                assert answer.status_code == 202 and answer.json()["status"] == "duplicate", answer.text
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]


async def test_a_worker_that_dies_stops_the_service(database_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """When one worker is killed, the supervisor stops the others and exits non-zero, so the service restarts as a whole."""
    async with _ingest(database_url, redis_namespace, tmp_path, workers=2) as (proc, _, _):
        first, second = _workers(proc.pid)
        os.kill(first, signal.SIGKILL)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code != 0
    for _ in range(50):
        if not Path(f"/proc/{second}").exists():
            break
        await asyncio.sleep(0.1)
    assert not Path(f"/proc/{second}").exists()
