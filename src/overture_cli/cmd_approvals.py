"""``overture approvals``: the runs waiting for a person, and deciding them;
``overture stats``: a journey's counters; ``overture step-types``: the
catalogue of triggers and steps."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .client import target
from .output import Fields, Table, duration_text, emit, run_async

if TYPE_CHECKING:
    from overture.orchestrator.v1 import orchestrator_service_pb2

__all__ = ["add_commands", "describe_stats"]


def approvals_list(args: argparse.Namespace) -> int:
    """List pending approvals, oldest first."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListApprovals(
                OS.ListApprovalsRequest(journey=args.journey, page_size=args.limit), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Table(["run", "step", "journey", "subject", "asks", "message", "expires"], [
            [a.run_id, a.step_id, f"{a.journey} v{a.journey_version}", a.subject_id, a.approver_role, a.message, a.expire_time.ToJsonString()]
            for a in result.approvals], empty="no pending approvals")])
        return 0

    return run_async(go)


def approvals_decide(args: argparse.Namespace) -> int:
    """Approve or reject a run waiting at an approval step."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    from .cmd_runs import describe_run

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).DecideApproval(OS.DecideApprovalRequest(
                run_id=args.run_id, step_id=args.step_id, approve=args.decision == "approve", reason=args.reason), metadata=t.metadata)
        emit(result.run, as_json=args.json, human=lambda: describe_run(result.run))
        return 0

    return run_async(go)


def describe_stats(stats: orchestrator_service_pb2.JourneyStats) -> list[Fields | Table]:
    """A journey's counters: the runs, then a row per step, then the split branches."""
    runs = Fields([
        ("journey", f"{stats.name}{f' v{stats.version}' if stats.version else ' (every version)'}"), ("entered", stats.entered),
        ("active", stats.active), ("completed", stats.completed), ("converted", stats.converted), ("failed", stats.failed),
        ("dead-lettered", stats.dead_lettered), ("cancelled", stats.cancelled), ("skipped entries", stats.skipped_entries),
        ("send success rate", f"{100 * stats.send_success_rate:.1f}%"),
    ])

    def latency(step: orchestrator_service_pb2.StepStats) -> str:
        if not step.HasField("latency_p50"):
            return ""
        return " / ".join(duration_text(getattr(step, f).ToTimedelta().total_seconds()) for f in ("latency_p50", "latency_p95", "latency_p99"))

    steps = Table(["step", "entered", "completed", "skipped", "failed", "waiting", "p50 / p95 / p99", "edges"], [
        [s.step_id, s.entered, s.completed, s.skipped, s.failed, s.waiting, latency(s),
         ", ".join(f"{k} {v}" for k, v in sorted(s.edges.items()))] for s in stats.steps
    ], title="steps", empty="no step has run yet")
    arms = Table(["split", "branch", "holdout", "entered", "converted", "conversion"], [
        [a.step_id, a.arm, "yes" if a.holdout else "", a.entered, a.converted, f"{100 * a.converted / a.entered:.1f}%" if a.entered else ""]
        for a in stats.arms
    ], title="split branches", empty="no split branch taken")
    return [runs, steps, arms]


def stats(args: argparse.Namespace) -> int:
    """Show a journey's counters."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetJourneyStats(
                OS.GetJourneyStatsRequest(name=args.name, version=args.version), metadata=t.metadata)
        emit(result.stats, as_json=args.json, human=lambda: describe_stats(result.stats))
        return 0

    return run_async(go)


def step_types(args: argparse.Namespace) -> int:
    """List the trigger and step kinds."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListStepTypes(OS.ListStepTypesRequest(),
                                                                                                     metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Table(["kind", "group", "title", "edges", "required fields"], [
            [s.kind, s.category, s.title, ", ".join(s.edges), ", ".join(f.name for f in s.fields if f.required)]
            for s in [*result.triggers, *result.steps]])])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``approvals``, ``stats`` and ``step-types``."""
    approvals = sub.add_parser("approvals", help="list and decide approvals").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = approvals.add_parser("list", help="list pending approvals, oldest first", parents=[common])
    p.add_argument("--journey", default="")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=approvals_list)
    p = approvals.add_parser("decide", help="approve or reject a run waiting at an approval step", parents=[common])
    p.add_argument("run_id")
    p.add_argument("step_id")
    p.add_argument("decision", choices=["approve", "reject"])
    p.add_argument("--reason", required=True)
    p.set_defaults(func=approvals_decide)
    p = sub.add_parser("stats", help="show a journey's counters", parents=[common])
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0, help="one version (default: every version)")
    p.set_defaults(func=stats)
    p = sub.add_parser("step-types", help="list the trigger and step kinds journeys can use", parents=[common])
    p.set_defaults(func=step_types)
