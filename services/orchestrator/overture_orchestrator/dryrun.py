"""Deciding the sends of walks (:mod:`.walk`) in dry-run mode: what the
rules service would decide for each, in CHECK mode, with nothing reserved
and no record stored (``EvaluateRequest.dry_run``), a thousand to a call.

Each request is the one the engine makes for the send (rule set, channel,
tags, category, priority, the trigger's attributes as context), at the time
the walk would send it, optionally on a profile the caller gives instead of
the stored one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import struct_pb2

from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import decision_pb2, profile_pb2, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.config import Settings
from overture_runtime.errors import Unavailable

from .calls import Transient, call

__all__ = ["DrySend", "decide_dry"]

_CHUNK = 1000


@dataclass(frozen=True)
class DrySend:
    """One send step's message to decide."""

    rule_set: str
    """The journey's rule set."""
    subject_id: str
    """The recipient."""
    step: journey_pb2.Step
    """The send step."""
    context: struct_pb2.Struct
    """The trigger event's attributes."""
    at: dt.datetime
    """When it would be sent."""
    profile: profile_pb2.Profile | None = None
    """A profile to decide on instead of the stored one."""


async def decide_dry(settings: Settings, rules: rules_service_pb2_grpc.RulesServiceStub, tenant: str,
                     sends: Sequence[DrySend]) -> list[decision_pb2.Decision]:
    """One decision per send, in order. Raises :class:`Unavailable` when the
    rules service cannot answer, and for a send it refused (an unknown rule
    set), a decision that says so."""
    decisions: list[decision_pb2.Decision] = []
    for start in range(0, len(sends), _CHUNK):
        chunk = sends[start:start + _CHUNK]
        requests = []
        for s in chunk:
            request = rules_service_pb2.EvaluateRequest(
                rule_set=s.rule_set, subject_id=s.subject_id, channel=s.step.send.channel, tags=s.step.send.tags,
                category=s.step.send.category, priority=s.step.send.priority, context=s.context,
                mode=decision_pb2.EVALUATION_MODE_CHECK, dry_run=True, profile=s.profile)
            request.now.FromDatetime(s.at)
            requests.append(request)
        try:
            response = await call(settings, rules.EvaluateBatch, rules_service_pb2.EvaluateBatchRequest(requests=requests), tenant, "rules",
                                  batch=True)
        except (Transient, grpc.aio.AioRpcError) as error:
            raise Unavailable(f"the rules service could not decide the sends: {error}"[:500], reason="RULES_UNAVAILABLE") from None
        for result in response.results:
            if result.violations:
                first = result.violations[0]
                decisions.append(decision_pb2.Decision(allowed=False, summary=f"not decided: {first.field}: {first.description}"))
            else:
                decisions.append(result.decision)
    return decisions
