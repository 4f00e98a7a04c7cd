"""The ingest service application: gRPC and HTTP doors, the relay, and the
retry loop for profile updates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import structlog
import uvicorn

from overture.connectors.v1 import connector_service_pb2_grpc, inbox_service_pb2_grpc
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from overture.rules.v1 import profile_service_pb2_grpc
from overture_runtime import BaseApp
from overture_runtime.auth import TokenTable
from overture_runtime.links import configured_links

from .callback_door import callback_routes
from .feedback_door import feedback_routes
from .http import create_http_app, error_response
from .inbox_stream import inbox_routes
from .link_doors import link_routes
from .log import EventLog, Relay
from .normalize import Limits as EventLimits
from .pipeline import IngestPipeline
from .ratelimit import Limits, RateLimiter
from .servicer import IngestServicer

__all__ = ["IngestApp"]

log = structlog.get_logger("overture.ingest")


class _EmbeddedUvicorn(uvicorn.Server):
    """Uvicorn inside our event loop: the service owns the signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases
        pass


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket on *host*:*port* that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class IngestApp(BaseApp):
    """``overture serve ingest``."""

    name = "ingest"
    service_names = (ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,)
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, *args: object, http_port: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._http_port = http_port
        self._http: _EmbeddedUvicorn | None = None
        self.http_port = 0

    async def on_start(self) -> None:
        s = self.settings
        self.log = EventLog(self.db, self.clock, connections=s.ingest_write_connections)
        self.log.start()
        self.relay = Relay(self.db, self.redis, self.keys, self.clock, republish_horizon=dt.timedelta(hours=s.republish_horizon_hours),
                           profile_hold=dt.timedelta(seconds=s.rpc_timeout_seconds))
        limiter = RateLimiter(
            self.redis, self.keys, default=Limits(rate=s.ingest_rate_per_second, burst=s.ingest_burst, daily_quota=s.ingest_daily_quota),
            per_tenant={t: Limits(rate=v.get("rate", s.ingest_rate_per_second), burst=int(v.get("burst", s.ingest_burst)),
                                  daily_quota=int(v.get("daily_quota", s.ingest_daily_quota))) for t, v in s.ingest_tenant_limits.items()},
        )
        self.pipeline = IngestPipeline(
            log_=self.log, relay=self.relay, clock=self.clock, settings=s, limiter=limiter, aliases=s.event_type_aliases,
            limits=EventLimits(max_age=dt.timedelta(days=s.max_event_age_days)),
            profiles=profile_service_pb2_grpc.ProfileServiceStub(self.channel("rules")),
        )
        self.spawn("relay", lambda: self.relay.run(self.stopping))
        self.spawn("profile-retry", self._retry_profiles)
        self.spawn("retention", self._purge)
        port = self.settings.ingest_http_port if self._http_port is None else self._http_port
        if port >= 0:
            tokens = TokenTable(self.settings.auth_tokens, extra_tenants=self.settings.tenants)
            orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.channel("orchestrator"))
            extra = link_routes(pipeline=self.pipeline, links=configured_links(s), settings=s, clock=self.clock,
                                orchestrator=orchestrator, error_response=error_response)
            extra += inbox_routes(links=configured_links(s), clock=self.clock, settings=s, redis=self.redis, keys=self.keys,
                                  inbox=inbox_service_pb2_grpc.InboxServiceStub(self.channel("connectors")), error_response=error_response)
            connectors = connector_service_pb2_grpc.ConnectorServiceStub(self.channel("connectors"))
            extra += feedback_routes(tokens=tokens, settings=s, error_response=error_response, connectors=connectors)
            extra += callback_routes(settings=s, error_response=error_response, connectors=connectors)
            config = uvicorn.Config(
                create_http_app(pipeline=self.pipeline, tokens=tokens, extra_routes=extra), host=self.settings.host, port=port,
                log_config=None, access_log=False, lifespan="off", limit_concurrency=1000,
            )
            self._http = _EmbeddedUvicorn(config)
            # The workers of OVERTURE_WORKERS share the HTTP port as they share the gRPC one.
            sockets = [_shared_socket(self.settings.host, port)] if self.settings.workers > 1 else None
            self._http_task = asyncio.create_task(self._http.serve(sockets=sockets), name="ingest:http")
            while not self._http.started:
                if self._http_task.done():
                    raise RuntimeError(f"the ingest HTTP server could not start on {self.settings.host}:{port}")
                await asyncio.sleep(0.01)
            self.http_port = self._http.servers[0].sockets[0].getsockname()[1]

    async def _retry_profiles(self) -> None:
        while not self.stopping.is_set():
            await self.pipeline.retry_pending_profiles()
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=5.0)
            except TimeoutError:
                pass

    async def _purge(self) -> None:
        """Delete published events past the retention window, hourly."""
        while not self.stopping.is_set():
            purged = await self.log.purge(older_than=dt.timedelta(days=self.settings.event_retention_days))
            if purged:
                log.info("ingest.purged", events=purged)
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=3600)
            except TimeoutError:
                pass

    def register(self, server: grpc.aio.Server) -> None:
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(pipeline=self.pipeline, log_=self.log, settings=self.settings, clock=self.clock,
                           orchestrator=orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.channel("orchestrator"))),
            server,
        )

    async def on_stop(self) -> None:
        if self._http is not None:
            # Uvicorn stops accepting, finishes in-flight requests, closes its sockets.
            self._http.should_exit = True
            await asyncio.wait_for(self._http_task, timeout=self.settings.shutdown_grace_seconds + 5)
        await self.log.close()
        await self.relay.close()
