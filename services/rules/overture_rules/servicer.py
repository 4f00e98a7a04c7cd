"""The rules service's gRPC servicers: they validate and translate, and
leave every decision to the domain modules."""

from __future__ import annotations

import datetime as dt
import re

import grpc

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import (
    decision_pb2,
    profile_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    rules_service_pb2,
    rules_service_pb2_grpc,
)
from overture_runtime import OvertureError, Violations, current_principal
from overture_runtime.clock import EPOCH
from overture_runtime.db import Database
from overture_runtime.edge import item_violations
from overture_runtime.errors import FieldViolation
from overture_runtime.idempotency import Idempotency
from overture_runtime.protojson import struct_to_dict
from overture_runtime.validation import (
    check_batch,
    check_identifier,
    check_name,
    check_read_mask,
    check_reason,
    check_struct,
    decode_page_token,
    encode_page_token,
    page_size,
    to_proto_violations,
)
from overture_runtime.wire import Encoded, message_field

from . import audit
from .backtest import backtest
from .decisions import Decider, validate_evaluate
from .profile_pages import list_profiles
from .profile_updates import ProfileChange, ProfileUpdater, conflicts
from .profiles import ProfileStore
from .rule_sets import RuleSetStore

R = rules_service_pb2
P = profile_service_pb2
_REASON_MAX = 1024
_TRAIT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CHANGE_MAX = 100
"""The most tags or segments one UpdateProfile names in each of its lists."""
_RESPONSE_RESULTS = R.EvaluateBatchResponse.DESCRIPTOR.fields_by_name["results"].number
_RESULT_DECISION = R.EvaluateBatchResult.DESCRIPTOR.fields_by_name["decision"].number
"""Field numbers of the EvaluateBatch response, built as wire bytes."""


def _check_trait(v: Violations, field: str, name: str) -> None:
    if not _TRAIT.fullmatch(name):
        v.add(field, f"{name!r} is not a trait name: letters, digits and underscores, at most 64, not starting with a digit",
              "INVALID_TRAIT")


