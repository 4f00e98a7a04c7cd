"""Approval gates on real services and the injected clock: the pending
queue, approve and reject with a reason, the step's approver role, the
automatic rejection after 24 hours, and every decision in the audit log."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture_runtime.protojson import struct_to_dict
from tests.conftest import READER_TOKEN, admin_metadata
from tests.integration import journeys_support
from tests.integration.journeys_support import DECIDER, MD, VIP_APPROVER, World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
DAY = dt.timedelta(hours=24)


async def _waiting(world: World, subject: str) -> tuple[str, run_pb2.Run]:
    """A run of vip-offer for a new *subject*, waiting at its approval; the subject's address and the run."""
    await world.publish("vip-offer")
    address = await world.person(subject, first_name=subject.title())
    await world.ingest(event("vip.candidate", subject, spend=1200))
    run = await world.waiting_at((await world.run_of("vip-offer", subject)).run_id, "approve")
    return address, run


async def _pending(world: World) -> dict[str, O.Approval]:
    listed = await world.c.orchestrator.ListApprovals(O.ListApprovalsRequest(journey="vip-offer"), metadata=admin_metadata(READER_TOKEN))
    return {a.run_id: a for a in listed.approvals}


def _decision(run_id: str, *, approve: bool, reason: str) -> O.DecideApprovalRequest:
    return O.DecideApprovalRequest(run_id=run_id, step_id="approve", approve=approve, reason=reason)


async def test_list_approvals_shows_a_waiting_run_with_its_rendered_question_and_expiry(world: World) -> None:
    """A run at an approval step is listed with who is asked, the question rendered for its subject, and an expiry 24 hours after the request."""
    _, run = await _waiting(world, "appr-listed")
    approval = (await _pending(world))[run.run_id]
    assert (approval.step_id, approval.journey, approval.journey_version, approval.subject_id, approval.approver_role) == (
        "approve", "vip-offer", 1, "appr-listed", "vip-approvers")
    assert approval.message == "VIP terms for Appr-Listed, who spent 1200?"
    requested = approval.request_time.ToDatetime(tzinfo=dt.UTC)
    assert requested == world.step(run, "approve").start_time.ToDatetime(tzinfo=dt.UTC)
    assert approval.expire_time.ToDatetime(tzinfo=dt.UTC) == requested + DAY


async def test_an_approval_lets_the_run_go_on_and_is_audited_with_its_actor_and_reason(world: World) -> None:
    """Approved by a VIP approver with a reason, the run takes `approved` to the offer, leaves the queue, and the audit log has the decision, its actor and reason."""
    address, run = await _waiting(world, "appr-yes")
    await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason="big spender"), metadata=VIP_APPROVER)
    done = await world.ended(run.run_id)
    assert world.path(done) == [("approve", "approved"), ("send-offer", "next")]
    assert world.step(done, "approve").outcome == "approved by vera@acme"
    assert [m["Subject"] for m in world.mail_to(address)] == ["Your VIP offer"]
    assert run.run_id not in await _pending(world)
    (entry,) = await world.audit(A.AUDIT_ACTION_APPROVAL_DECIDED, f"run/{run.run_id}")
    assert (entry.actor, entry.reason) == ("vera@acme", "big spender")
    assert struct_to_dict(entry.details) == {"journey": "vip-offer", "journey_version": "1", "step_id": "approve", "decision": "approved"}


async def test_a_rejection_takes_the_reject_step_and_is_audited_with_its_reason(world: World) -> None:
    """Rejected with a reason, the run takes `rejected` to the kind no, and the audit log has the rejection, its actor and reason."""
    address, run = await _waiting(world, "appr-no")
    await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=False, reason="not yet"), metadata=MD)
    done = await world.ended(run.run_id)
    assert world.path(done) == [("approve", "rejected"), ("send-sorry", "next")]
    assert world.step(done, "approve").outcome == "rejected by alice@acme"
    assert [m["Subject"] for m in world.mail_to(address)] == ["Thanks for your loyalty"]
    (entry,) = await world.audit(A.AUDIT_ACTION_APPROVAL_DECIDED, f"run/{run.run_id}")
    assert (entry.actor, entry.reason, struct_to_dict(entry.details)["decision"]) == ("alice@acme", "not yet", "rejected")
    with pytest.raises(grpc.aio.AioRpcError) as decided:
        await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason="changed my mind"), metadata=MD)
    assert decided.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_only_a_caller_with_the_steps_approver_role_may_decide(world: World) -> None:
    """A caller with approvals.decide but not the step's vip-approvers role is PERMISSION_DENIED, a decision without a reason INVALID_ARGUMENT, and the run keeps waiting."""
    _, run = await _waiting(world, "appr-role")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason="looks fine"), metadata=DECIDER)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "vip-approvers" in (denied.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unexplained:
        await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason=""), metadata=VIP_APPROVER)
    assert unexplained.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await world.run(run.run_id)).waiting_steps == ["approve"] and run.run_id in await _pending(world)
    assert await world.audit(A.AUDIT_ACTION_APPROVAL_DECIDED, f"run/{run.run_id}") == []


async def test_an_unanswered_approval_is_rejected_after_24_hours_audited_and_a_later_decision_is_refused(world: World) -> None:
    """At its expiry on the clock a decision is FAILED_PRECONDITION; the step rejects itself by `rejected`, logged and audited as automatic, and stays refused."""
    address, run = await _waiting(world, "appr-late")
    expires = (await _pending(world))[run.run_id].expire_time.ToDatetime(tzinfo=dt.UTC)
    world.clock.advance(expires - world.clock.now())  # the decision races the workers' next poll: it must lose whatever they do
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason="sorry, late"), metadata=MD)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await world.advance(dt.timedelta())
    done = await world.ended(run.run_id)
    assert world.path(done) == [("approve", "rejected"), ("send-sorry", "next")]
    assert world.step(done, "approve").outcome == "rejected automatically: no decision before the timeout"
    assert [m["Subject"] for m in world.mail_to(address)] == ["Thanks for your loyalty"]
    (entry,) = await world.audit(A.AUDIT_ACTION_APPROVAL_DECIDED, f"run/{run.run_id}")
    assert (entry.actor, entry.reason) == ("system:orchestrator", "rejected automatically: no decision before the timeout")
    assert struct_to_dict(entry.details) == {"journey": "vip-offer", "journey_version": "1", "step_id": "approve", "decision": "expired"}
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await world.c.orchestrator.DecideApproval(_decision(run.run_id, approve=True, reason="sorry, late"), metadata=MD)
    assert after.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert run.run_id not in await _pending(world)
