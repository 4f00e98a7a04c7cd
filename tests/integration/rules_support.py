"""A rules service in this process, on this test's PostgreSQL database and
Redis namespace, and helpers to build rule sets and requests."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import (
    profile_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    rule_set_pb2,
    rules_service_pb2,
    rules_service_pb2_grpc,
)
from overture_rules import RulesApp
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import admin_metadata

MD = admin_metadata()
R = rule_set_pb2
EMAIL = messaging_pb2.CHANNEL_EMAIL
STRING = rule_set_pb2.ATTRIBUTE_TYPE_STRING
NUMBER = rule_set_pb2.ATTRIBUTE_TYPE_NUMBER


@dataclass
class Rules:
    """Stubs to an in-process rules service, and the app behind them."""

    rules: rules_service_pb2_grpc.RulesServiceStub
    profiles: profile_service_pb2_grpc.ProfileServiceStub
    app: RulesApp
    address: str

    async def publish(self, name: str, spec: rule_set_pb2.RuleSetSpec, *, activate: bool = True, reason: str = "test") -> int:
        """Create a version and (by default) activate it; returns its number."""
        created = await self.rules.CreateRuleSetVersion(rules_service_pb2.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason=reason), metadata=MD)
        version = created.rule_set_version.version
        if activate:
            await self.rules.ActivateRuleSetVersion(rules_service_pb2.ActivateRuleSetVersionRequest(rule_set=name, version=version, reason=reason), metadata=MD)
        return version

    async def consent(self, subject: str, *, granted: bool = True, channel: Any = EMAIL, purpose: str = "marketing") -> None:
        """Grant or revoke a consent."""
        status = profile_pb2.CONSENT_STATUS_GRANTED if granted else profile_pb2.CONSENT_STATUS_REVOKED
        await self.profiles.SetConsent(profile_service_pb2.SetConsentRequest(subject_id=subject, channel=channel, purpose=purpose,
                                                                             status=status, source="test"), metadata=MD)

    async def profile(self, subject: str, *, traits: dict[str, Any] | None = None, timezone: str = "", lists: Iterable[str] = ()) -> None:
        """Create or update a profile."""
        request = profile_service_pb2.UpsertProfileRequest(subject_id=subject, timezone=timezone, add_suppression_lists=list(lists))
        request.traits.update(traits or {})
        await self.profiles.UpsertProfile(request, metadata=MD)

    async def evaluate(self, **fields: Any) -> Any:
        """Evaluate and return the decision."""
        now = fields.pop("now", None)
        context = fields.pop("context", None)
        request = rules_service_pb2.EvaluateRequest(**{"channel": EMAIL, **fields})
        if now is not None:
            request.now.FromDatetime(now)
        if context:
            request.context.update(context)
        return (await self.rules.Evaluate(request, metadata=MD)).decision


@contextlib.asynccontextmanager
async def running_rules(make_settings: Callable[..., Settings], **overrides: Any) -> AsyncIterator[Rules]:
    """Run the rules service in this process."""
    settings = make_settings(**overrides)
    app = RulesApp(settings)
    async with serving(app, settings) as address, grpc.aio.insecure_channel(address) as channel:
        yield Rules(rules_service_pb2_grpc.RulesServiceStub(channel), profile_service_pb2_grpc.ProfileServiceStub(channel), app, address)


def cap(cap_id: str, limit: int, *, window: str = "rolling", hours: float = 24, scope: str = "channel", tag: str = "") -> rule_set_pb2.FrequencyCap:
    """A frequency cap on email (or all channels, or a tag)."""
    kinds = {"rolling": R.CAP_WINDOW_KIND_ROLLING, "day": R.CAP_WINDOW_KIND_CALENDAR_DAY, "week": R.CAP_WINDOW_KIND_CALENDAR_WEEK}
    scopes = {"channel": R.CAP_SCOPE_CHANNEL, "all": R.CAP_SCOPE_ALL_CHANNELS, "tag": R.CAP_SCOPE_TAG}
    window_pb = R.CapWindow(kind=kinds[window])
    if window == "rolling":
        window_pb.duration.CopyFrom(duration_pb2.Duration(seconds=int(hours * 3600)))
    return R.FrequencyCap(id=cap_id, scope=scopes[scope], channel=EMAIL if scope == "channel" else 0, tag=tag, limit=limit, window=window_pb)


def spec(*, caps: Iterable[rule_set_pb2.FrequencyCap] = (), quiet: tuple[str, str] | None = None, default_tz: str = "UTC",
         rules: Iterable[tuple[str, str, str]] = (), attributes: Iterable[tuple[str, int]] = (), lists: Iterable[str] = ()) -> rule_set_pb2.RuleSetSpec:
    """A rule set: email marketing consent, plus what is given. Rules are (id, expression, effect)."""
    result = R.RuleSetSpec(
        consents=[R.ConsentRequirement(channel=EMAIL, purpose="marketing")], frequency_caps=list(caps), suppression_lists=list(lists),
        attributes=[R.AttributeDeclaration(name=n, type=t, source=R.ATTRIBUTE_SOURCE_TRAIT) for n, t in attributes],
        rules=[R.Rule(id=i, expression=e, effect=R.RULE_EFFECT_REQUIRE if eff == "require" else R.RULE_EFFECT_DENY, reason=f"{i} decided")
               for i, e, eff in rules],
    )
    if quiet:
        result.quiet_hours.CopyFrom(R.QuietHours(start=quiet[0], end=quiet[1], default_timezone=default_tz))
    return result


def utc(*args: int) -> dt.datetime:
    """A UTC datetime."""
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The field violations of a refused call: reason by field path."""
    for detail in rpc_status.from_call(error).details:  # type: ignore[arg-type]
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.reason for v in bad.field_violations}
    return {}


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refused call ("" without one)."""
    for detail in rpc_status.from_call(error).details:  # type: ignore[arg-type]
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