class RulesServicer(rules_service_pb2_grpc.RulesServiceServicer):
    """``overture.rules.v1.RulesService``."""

    def __init__(self, *, db: Database, rule_sets: RuleSetStore, decider: Decider, idempotency: Idempotency) -> None:
        self._db = db
        self._rule_sets = rule_sets
        self._decider = decider
        self._idempotency = idempotency

    async def Evaluate(self, request: R.EvaluateRequest, context: grpc.aio.ServicerContext) -> R.EvaluateResponse:
        tenant = current_principal().tenant
        violations = validate_evaluate(request)
        if violations:
            Violations(violations).raise_if_any("the evaluate request is invalid")
        return R.EvaluateResponse(decision=await self._decider.evaluate(tenant, request))

    async def EvaluateBatch(self, request: R.EvaluateBatchRequest, context: grpc.aio.ServicerContext) -> R.EvaluateBatchResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_batch(v, "requests", request.requests)
        v.raise_if_any("the batch is invalid")
        # The response is built as wire bytes: each decision serialized once,
        # where copying it into the response and serializing that cost more
        # than deciding it (see overture_runtime.wire).
        results: list[bytes] = []
        valid: list[int] = []
        for index, item in enumerate(request.requests):
            problems = item_violations(item) or validate_evaluate(item)
            if problems:
                results.append(R.EvaluateBatchResult(index=index, violations=to_proto_violations(problems)).SerializeToString())
            else:
                results.append(b"")
                valid.append(index)
        decided = await self._decider.evaluate_many(tenant, [request.requests[i] for i in valid])
        for index, outcome in zip(valid, decided, strict=True):
            if isinstance(outcome, OvertureError):
                settling = request.requests[index].mode in (decision_pb2.EVALUATION_MODE_COMMIT, decision_pb2.EVALUATION_MODE_RELEASE)
                where = "decision_id" if settling else "rule_set"
                violations = to_proto_violations(list(outcome.violations) or [FieldViolation(where, outcome.message, outcome.reason)])
                results[index] = R.EvaluateBatchResult(index=index, violations=violations).SerializeToString()
            else:
                results[index] = R.EvaluateBatchResult(index=index).SerializeToString() + message_field(_RESULT_DECISION,
                                                                                                        outcome.SerializeToString())
        return Encoded(b"".join(message_field(_RESPONSE_RESULTS, r) for r in results))  # type: ignore[return-value]

    async def CreateRuleSetVersion(
        self, request: R.CreateRuleSetVersionRequest, context: grpc.aio.ServicerContext
    ) -> R.CreateRuleSetVersionResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        check_reason(v, request.reason)
        if request.parent_version < 0:
            v.add("parent_version", "parent_version must not be negative", "OUT_OF_RANGE")
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any("the rule set version is invalid")

        async def create() -> R.CreateRuleSetVersionResponse:
            version, unchanged = await self._rule_sets.create_version(
                tenant=principal.tenant, name=request.rule_set, spec=request.spec, reason=request.reason,
                parent_version=request.parent_version, author=principal.name,
            )
            return R.CreateRuleSetVersionResponse(rule_set_version=version, unchanged=unchanged)

        return await self._idempotency.run(
            tenant=principal.tenant, method="CreateRuleSetVersion", request_id=request.request_id, request=request,
            response_type=R.CreateRuleSetVersionResponse, compute=create,
        )

    async def GetRuleSetVersion(self, request: R.GetRuleSetVersionRequest, context: grpc.aio.ServicerContext) -> R.GetRuleSetVersionResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        if request.version < 0:
            v.add("version", "version must not be negative", "OUT_OF_RANGE")
        v.raise_if_any()
        return R.GetRuleSetVersionResponse(
            rule_set_version=await self._rule_sets.get(tenant=tenant, name=request.rule_set, version=request.version)
        )

    async def ListRuleSets(self, request: R.ListRuleSetsRequest, context: grpc.aio.ServicerContext) -> R.ListRuleSetsResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size)
        v.raise_if_any()
        after = decode_page_token(request.page_token, after=str).get("after")
        found = await self._rule_sets.list_rule_sets(tenant=tenant, limit=size + 1, after=after)
        token = encode_page_token({"after": found[size - 1].rule_set}) if len(found) > size else ""
        return R.ListRuleSetsResponse(rule_sets=found[:size], next_page_token=token)

    async def ListRuleSetVersions(
        self, request: R.ListRuleSetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> R.ListRuleSetVersionsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        cursor = decode_page_token(request.page_token, before=int)
        versions = await self._rule_sets.list_versions(tenant=tenant, name=request.rule_set, limit=size + 1, before=cursor.get("before"))
        token = encode_page_token({"before": versions[size - 1].version}) if len(versions) > size else ""
        return R.ListRuleSetVersionsResponse(rule_set_versions=versions[:size], next_page_token=token)

    async def ActivateRuleSetVersion(
        self, request: R.ActivateRuleSetVersionRequest, context: grpc.aio.ServicerContext
    ) -> R.ActivateRuleSetVersionResponse:
        principal = current_principal()
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        if request.version <= 0:
            v.add("version", "version is required", "REQUIRED")
        check_reason(v, request.reason)
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any("the activation is invalid")

        async def activate() -> R.ActivateRuleSetVersionResponse:
            version, previous = await self._rule_sets.activate(
                tenant=principal.tenant, name=request.rule_set, version=request.version, reason=request.reason, actor=principal.name
            )
            return R.ActivateRuleSetVersionResponse(rule_set_version=version, previous_version=previous)

        return await self._idempotency.run(
            tenant=principal.tenant, method="ActivateRuleSetVersion", request_id=request.request_id, request=request,
            response_type=R.ActivateRuleSetVersionResponse, compute=activate,
        )

    async def DiffRuleSetVersions(
        self, request: R.DiffRuleSetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> R.DiffRuleSetVersionsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        v.raise_if_any()
        changes = await self._rule_sets.diff(
            tenant=tenant, name=request.rule_set, from_version=request.from_version, to_version=request.to_version
        )
        return R.DiffRuleSetVersionsResponse(changes=changes)

    async def BacktestRuleSet(self, request: R.BacktestRuleSetRequest, context: grpc.aio.ServicerContext) -> R.BacktestRuleSetResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_name(v, "rule_set", request.rule_set)
        if request.candidate_version <= 0:
            v.add("candidate_version", "candidate_version is required", "REQUIRED")
        for name in ("start_time", "end_time"):
            if not request.HasField(name):
                v.add(name, f"{name} is required", "REQUIRED")
        if request.HasField("start_time") and request.HasField("end_time") and request.end_time.ToDatetime() <= request.start_time.ToDatetime():
            v.add("end_time", "end_time must be after start_time", "OUT_OF_RANGE")
        keep = page_size(v, request.page_size, default=100, maximum=1000)
        v.raise_if_any("the backtest is invalid")
        candidate, _ = await self._rule_sets.compiled(tenant=tenant, name=request.rule_set, version=request.candidate_version)
        outcome = await backtest(
            self._db, candidate, tenant=tenant, rule_set=request.rule_set, keep=keep,
            start=request.start_time.ToDatetime(tzinfo=dt.UTC), end=request.end_time.ToDatetime(tzinfo=dt.UTC),
        )
        return R.BacktestRuleSetResponse(
            evaluated_count=outcome.evaluated, changed_count=outcome.changed, newly_denied_count=outcome.newly_denied,
            newly_allowed_count=outcome.newly_allowed, changes=outcome.changes,
        )

    async def ListAuditEvents(self, request: R.ListAuditEventsRequest, context: grpc.aio.ServicerContext) -> R.ListAuditEventsResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size, default=100, maximum=1000)
        v.raise_if_any()
        after = int(decode_page_token(request.page_token, after=int).get("after", 0))
        found = await audit.list_events(self._db, tenant=tenant, after=after, limit=size + 1)
        events = found[:size]
        token = encode_page_token({"after": events[-1].sequence}) if len(found) > size else ""
        return R.ListAuditEventsResponse(audit_events=events, next_page_token=token)

    async def GetDecision(self, request: R.GetDecisionRequest, context: grpc.aio.ServicerContext) -> R.GetDecisionResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "decision_id", request.decision_id)
        v.raise_if_any()
        return R.GetDecisionResponse(decision=await self._decider.get(tenant, request.decision_id))

    async def ListDecisions(self, request: R.ListDecisionsRequest, context: grpc.aio.ServicerContext) -> R.ListDecisionsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        cursor = decode_page_token(request.page_token, before=str, at=int)
        before = (EPOCH + dt.timedelta(microseconds=cursor["at"]), cursor["before"]) if cursor else None
        found = await self._decider.list_for_subject(tenant, request.subject_id, limit=size + 1, before=before)
        last = found[size - 1] if len(found) > size else None
        token = encode_page_token({"before": last.decision_id, "at": last.create_time.ToMicroseconds()}) if last else ""
        return R.ListDecisionsResponse(decisions=found[:size], next_page_token=token)


