"""The rules service application: wiring of stores, decider and servicers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc

from overture.rules.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    rules_service_pb2,
    rules_service_pb2_grpc,
)
from overture_runtime import BaseApp
from overture_runtime.idempotency import Idempotency

from .audit_servicer import AuditServicer
from .caps import CapLedger
from .decisions import Decider
from .profile_cache import LocalViews, ProfileCache
from .profile_updates import ProfileUpdater
from .profiles import ProfileStore
from .rule_sets import RuleSetStore
from .servicer import ProfileServicer, RulesServicer
from .tables import idempotency

__all__ = ["RulesApp"]


class RulesApp(BaseApp):
    """``overture serve rules``."""

    name = "rules"
    service_names = (
        rules_service_pb2.DESCRIPTOR.services_by_name["RulesService"].full_name,
        profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
        audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    )
    migrations = Path(__file__).parent / "migrations"

    async def on_start(self) -> None:
        s = self.settings
        self.ledger = CapLedger(self.redis, self.keys, hold=dt.timedelta(seconds=s.reservation_ttl_seconds),
                                retention=dt.timedelta(days=s.cap_history_days))
        ttl = dt.timedelta(seconds=s.profile_cache_ttl_seconds)
        cache = ProfileCache(self.redis, self.keys, ttl=ttl)
        local = LocalViews(self.keys, size=s.profile_local_cache_size, ttl=ttl)
        self.rule_sets = RuleSetStore(self.db, self.clock, active_ttl=s.active_version_ttl_seconds)
        self.profiles = ProfileStore(self.db, self.clock, cache=cache, ledger=self.ledger, read_timeout=s.profile_read_timeout_seconds,
                                     local=local)
        self.decider = Decider(self.db, self.rule_sets, self.profiles, self.ledger, self.clock, self.ids,
                               durable_writes=s.decision_writes == "sync", redis_timeout=s.profile_read_timeout_seconds)
        self.decider.start()

    async def on_stop(self) -> None:
        await self.decider.close()

    def register(self, server: grpc.aio.Server) -> None:
        rules_service_pb2_grpc.add_RulesServiceServicer_to_server(
            RulesServicer(db=self.db, rule_sets=self.rule_sets, decider=self.decider,
                          idempotency=Idempotency(self.db, idempotency, self.clock)),
            server,
        )
        updater = ProfileUpdater(self.profiles, Idempotency(self.db, idempotency, self.clock), self.clock)
        profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(profiles=self.profiles, updater=updater), server)
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(db=self.db), server)
