"""What a journey names in another service, checked before it is published.

A journey's send steps are decided by its rule set, which lives in the
rules service. A misspelt name passed publish and then dead-lettered every
run; now publish asks the rules service, through its stub, for the rule
set's active version. No active version means every send would fail too.
When the rules service cannot answer, publish fails with UNAVAILABLE:
nothing is published unchecked.
"""

from __future__ import annotations

import datetime as dt

import grpc
import structlog

from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.errors import FieldViolation, InvalidArgument, Unavailable

__all__ = ["RuleSetCheck"]

log = structlog.get_logger("overture.orchestrator")


class RuleSetCheck:
    """Refuses a definition whose send steps name a rule set that cannot decide them."""

    def __init__(self, *, rules: rules_service_pb2_grpc.RulesServiceStub, settings: Settings, prefix: str = "spec") -> None:
        self._rules = rules
        self._settings = settings
        self._prefix = prefix

    async def check(self, tenant: str, spec: journey_pb2.JourneySpec) -> None:
        """Raise InvalidArgument, at ``spec.rule_set`` and naming the send
        steps, if the rule set does not exist or has no active version;
        Unavailable if the rules service cannot say."""
        sends = [f"{s.id!r} ({self._prefix}.steps[{i}])" for i, s in enumerate(spec.steps) if s.WhichOneof("kind") == "send"]
        if not sends:
            return  # no step is decided by a rule set
        name = spec.rule_set
        try:
            await self._rules.GetRuleSetVersion(
                rules_service_pb2.GetRuleSetVersionRequest(rule_set=name), metadata=call_metadata(self._settings, tenant),
                timeout=self._settings.rpc_timeout_seconds)
        except grpc.aio.AioRpcError as error:
            steps = f"send step{'s' if len(sends) > 1 else ''} {', '.join(sends)}"
            if error.code() == grpc.StatusCode.NOT_FOUND:
                why, reason = f"rule set {name!r} does not exist; it would decide {steps}", "UNKNOWN_RULE_SET"
            elif error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                why, reason = f"rule set {name!r} has no active version; activate one before publishing {steps}", "RULE_SET_NOT_ACTIVE"
            else:
                log.warning("journey.rule_set_check_failed", code=error.code().name, detail=(error.details() or "")[:200])
                raise Unavailable(
                    f"the rules service could not confirm rule set {name!r} ({error.code().name}); nothing was published, retry",
                    reason="RULES_UNAVAILABLE", retry_after=dt.timedelta(seconds=1),
                ) from None
            raise InvalidArgument(f"the journey is invalid: {why}",
                                  violations=[FieldViolation(f"{self._prefix}.rule_set", why, reason)]) from None
