"""Starting the four services as separate processes, the way they deploy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from overture_runtime.config import SERVICES
from overture_runtime.testing import free_port
from tests.conftest import REDIS_URL, SERVICE_TOKEN, TOKENS


async def wait_healthy(address: str, *, within: float = 60.0) -> None:
    """Wait until the gRPC health service at *address* says SERVING."""
    deadline = asyncio.get_running_loop().time() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{address} did not become healthy")
            await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Running:
    """The service processes' addresses and ports."""

    addresses: dict[str, str]
    metrics_ports: dict[str, int]
    http_port: int

    def __getitem__(self, service: str) -> str:
        return self.addresses[service]


@contextlib.asynccontextmanager
async def service_processes(
    *, database_url: str, redis_namespace: str, smtp_port: int, log_dir: Path, extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Running]:
    """Run `overture serve <svc>` for each service; yield their addresses."""
    ports = {svc: free_port() for svc in SERVICES}
    metrics = {svc: free_port() for svc in SERVICES}
    http_port = free_port()
    addresses = {svc: f"127.0.0.1:{port}" for svc, port in ports.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=database_url, REDIS_URL=REDIS_URL, OVERTURE_REDIS_NAMESPACE=redis_namespace,
        OVERTURE_AUTH_TOKENS=json.dumps(TOKENS), OVERTURE_SERVICE_TOKEN=SERVICE_TOKEN,
        OVERTURE_SMTP_HOST="127.0.0.1", OVERTURE_SMTP_PORT=str(smtp_port), OVERTURE_STREAM_PARTITIONS="4",
        OVERTURE_INGEST_HTTP_PORT=str(http_port), OVERTURE_SHUTDOWN_GRACE_SECONDS="2",
    )
    for svc in SERVICES:
        env[f"OVERTURE_{svc.upper()}_GRPC_PORT"] = str(ports[svc])
        env[f"OVERTURE_{svc.upper()}_ADDRESS"] = addresses[svc]
        env[f"OVERTURE_{svc.upper()}_METRICS_PORT"] = str(metrics[svc])
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = contextlib.ExitStack()
    try:
        for svc in SERVICES:
            log = logs.enter_context((log_dir / f"{svc}.log").open("wb"))
            processes[svc] = subprocess.Popen([sys.executable, "-m", "overture_cli.main", "serve", svc], env=env, stdout=log, stderr=subprocess.STDOUT)
        await asyncio.gather(*(wait_healthy(a) for a in addresses.values()))
        yield Running(addresses=addresses, metrics_ports=metrics, http_port=http_port)
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for svc, proc in processes.items():
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"{svc} did not stop on SIGTERM") from None
        logs.close()
    drained = {svc: proc.returncode for svc, proc in processes.items()}
    assert all(code == 0 for code in drained.values()), f"services did not drain cleanly: {drained}"
