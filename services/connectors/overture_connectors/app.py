"""The connectors service application."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import (
    connector_service_pb2,
    connector_service_pb2_grpc,
    inbox_service_pb2,
    inbox_service_pb2_grpc,
    push_service_pb2,
    push_service_pb2_grpc,
)
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from overture.rules.v1 import audit_service_pb2_grpc, profile_service_pb2_grpc
from overture_runtime import BaseApp
from overture_runtime.audit_outbox import AuditForwarder
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.idempotency import Idempotency
from overture_runtime.links import configured_links

from .callbacks import CallbackIntake
from .deliveries import DeliveryService
from .feedback import FeedbackIntake
from .feedback_smtp import FeedbackSmtpServer
from .inbox import Inbox
from .inbox_servicer import InboxServicer
from .plugin import Connector, ConnectorContext
from .push_servicer import PushConfig, PushServicer
from .push_store import PushSubscriptions
from .ratelimit import RateLimiter
from .registry import build, configure
from .reports import StatusReporter
from .resolutions import Resolutions
from .servicer import ConnectorServicer
from .store import DeliveryStore
from .sweeper import Sweeper
from .tables import audit_outbox, idempotency
from .web_push import WebPushConnector

__all__ = ["ConnectorsApp"]


class ConnectorsApp(BaseApp):
    """``overture serve connectors``.

    The providers and routes are checked when the app is made, so a wrong
    ``OVERTURE_CONNECTOR_PROVIDERS`` stops the service before it serves
    (:class:`~.registry.ProviderConfigError`, every problem listed).
    """

    name = "connectors"
    service_names = (connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,
                     inbox_service_pb2.DESCRIPTOR.services_by_name["InboxService"].full_name,
                     push_service_pb2.DESCRIPTOR.services_by_name["PushService"].full_name)
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        super().__init__(settings, clock=clock)
        self.providers, self.routes = configure(settings)

    def connectors(self) -> dict[str, Connector]:
        """A connector for each configured provider, by name."""
        context = ConnectorContext(settings=self.settings, clock=self.clock, ids=self.ids, keys=self.keys, db=self.db,
                                   redis=self.redis, channel=self.channel)
        return build(self.providers, context)

    async def on_start(self) -> None:
        limited = any(p.config.rate_limit_per_second > 0 for p in self.providers)
        limiter = RateLimiter(self.redis if limited else None, self.keys, self.clock)
        s = self.settings
        self.deliveries = DeliveryService(self.db, self.connectors(), self.routes, self.clock, self.ids,
                                          concurrency=s.connector_concurrency, limiter=limiter,
                                          providers={p.config.name: p.config for p in self.providers},
                                          stale_claim=dt.timedelta(seconds=s.connector_stale_claim_seconds),
                                          recheck=dt.timedelta(seconds=s.connector_recheck_seconds) if s.connector_recheck_attempts else None)
        self.audit = AuditForwarder(db=self.db, table=audit_outbox, audit=audit_service_pb2_grpc.AuditServiceStub(self.channel("rules")),
                                    settings=self.settings)
        self.reporter = StatusReporter(db=self.db, orchestrator=orchestrator_service_pb2_grpc.OrchestratorServiceStub(
            self.channel("orchestrator")), settings=self.settings)
        self.resolutions = Resolutions(self.db, self.clock, self.ids, audit=self.audit, reporter=self.reporter)
        self.callbacks = CallbackIntake(db=self.db, connectors=self.deliveries.connectors, clock=self.clock, ids=self.ids,
                                        reporter=self.reporter)
        self.spawn("audit-outbox", lambda: self.audit.run(self.stopping))
        self.spawn("status-reports", lambda: self.reporter.run(self.stopping))
        self.sweeper = Sweeper(db=self.db, connectors=self.deliveries.connectors, dispatcher=self.deliveries.dispatcher, clock=self.clock,
                               ids=self.ids, settings=self.settings, reporter=self.reporter)
        self.spawn("sweeper", lambda: self.sweeper.run(self.stopping))
        self.feedback = FeedbackIntake(store=DeliveryStore(self.db), settings=self.settings,
                                       orchestrator=orchestrator_service_pb2_grpc.OrchestratorServiceStub(self.channel("orchestrator")),
                                       profiles=profile_service_pb2_grpc.ProfileServiceStub(self.channel("rules")),
                                       ingest=ingest_service_pb2_grpc.IngestServiceStub(self.channel("ingest")))
        self.feedback_smtp: FeedbackSmtpServer | None = None
        if self.settings.feedback_smtp_port >= 0:
            self.feedback_smtp = FeedbackSmtpServer(self.feedback, host=self.settings.host, port=self.settings.feedback_smtp_port)
            await self.feedback_smtp.start()

    async def on_stop(self) -> None:
        if self.feedback_smtp is not None:
            await self.feedback_smtp.close()
        await self.deliveries.close()

    def register(self, server: grpc.aio.Server) -> None:
        servicer = ConnectorServicer(deliveries=self.deliveries, resolutions=self.resolutions,
                                     idempotency=Idempotency(self.db, idempotency, self.clock), feedback=self.feedback,
                                     callbacks=self.callbacks)
        connector_service_pb2_grpc.add_ConnectorServiceServicer_to_server(servicer, server)
        inbox = Inbox(self.db, self.redis, self.keys, self.clock, self.ids)
        inbox_service_pb2_grpc.add_InboxServiceServicer_to_server(
            InboxServicer(inbox=inbox, links=configured_links(self.settings), clock=self.clock), server)
        push_service_pb2_grpc.add_PushServiceServicer_to_server(
            PushServicer(subscriptions=PushSubscriptions(self.db), config=self.push_config(), clock=self.clock), server)

    def push_config(self) -> PushConfig | None:
        """The public push configuration: that of the push route's first web_push provider, if any."""
        for name in self.deliveries.routes.get(messaging_pb2.CHANNEL_PUSH, ()):
            connector = self.deliveries.connectors[name]
            if isinstance(connector, WebPushConnector):
                return PushConfig(connector.signer.public_key, connector.settings.endpoint_hosts)
        return None
