"""Dry-run decisions (``EvaluateRequest.dry_run``), for previews and backtests.

A dry run decides as a CHECK does, with the same compiled plan and the same
count of the subject's frequency caps, but reserves nothing, stores no
record, and its decision has no id. It decides on the profile the request
carries, or else on the subject's stored one (read through the Redis cache,
which it never fills from a view it was handed). What cannot be read fails
closed, as for any decision.

The hot path is left alone: the :class:`~.decisions.Decider` hands dry runs
here once their rule set version is known, and decides the others as
before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, profile_pb2, rule_set_pb2, rules_service_pb2
from overture_runtime.protojson import struct_to_dict

from .caps import CapLedger, CapWindow, LedgerResult
from .compiler import CompiledRuleSet
from .engine import DecisionOutcome, EvaluationInput, ProfileView, channel_name
from .profiles import ProfileStore
from .scripts import ScriptChannel
from .verdicts import build_decision, masked_snapshot

__all__ = ["DryRun", "decide_dry", "profile_view"]

log = structlog.get_logger("overture.rules")
_TRANSACTIONAL = messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL
_GRANTED = profile_pb2.CONSENT_STATUS_GRANTED
_REVOKED = profile_pb2.CONSENT_STATUS_REVOKED


@dataclass(frozen=True)
class DryRun:
    """One dry-run request, with the rule set version that decides it."""

    req: rules_service_pb2.EvaluateRequest
    """The request."""
    compiled: CompiledRuleSet
    """Its rule set version, compiled."""
    version: rule_set_pb2.RuleSetVersion
    """Its rule set version."""


def profile_view(profile: profile_pb2.Profile, *, subject_id: str) -> ProfileView:
    """What a decision reads of a ``Profile`` a caller sent."""
    return ProfileView(
        subject_id=subject_id, traits=struct_to_dict(profile.traits),
        granted=frozenset((channel_name(c.channel), c.purpose) for c in profile.consents if c.status == _GRANTED),
        revoked=frozenset((channel_name(c.channel), c.purpose) for c in profile.consents if c.status == _REVOKED),
        segments=tuple(profile.segments), timezone=profile.timezone, suppression_lists=frozenset(profile.suppression_lists),
        erased=profile.erased,
    )


async def decide_dry(
    items: Sequence[DryRun], *, tenant: str, now: dt.datetime, profiles: ProfileStore, ledger: CapLedger, channel: ScriptChannel,
) -> list[decision_pb2.Decision]:
    """Decide *items* without reserving or storing anything; one decision
    (without an id) per item, in order."""
    views: dict[str, ProfileView] | None = {}
    stored = list(dict.fromkeys(x.req.subject_id for x in items if not x.req.HasField("profile")))
    if stored:
        try:
            views = await profiles.view_many(tenant=tenant, subject_ids=stored)
        except Exception as error:  # noqa: BLE001 - any store failure fails closed
            log.warning("rules.profile_store_unavailable", error=type(error).__name__)
            views = None
    decided: list[tuple[DryRun, EvaluationInput, DecisionOutcome | None, list[CapWindow]]] = []
    commands = []
    for item in items:
        req = item.req
        message = EvaluationInput(
            channel=req.channel, category=req.category, now=req.now.ToDatetime(tzinfo=dt.UTC) if req.HasField("now") else now,
            tags=tuple(req.tags), priority=req.priority, context=struct_to_dict(req.context) if req.context.fields else {},
        )
        view = profile_view(req.profile, subject_id=req.subject_id) if req.HasField("profile") else (
            views.get(req.subject_id) if views is not None else None)
        outcome = item.compiled.plan.decide(view, message) if view is not None else None
        windows: list[CapWindow] = []
        if view is not None and outcome is not None and outcome.allowed and req.category != _TRANSACTIONAL \
                and item.compiled.spec.frequency_caps:
            plan = item.compiled.plan
            windows = plan.caps.plan(channel=req.channel, tags=req.tags, now=message.now, zone=plan.zone(view))
            if windows:
                args = ledger.args("check", decision_id="", priority=req.priority, channel=req.channel, tags=req.tags,
                                   windows=windows, now=message.now)
                commands.append(ledger.check_command(tenant, req.subject_id, args))
        decided.append((item, message, outcome, windows))
    counted: list[LedgerResult] | None = None
    if commands:
        try:
            counted = [CapLedger.parse(reply, w) for reply, w in zip(await channel.run(commands), (d[3] for d in decided if d[3]),
                                                                     strict=True)]
        except RedisError as error:
            log.warning("rules.redis_unavailable", error=type(error).__name__)
    results = iter(counted or ())
    decisions = []
    for item, message, outcome, windows in decided:
        ledger_result = next(results, None) if windows and counted is not None else None
        decisions.append(build_decision(
            decision_id="", req=item.req, version=item.version, plan=item.compiled.plan, message=message, outcome=outcome,
            snapshot=masked_snapshot(outcome) if outcome is not None else b"", windows=windows, ledger=ledger_result,
            ledger_error=bool(windows) and counted is None,
        ))
    return decisions
