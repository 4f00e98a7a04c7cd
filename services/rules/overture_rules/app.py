"""The rules service application: wiring of stores, decider and servicers."""

from __future__ import annotations

from pathlib import Path

import grpc

from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime import BaseApp
from overture_runtime.idempotency import Idempotency

from .decisions import Decider
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
    )
    migrations = Path(__file__).parent / "migrations"

    async def on_start(self) -> None:
        self.rule_sets = RuleSetStore(self.db, self.clock)
        self.profiles = ProfileStore(self.db, self.clock)
        self.decider = Decider(self.db, self.rule_sets, self.profiles, self.clock, self.ids)

    def register(self, server: grpc.aio.Server) -> None:
        rules_service_pb2_grpc.add_RulesServiceServicer_to_server(
            RulesServicer(db=self.db, rule_sets=self.rule_sets, decider=self.decider,
                          idempotency=Idempotency(self.db, idempotency, self.clock)),
            server,
        )
        profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(profiles=self.profiles), server)
