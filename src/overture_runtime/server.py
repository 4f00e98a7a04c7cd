"""The one bootstrap every Overture service starts through.

:func:`serve` builds a ``grpc.aio`` server with the shared interceptors,
``grpc.health.v1`` health, server reflection (v1 and v1alpha) and a Prometheus ``/metrics``
port, starts the service's own resources, and on SIGTERM or SIGINT drains:
health turns NOT_SERVING, in-flight RPCs get ``shutdown_grace_seconds`` to
finish, then the service's resources close.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Sequence
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import start_http_server

from .auth import TokenTable
from .config import Settings
from .interceptors import default_interceptors

__all__ = ["Server", "ServiceApp", "serve"]

log = structlog.get_logger("overture.server")


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""Current grpcurl and buf ask for v1; grpcio-reflection serves only v1alpha."""


def _serve_reflection_v1(names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve ``grpc.reflection.v1`` with the v1alpha servicer: the two
    protocols' messages are the same on the wire (v1 renamed the package)."""
    servicer = reflection_aio.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    })
    server.add_generic_rpc_handlers((handler,))


class ServiceApp(Protocol):
    """What a service gives the bootstrap."""

    @property
    def name(self) -> str:
        """The service's short name, for example ``rules``."""

    @property
    def service_names(self) -> Sequence[str]:
        """The full names of the gRPC services it serves."""

    async def start(self) -> None:
        """Open databases and clients, run migrations, start background work."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to *server*."""

    async def stop(self) -> None:
        """Stop background work and close resources. Called after the drain."""


class Server:
    """One running service: its gRPC server, health, reflection and metrics."""

    def __init__(self, app: ServiceApp, settings: Settings, *, port: int | None = None, metrics_port: int | None = None) -> None:
        self.app = app
        self.settings = settings
        self._port = port
        self._metrics_port = metrics_port
        self._health = health.aio.HealthServicer()
        self._metrics_server: object | None = None
        self.port = 0
        self._tokens = TokenTable(settings.auth_tokens, extra_tenants=settings.tenants)
        self._server: grpc.aio.Server

    async def start(self) -> int:
        """Start the service and its server; return the bound gRPC port."""
        settings = self.settings
        self._server = grpc.aio.server(
            interceptors=default_interceptors(tokens=self._tokens, domain=f"{self.app.name}.overture.dev",
                                              rpc_log_per_second=settings.rpc_log_per_second),
            # Past this many RPCs in flight, new ones are refused with
            # RESOURCE_EXHAUSTED instead of queueing without bound.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Off, so that a second copy fails to bind instead of silently
                # sharing the port; on for the workers of OVERTURE_WORKERS.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ],
        )
        await self.app.start()
        self.app.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = (*self.app.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
        reflection.enable_server_reflection(names, self._server)
        _serve_reflection_v1(names, self._server)
        port = self.settings.grpc_port(self.app.name) if self._port is None else self._port  # type: ignore[arg-type]
        self.port = self._server.add_insecure_port(f"{self.settings.host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.host}:{port}")
        await self._server.start()
        metrics_port = self.settings.metrics_port(self.app.name) if self._metrics_port is None else self._metrics_port  # type: ignore[arg-type]
        if metrics_port and self.settings.worker_index:
            metrics_port += self.settings.worker_index  # one scrape target per worker process
        if metrics_port:
            self._metrics_server, _ = start_http_server(metrics_port, addr=self.settings.host)
        for name in ("", *self.app.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("server.started", service=self.app.name, port=self.port, metrics_port=metrics_port or None,
                 worker=self.settings.worker_index)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, let in-flight RPCs finish, close resources."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        await self.app.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        log.info("server.stopped", service=self.app.name)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self._server.wait_for_termination()


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between collections of the youngest generation (CPython's default is 700)."""


def settle_heap() -> None:
    """Once a service has started, take what start-up allocated (modules,
    descriptors, compiled plans, pools: it lives as long as the process) out
    of the cyclic collector's sight with :func:`gc.freeze`, and collect the
    youngest generation less often. Requests allocate many short-lived
    objects, nearly all freed by reference counting; with CPython's defaults
    the collector ran every 700 of them and walked the whole start-up heap
    (130,000 objects) in each full collection: a tenth of ingest's CPU at
    batches of 1,000."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def serve(app: ServiceApp, settings: Settings) -> None:
    """Run *app* until SIGTERM or SIGINT, then drain gracefully.

    The handlers are installed before start-up (migrations included): as PID 1
    in a container, a process without a handler would ignore SIGTERM. A stop
    requested during start-up lets the start (and a running migration) finish
    and then drains at once."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = Server(app, settings)
    await server.start()
    settle_heap()
    await stopping.wait()
    log.info("server.draining", service=app.name, grace_seconds=settings.shutdown_grace_seconds)
    await server.stop()
