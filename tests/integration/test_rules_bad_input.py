"""Every rules and profile RPC validates its input: missing fields, oversized
payloads and unknown rule sets get INVALID_ARGUMENT or NOT_FOUND with field
violations, never INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.common.v1 import event_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture.rules.v1 import rules_service_pb2 as R
from overture_runtime.config import Settings
from tests.conftest import READER_TOKEN, admin_metadata

from .rules_support import EMAIL, MD, Rules, running_rules, spec

BIG = {"blob": "x" * 40_000}




@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        await running.publish("known", spec())
        yield running


def _with_struct(message: Any, field: str, value: dict[str, Any]) -> Any:
    getattr(message, field).update(value)
    return message


def _cases() -> list[tuple[str, str, Any, grpc.StatusCode, set[str]]]:
    evaluate_big = _with_struct(R.EvaluateRequest(rule_set="known", subject_id="s", channel=EMAIL), "context", BIG)
    return [
        ("rules", "Evaluate", R.EvaluateRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"rule_set", "subject_id", "channel"}),
        ("rules", "Evaluate", evaluate_big, grpc.StatusCode.INVALID_ARGUMENT, {"context"}),
        ("rules", "Evaluate", R.EvaluateRequest(rule_set="known", subject_id="s", channel=EMAIL, priority=101, tags=["Bad Tag"]),
         grpc.StatusCode.INVALID_ARGUMENT, {"priority", "tags[0]"}),
        ("rules", "Evaluate", R.EvaluateRequest(rule_set="unknown", subject_id="s", channel=EMAIL), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "Evaluate", R.EvaluateRequest(mode=3), grpc.StatusCode.INVALID_ARGUMENT, {"decision_id"}),
        ("rules", "Evaluate", R.EvaluateRequest(mode=3, decision_id="nope"), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "EvaluateBatch", R.EvaluateBatchRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"requests"}),
        ("rules", "EvaluateBatch", R.EvaluateBatchRequest(requests=[R.EvaluateRequest()] * 1001), grpc.StatusCode.INVALID_ARGUMENT, {"requests"}),
        ("rules", "CreateRuleSetVersion", R.CreateRuleSetVersionRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"rule_set", "reason"}),
        ("rules", "CreateRuleSetVersion", R.CreateRuleSetVersionRequest(rule_set="x", reason="r" * 2000), grpc.StatusCode.INVALID_ARGUMENT, {"reason"}),
        ("rules", "GetRuleSetVersion", R.GetRuleSetVersionRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"rule_set"}),
        ("rules", "GetRuleSetVersion", R.GetRuleSetVersionRequest(rule_set="unknown"), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "GetRuleSetVersion", R.GetRuleSetVersionRequest(rule_set="known", version=99), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "ListRuleSetVersions", R.ListRuleSetVersionsRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"rule_set"}),
        ("rules", "ListRuleSetVersions", R.ListRuleSetVersionsRequest(rule_set="known", page_size=1000), grpc.StatusCode.INVALID_ARGUMENT, {"page_size"}),
        ("rules", "ListRuleSetVersions", R.ListRuleSetVersionsRequest(rule_set="unknown"), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "ActivateRuleSetVersion", R.ActivateRuleSetVersionRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"rule_set", "version", "reason"}),
        ("rules", "ActivateRuleSetVersion", R.ActivateRuleSetVersionRequest(rule_set="unknown", version=1, reason="r"), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "DiffRuleSetVersions", R.DiffRuleSetVersionsRequest(rule_set="known"), grpc.StatusCode.INVALID_ARGUMENT, {"from_version", "to_version"}),
        ("rules", "DiffRuleSetVersions", R.DiffRuleSetVersionsRequest(rule_set="unknown", from_version=1, to_version=2), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "BacktestRuleSet", R.BacktestRuleSetRequest(), grpc.StatusCode.INVALID_ARGUMENT,
         {"rule_set", "candidate_version", "start_time", "end_time"}),
        ("rules", "ListAuditEvents", R.ListAuditEventsRequest(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT, {"page_token"}),
        ("rules", "GetDecision", R.GetDecisionRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"decision_id"}),
        ("rules", "GetDecision", R.GetDecisionRequest(decision_id="nope"), grpc.StatusCode.NOT_FOUND, set()),
        ("rules", "ListDecisions", R.ListDecisionsRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id"}),
        ("profiles", "GetProfile", P.GetProfileRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id"}),
        ("profiles", "GetProfile", P.GetProfileRequest(subject_id="nobody"), grpc.StatusCode.NOT_FOUND, set()),
        ("profiles", "UpsertProfile", _with_struct(P.UpsertProfileRequest(), "traits", BIG), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id", "traits"}),
        ("profiles", "SetConsent", P.SetConsentRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id", "channel", "purpose", "status"}),
        ("profiles", "ApplyProfileEvents", P.ApplyProfileEventsRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"events"}),
        ("profiles", "ApplyProfileEvents", P.ApplyProfileEventsRequest(events=[event_pb2.Event()] * 1001), grpc.StatusCode.INVALID_ARGUMENT, {"events"}),
        ("profiles", "EraseProfile", P.EraseProfileRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id", "reason"}),
        ("profiles", "UpdateProfile", P.UpdateProfileRequest(), grpc.StatusCode.INVALID_ARGUMENT, {"subject_id", "request_id", "set_traits"}),
        ("profiles", "UpdateProfile", P.UpdateProfileRequest(subject_id="s", request_id="r", unset_traits=["1bad", "ok"], increment={"a-b": 1},
                                                             add_tags=["Not A Name"], enter_segments=[""], exit_segments=["x"] * 101),
         grpc.StatusCode.INVALID_ARGUMENT, {"unset_traits[0]", "increment[a-b]", "add_tags[0]", "enter_segments[0]", "exit_segments"}),
        ("profiles", "UpdateProfile", _with_struct(P.UpdateProfileRequest(subject_id="s", request_id="r", unset_traits=["plan"],
                                                                          increment={"plan": 1}, add_tags=["a"], remove_tags=["a"],
                                                                          enter_segments=["s"], exit_segments=["s"]), "set_traits", {"plan": "x"}),
         grpc.StatusCode.INVALID_ARGUMENT, {"unset_traits[0]", "increment[plan]", "remove_tags[0]", "exit_segments[0]"}),
        ("profiles", "UpdateProfile", _with_struct(P.UpdateProfileRequest(subject_id="s", request_id="r"), "set_traits", BIG),
         grpc.StatusCode.INVALID_ARGUMENT, {"set_traits"}),
    ]


@pytest.mark.parametrize(("stub", "method", "request_", "code", "fields"), _cases(), ids=lambda x: x if isinstance(x, str) else "")
async def test_bad_input_is_answered_precisely(svc: Rules, stub: str, method: str, request_: Any, code: grpc.StatusCode, fields: set[str]) -> None:
    """Each bad request gets its status code and a field violation for each problem."""
    target = svc.rules if stub == "rules" else svc.profiles
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(target, method)(request_, metadata=MD)
    assert caught.value.code() == code, caught.value.details()
    found: set[str] = set()
    for detail in rpc_status.from_call(caught.value).details:  # type: ignore[arg-type]
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found = {v.field for v in bad.field_violations}
    assert fields <= found, found


async def test_writes_need_their_own_roles(svc: Rules) -> None:
    """A read-only token can read rule sets but not activate, erase or evaluate."""
    reader = admin_metadata(READER_TOKEN)
    await svc.rules.GetRuleSetVersion(R.GetRuleSetVersionRequest(rule_set="known"), metadata=reader)
    for call in (
        svc.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(rule_set="known", version=1, reason="r"), metadata=reader),
        svc.profiles.EraseProfile(P.EraseProfileRequest(subject_id="s", reason="r"), metadata=reader),
        svc.rules.Evaluate(R.EvaluateRequest(rule_set="known", subject_id="s", channel=EMAIL), metadata=reader),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_batch_reports_bad_items_without_failing_the_rest(svc: Rules) -> None:
    """EvaluateBatch answers each item: decisions for valid ones, violations for invalid ones and unknown rule sets."""
    response = await svc.rules.EvaluateBatch(R.EvaluateBatchRequest(requests=[
        R.EvaluateRequest(rule_set="known", subject_id="a", channel=EMAIL),
        R.EvaluateRequest(rule_set="known", subject_id=""),
        R.EvaluateRequest(rule_set="unknown", subject_id="b", channel=EMAIL),
    ]), metadata=MD)
    first, second, third = response.results
    assert first.HasField("decision") and not first.violations
    assert {v.field for v in second.violations} == {"subject_id", "channel"}
    assert [v.reason for v in third.violations] == ["RULE_SET_NOT_FOUND"]
