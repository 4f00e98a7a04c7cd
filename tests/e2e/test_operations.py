"""What platform teams rely on, checked against real service processes:
health per service, server reflection, Prometheus metrics, and a clean
drain on SIGTERM (the fixture asserts every process exits 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from tests.conftest import admin_metadata

from .processes import service_processes

pytestmark = pytest.mark.e2e

SERVICES = {
    "ingest": ["overture.ingest.v1.IngestService"],
    "rules": ["overture.rules.v1.RulesService", "overture.rules.v1.ProfileService"],
    "orchestrator": ["overture.orchestrator.v1.OrchestratorService"],
    "connectors": ["overture.connectors.v1.ConnectorService"],
}


def _reflected(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


async def _reflected_v1(address: str, symbol: str) -> tuple[set[str], list[str]]:
    """The services listed over grpc.reflection.v1 (what current grpcurl and
    buf ask for), and the files that define *symbol*."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]))
        replies = [reply async for reply in call]
    listed = {s.name for s in replies[0].list_services_response.service}
    files = [descriptor_pb2.FileDescriptorProto.FromString(f).name for f in replies[1].file_descriptor_response.file_descriptor_proto]
    return listed, files


async def test_health_reflection_and_metrics(database_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """Each process answers grpc.health.v1 per service, lists its services by reflection (v1alpha and v1), and serves RPC metrics."""
    async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=1, log_dir=tmp_path) as running:
        for service, names in SERVICES.items():
            async with grpc.aio.insecure_channel(running[service]) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for name in ["", *names]:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, name)
            reflected = await asyncio.to_thread(_reflected, running[service])
            assert set(names) <= reflected and "grpc.health.v1.Health" in reflected
            listed, files = await _reflected_v1(running[service], names[0])
            assert set(names) <= listed and "grpc.reflection.v1.ServerReflection" in listed
            assert any(f.endswith("_service.proto") for f in files), files

        async with grpc.aio.insecure_channel(running["orchestrator"]) as channel:
            await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListRuns(orch.ListRunsRequest(), metadata=admin_metadata())
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{running.metrics_ports['orchestrator']}/metrics")).text
            ingest_ok = (await client.get(f"http://127.0.0.1:{running.http_port}/healthz")).json()
        assert 'overture_rpc_requests_total{code="OK",method="/overture.orchestrator.v1.OrchestratorService/ListRuns"} 1.0' in metrics
        assert "overture_rpc_duration_seconds_bucket" in metrics
        assert ingest_ok == {"status": "ok"}
