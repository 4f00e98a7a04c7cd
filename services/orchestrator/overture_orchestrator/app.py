"""The orchestrator application: stores, the stream consumer (which only
starts runs), the pool of workers that executes due tokens (new runs,
timers, retries), and the loop that forwards audit records."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpc
import structlog

from overture.connectors.v1 import connector_service_pb2_grpc
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture.rules.v1 import audit_service_pb2_grpc, profile_service_pb2_grpc, rules_service_pb2_grpc
from overture_runtime import BaseApp
from overture_runtime.idempotency import Idempotency

from .approvals import Approvals
from .audit_outbox import AuditForwarder
from .backlog import Backlog
from .backtests import Backtests
from .consumer import EventConsumer
from .deadletters import DeadLetters
from .drafts import Drafts
from .entry import EntryGate
from .executor import Executor
from .feedback import DeliveryFeedback
from .goals import Goals
from .inactivity import Inactivity
from .journeys import JourneyStore
from .migrator import RunMigrator
from .preview import Previewer
from .profiles import ProfileReader
from .references import RuleSetCheck
from .replays import Replayer
from .retries import Retrier
from .runs import RunStore
from .schedules import Scheduler
from .sends import Sender
from .servicer import OrchestratorServicer
from .starter import Starter
from .stats import read_stats
from .tables import idempotency
from .tokens import Steps
from .waits import Waits
from .worker import WorkerPool

__all__ = ["OrchestratorApp"]

log = structlog.get_logger("overture.orchestrator")


class OrchestratorApp(BaseApp):
    """``overture serve orchestrator``."""

    name = "orchestrator"
    service_names = (orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,)
    migrations = Path(__file__).parent / "migrations"

    async def on_start(self) -> None:
        consumer = self.settings.consumer_name or f"{socket.gethostname()}:{os.getpid()}"
        self.audit = AuditForwarder(db=self.db, audit=audit_service_pb2_grpc.AuditServiceStub(self.channel("rules")), settings=self.settings)
        self.references = RuleSetCheck(rules=rules_service_pb2_grpc.RulesServiceStub(self.channel("rules")), settings=self.settings)
        self.journeys = JourneyStore(self.db, self.clock, ids=self.ids, audited=self.audit.after_commit, references=self.references)
        self.dead_letters = DeadLetters(self.db, self.clock, self.ids)
        self.runs = RunStore(self.db, self.clock, self.ids, owner=consumer, dead_letters=self.dead_letters)
        steps = Steps(self.clock)
        self.profiles = ProfileReader(profiles=profile_service_pb2_grpc.ProfileServiceStub(self.channel("rules")), settings=self.settings)
        sender = Sender(steps=steps, settings=self.settings, rules=rules_service_pb2_grpc.RulesServiceStub(self.channel("rules")),
                        connectors=connector_service_pb2_grpc.ConnectorServiceStub(self.channel("connectors")))
        self.executor = Executor(journeys=self.journeys, clock=self.clock, profiles=self.profiles, sender=sender, steps=steps)
        self.workers = WorkerPool(runs=self.runs, executor=self.executor, owner=consumer, clock=self.clock,
                                  concurrency=self.settings.orchestrator_workers, batch=self.settings.orchestrator_batch)
        self.feedback = DeliveryFeedback(
            runs=self.runs, journeys=self.journeys, settings=self.settings,
            ingest=ingest_service_pb2_grpc.IngestServiceStub(self.channel("ingest")),
            profiles=profile_service_pb2_grpc.ProfileServiceStub(self.channel("rules")),
        )
        self.inactivity = Inactivity(self.db, self.clock, self.journeys, owner=consumer)
        self.starter = Starter(journeys=self.journeys, runs=self.runs, clock=self.clock, ids=self.ids, workers=self.workers,
                               gate=EntryGate(self.db, self.clock, self.runs, self.profiles), waits=Waits(self.db, self.clock, self.journeys, wake=self.workers.wake),
                               goals=Goals(self.db, self.clock, self.ids, self.journeys), inactivity=self.inactivity)
        self.consumer = EventConsumer(
            redis=self.redis, keys=self.keys, partitions=self.settings.stream_partitions, consumer=consumer,
            dead_letters=self.dead_letters, handle=self.starter.on_events, batch=self.settings.orchestrator_batch,
            max_deliveries=self.settings.consumer_max_deliveries,
        )
        self.spawn("consumer", lambda: self.consumer.run(self.stopping))
        idle = self.settings.consumer_reclaim_idle_seconds
        self.spawn("reclaim", lambda: self.consumer.reclaim(self.stopping, min_idle_ms=int(idle * 1000), interval=min(10.0, idle / 3)))
        self.spawn("workers", lambda: self.workers.run(self.stopping))
        self.spawn("inactivity", lambda: self.inactivity.run(self.stopping, self.starter.start_new))
        self.scheduler = Scheduler(self.db, self.clock, self.journeys, profiles=profile_service_pb2_grpc.ProfileServiceStub(self.channel("rules")),
                                   settings=self.settings, owner=consumer)
        self.spawn("schedules", lambda: self.scheduler.run(self.stopping, self.starter.start_new))
        self.backtests = Backtests(self.db, self.clock, self.ids, journeys=self.journeys, references=self.references, profiles=self.profiles,
                                   ingest=ingest_service_pb2_grpc.IngestServiceStub(self.channel("ingest")),
                                   rules=rules_service_pb2_grpc.RulesServiceStub(self.channel("rules")), settings=self.settings, owner=consumer)
        self.spawn("backtests", lambda: self.backtests.run(self.stopping))
        self.spawn("audit", lambda: self.audit.run(self.stopping))
        self.backlog = Backlog(db=self.db, redis=self.redis, keys=self.keys, partitions=self.settings.stream_partitions, clock=self.clock)
        self.spawn("backlog", lambda: self.backlog.run(self.stopping))

    async def _stats(self, tenant: str, name: str, version: int, spec: journey_pb2.JourneySpec) -> orchestrator_service_pb2.JourneyStats:
        return await read_stats(self.db, tenant, name, version, spec)

    def register(self, server: grpc.aio.Server) -> None:
        orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(journeys=self.journeys, runs=self.runs, starter=self.starter,
                                 idempotency=Idempotency(self.db, idempotency, self.clock), feedback=self.feedback,
                                 retrier=Retrier(runs=self.runs, journeys=self.journeys), audited=self.audit.after_commit,
                                 previewer=Previewer(journeys=self.journeys, references=self.references, profiles=self.profiles,
                                                     rules=rules_service_pb2_grpc.RulesServiceStub(self.channel("rules")),
                                                     settings=self.settings, clock=self.clock),
                                 dead_letters=self.dead_letters, approvals=Approvals(self.db, self.clock, self.ids), stats=self._stats,
                                 drafts=Drafts(self.db, self.clock, references=self.references.check),
                                 migrator=RunMigrator(self.db, self.clock, self.ids, journeys=self.journeys), backtests=self.backtests,
                                 replayer=Replayer(self.db, self.clock, self.ids, journeys=self.journeys, starter=self.starter,
                                                   ingest=ingest_service_pb2_grpc.IngestServiceStub(self.channel("ingest")),
                                                   settings=self.settings, audited=self.audit.after_commit),
                                 clock=self.clock),
            server,
        )