class ProfileServicer(profile_service_pb2_grpc.ProfileServiceServicer):
    """``overture.rules.v1.ProfileService``."""

    def __init__(self, *, profiles: ProfileStore, updater: ProfileUpdater) -> None:
        self._profiles = profiles
        self._updater = updater

    async def GetProfile(self, request: P.GetProfileRequest, context: grpc.aio.ServicerContext) -> P.GetProfileResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        v.raise_if_any()
        return P.GetProfileResponse(profile=await self._profiles.get(tenant=tenant, subject_id=request.subject_id))

    async def BatchGetProfiles(self, request: P.BatchGetProfilesRequest, context: grpc.aio.ServicerContext) -> P.BatchGetProfilesResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_batch(v, "subject_ids", request.subject_ids)
        for i, subject_id in enumerate(request.subject_ids):
            check_identifier(v, f"subject_ids[{i}]", subject_id)
        fields = check_read_mask(v, "read_mask", request.read_mask, profile_pb2.Profile.DESCRIPTOR)
        v.raise_if_any()
        found = await self._profiles.get_many(tenant=tenant, subject_ids=request.subject_ids, fields=fields)
        return P.BatchGetProfilesResponse(results=[P.BatchGetProfilesResult(subject_id=s, profile=found.get(s))
                                                   for s in request.subject_ids])

    async def UpsertProfile(self, request: P.UpsertProfileRequest, context: grpc.aio.ServicerContext) -> P.UpsertProfileResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_struct(v, "traits", request.traits, max_bytes=32 * 1024)
        for i, name in enumerate(request.add_suppression_lists):
            check_name(v, f"add_suppression_lists[{i}]", name)
        v.raise_if_any("the profile is invalid")
        profile = await self._profiles.upsert(
            tenant=tenant, subject_id=request.subject_id, traits=struct_to_dict(request.traits), timezone=request.timezone,
            add_lists=request.add_suppression_lists, remove_lists=request.remove_suppression_lists,
        )
        return P.UpsertProfileResponse(profile=profile)

    async def SetConsent(self, request: P.SetConsentRequest, context: grpc.aio.ServicerContext) -> P.SetConsentResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        if request.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
            v.add("channel", "channel is required", "REQUIRED")
        check_name(v, "purpose", request.purpose.replace("_", "-"))
        if request.status == profile_pb2.CONSENT_STATUS_UNSPECIFIED:
            v.add("status", "status must be GRANTED or REVOKED", "REQUIRED")
        v.raise_if_any("the consent is invalid")
        when = request.occur_time.ToDatetime(tzinfo=dt.UTC) if request.HasField("occur_time") else None
        profile = await self._profiles.set_consent(
            tenant=tenant, subject_id=request.subject_id, channel=request.channel, purpose=request.purpose,
            granted=request.status == profile_pb2.CONSENT_STATUS_GRANTED, source=request.source or "api", when=when,
        )
        return P.SetConsentResponse(profile=profile)

    async def ApplyProfileEvents(
        self, request: P.ApplyProfileEventsRequest, context: grpc.aio.ServicerContext
    ) -> P.ApplyProfileEventsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_batch(v, "events", request.events)
        v.raise_if_any()
        unstorable = [item_violations(event) for event in request.events]
        valid = [event for event, problems in zip(request.events, unstorable, strict=True) if not problems]
        applied = iter(await self._profiles.apply_events(tenant=tenant, events=valid) if valid else [])
        results = [next(applied) if not problems else (False, problems) for problems in unstorable]
        return P.ApplyProfileEventsResponse(
            results=[P.ApplyProfileEventResult(index=i, applied=ok, violations=to_proto_violations(problems)) for i, (ok, problems) in enumerate(results)]
        )

    async def EraseProfile(self, request: P.EraseProfileRequest, context: grpc.aio.ServicerContext) -> P.EraseProfileResponse:
        principal = current_principal()
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_reason(v, request.reason)
        v.raise_if_any()
        pseudonym = await self._profiles.erase(
            tenant=principal.tenant, subject_id=request.subject_id, reason=request.reason, actor=principal.name
        )
        return P.EraseProfileResponse(pseudonymous_id=pseudonym)

    async def UpdateProfile(self, request: P.UpdateProfileRequest, context: grpc.aio.ServicerContext) -> P.UpdateProfileResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id)
        check_struct(v, "set_traits", request.set_traits, max_bytes=32 * 1024)
        for i, name in enumerate(request.unset_traits):
            _check_trait(v, f"unset_traits[{i}]", name)
        for name in request.increment:
            _check_trait(v, f"increment[{name}]", name)
        for field in ("add_tags", "remove_tags", "enter_segments", "exit_segments"):
            values = getattr(request, field)
            if len(values) > _CHANGE_MAX:
                v.add(field, f"at most {_CHANGE_MAX} {field} per call", "TOO_MANY")
            for i, value in enumerate(values):
                check_name(v, f"{field}[{i}]", value)
        change = ProfileChange.of(request)
        if not any((change.set_traits, change.unset_traits, change.increment, change.add_tags, change.remove_tags,
                    change.enter_segments, change.exit_segments)):
            v.add("set_traits", "the request changes nothing: give traits, tags or segments", "REQUIRED")
        for where, what in conflicts(change):
            v.add(where, what, "CONFLICT")
        v.raise_if_any("the profile change is invalid")
        return await self._updater.update(tenant=tenant, request=request)

    async def ListProfiles(self, request: P.ListProfilesRequest, context: grpc.aio.ServicerContext) -> P.ListProfilesResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size, default=100, maximum=1000)
        v.raise_if_any()
        # A token names the segment it pages through, so it cannot be used on another.
        cursor = (decode_page_token(request.page_token, after=str, segment=str) if request.segment
                  else decode_page_token(request.page_token, after=str))
        if cursor and cursor.get("segment", "") != request.segment:
            v.add("page_token", "page_token belongs to a listing of another segment", "INVALID_PAGE_TOKEN")
            v.raise_if_any()
        found = await list_profiles(self._profiles.db, tenant=tenant, segment=request.segment, after=cursor.get("after", ""),
                                    limit=size + 1)
        token = ""
        if len(found) > size:
            last = {"after": found[size - 1].subject_id}
            token = encode_page_token({**last, "segment": request.segment} if request.segment else last)
        return P.ListProfilesResponse(profiles=found[:size], next_page_token=token)

