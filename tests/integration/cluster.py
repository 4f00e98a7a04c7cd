"""All four services in this process, on real PostgreSQL and Redis, with a
real SMTP sink: the fixture integration tests share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from overture.connectors.v1 import connector_service_pb2_grpc
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from overture.rules.v1 import profile_service_pb2_grpc, rules_service_pb2_grpc
from overture_cli.mailsink import MailSink
from overture_connectors import ConnectorsApp
from overture_ingest import IngestApp
from overture_orchestrator import OrchestratorApp
from overture_rules import RulesApp
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.testing import free_port, serving


@dataclass
class Cluster:
    """Stubs to the four services and the mail they sent."""

    ingest: ingest_service_pb2_grpc.IngestServiceStub
    rules: rules_service_pb2_grpc.RulesServiceStub
    profiles: profile_service_pb2_grpc.ProfileServiceStub
    orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub
    connectors: connector_service_pb2_grpc.ConnectorServiceStub
    mail: MailSink
    addresses: dict[str, str]
    http: str
    """The ingest HTTP base URL."""
    apps: dict[str, Any]
    """The four applications, by service name, for tests that look inside."""


@contextlib.asynccontextmanager
async def running_cluster(
    make_settings: Callable[..., Settings], mail_dir: Path, *, mail_up: bool = True, orchestrator_clock: Clock | None = None,
    ingest_clock: Clock | None = None, **ingest_overrides: Any,
) -> AsyncIterator[Cluster]:
    """Start rules and connectors, then the orchestrator (on *orchestrator_clock*
    when given, for timers), then ingest (on *ingest_clock* when given: it
    stamps the events' times, which inactivity timers count from). With
    *mail_up* false the SMTP sink's port is chosen but nothing listens yet
    (``cluster.mail.start()`` brings it up)."""
    sink = MailSink(mail_dir, announce=lambda _: None)
    if mail_up:
        sink.start()
    try:
        base = make_settings(smtp_port=sink.port)
        async with contextlib.AsyncExitStack() as stack:
            apps: dict[str, Any] = {"rules": RulesApp(base)}
            rules = await stack.enter_async_context(serving(apps["rules"], base))
            ingest_port, orchestrator_port = free_port(), free_port()
            known = base.model_copy(update={"rules_address": rules, "orchestrator_address": f"127.0.0.1:{orchestrator_port}",
                                            "ingest_address": f"127.0.0.1:{ingest_port}"})
            apps["connectors"] = ConnectorsApp(known)
            connectors = await stack.enter_async_context(serving(apps["connectors"], known))
            linked = known.model_copy(update={"connectors_address": connectors})
            apps["orchestrator"] = OrchestratorApp(linked, clock=orchestrator_clock)
            orchestrator = await stack.enter_async_context(serving(apps["orchestrator"], linked, port=orchestrator_port))
            linked = linked.model_copy(update={"orchestrator_address": orchestrator, "ingest_http_port": 0, **ingest_overrides})
            ingest_app = apps["ingest"] = IngestApp(linked, clock=ingest_clock)
            ingest = await stack.enter_async_context(serving(ingest_app, linked, port=ingest_port))
            channels = {name: await stack.enter_async_context(grpc.aio.insecure_channel(addr))
                        for name, addr in (("ingest", ingest), ("rules", rules), ("orchestrator", orchestrator), ("connectors", connectors))}
            yield Cluster(
                ingest=ingest_service_pb2_grpc.IngestServiceStub(channels["ingest"]),
                rules=rules_service_pb2_grpc.RulesServiceStub(channels["rules"]),
                profiles=profile_service_pb2_grpc.ProfileServiceStub(channels["rules"]),
                orchestrator=orchestrator_service_pb2_grpc.OrchestratorServiceStub(channels["orchestrator"]),
                connectors=connector_service_pb2_grpc.ConnectorServiceStub(channels["connectors"]),
                mail=sink,
                addresses={"ingest": ingest, "rules": rules, "orchestrator": orchestrator, "connectors": connectors},
                http=f"http://127.0.0.1:{ingest_app.http_port}",
                apps=apps,
            )
    finally:
        if sink.running:
            sink.stop()
