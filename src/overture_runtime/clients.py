"""Calling other Overture services through their generated stubs.

A service calls another with its own service token and names the tenant of
each call in the ``x-overture-tenant`` header; the request id and the trace
context of the current call travel along.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate

from .auth import TENANT_HEADER
from .config import Settings
from .context import current_call

__all__ = ["call_metadata", "open_channel", "wait_until_serving"]

# Retry only UNAVAILABLE: the call did not reach a handler, or its handler
# lost the database (DATABASE_UNAVAILABLE), in which case a change may have
# committed before the connection broke. Mutating RPCs are idempotent on
# their keys (request ids, idempotency keys, decision ids), so a retry
# repeats nothing.
# Calls are spread round-robin over every address the name resolves to: with
# a headless Kubernetes Service (dns:///name:port) that is every replica.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(address: str, settings: Settings) -> grpc.aio.Channel:
    """An insecure loopback/cluster channel to *address*, with retries on UNAVAILABLE."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ],
    )


def call_metadata(settings: Settings, tenant: str) -> Sequence[tuple[str, str]]:
    """The metadata of a service-to-service call on behalf of *tenant*."""
    token = settings.service_token.get_secret_value() if settings.service_token else ""
    metadata: dict[str, str] = {"authorization": f"Bearer {token}", TENANT_HEADER: tenant}
    state = current_call()
    if state is not None:
        metadata["x-request-id"] = state.request_id
    propagate.inject(metadata)
    return tuple(metadata.items())


async def wait_until_serving(address: str, *, within: float = 60.0) -> bool:
    """Poll ``grpc.health.v1`` at *address* until it says SERVING; False after *within* seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    return False
