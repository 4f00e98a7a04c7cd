"""``overture runs``, ``overture explain`` and ``overture profiles``: what
happened to whom, and why."""

from __future__ import annotations

import argparse
import functools

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc, run_pb2
from overture.rules.v1 import decision_pb2, profile_service_pb2, profile_service_pb2_grpc, rules_service_pb2, rules_service_pb2_grpc

from .client import target
from .output import emit, run_async

__all__ = ["add_commands", "describe_decision", "describe_run"]
OS = orchestrator_service_pb2
D = decision_pb2


def _short(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def describe_run(run: run_pb2.Run) -> str:
    """A run as lines of text."""
    lines = [f"run {run.run_id}  {run.journey or '(enqueued)'} v{run.journey_version}  subject {run.subject_id}  "
             f"{_short(run_pb2.RunState, run.state, 'RUN_STATE_')}"]
    for s in run.steps:
        extra = []
        if s.decision_id:
            extra.append(f"decision {s.decision_id}")
        if s.delivery_id:
            extra.append(f"delivery {s.delivery_id}")
        lines.append(f"  - {s.step_id:<20} {_short(run_pb2.StepRunState, s.state, 'STEP_RUN_STATE_'):<10} "
                     f"{s.outcome or s.error}{'  (' + ', '.join(extra) + ')' if extra else ''}")
    return "\n".join(lines)


def describe_decision(d: decision_pb2.Decision) -> str:
    """A decision record as lines of text, for `overture explain`."""
    verdict = "ALLOWED" if d.allowed else "DENIED"
    lines = [
        f"decision {d.decision_id}: {verdict}  ({d.summary})",
        f"  subject  {d.subject_id}   channel {_short(messaging_pb2.Channel, d.channel, 'CHANNEL_')}   "
        f"category {_short(messaging_pb2.MessageCategory, d.category or messaging_pb2.MESSAGE_CATEGORY_MARKETING, 'MESSAGE_CATEGORY_')}",
        f"  rules    {d.rule_set} v{d.version}  digest {d.digest[:16]}",
        f"  at       {d.evaluate_time.ToJsonString()}   mode {_short(D.EvaluationMode, d.mode, 'EVALUATION_MODE_')}",
    ]
    if d.HasField("defer_until"):
        lines.append(f"  deferred until {d.defer_until.ToJsonString()}")
    lines.append("  verdicts:")
    for v in d.verdicts:
        lines.append(f"    {_short(D.VerdictOutcome, v.outcome, 'VERDICT_OUTCOME_'):<6} {_short(D.VerdictKind, v.kind, 'VERDICT_KIND_'):<14} "
                     f"{v.id:<22} {v.reason}")
    if d.profile_snapshot.fields:
        from overture_runtime.protojson import struct_to_dict

        lines.append(f"  profile read: {struct_to_dict(d.profile_snapshot)}")
    return "\n".join(lines)


def runs_list(args: argparse.Namespace) -> int:
    """List runs."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListRuns(OS.ListRunsRequest(
                journey=args.journey, subject_id=args.subject, trigger_event_id=args.event, page_size=args.limit), metadata=t.metadata)
        emit(result, as_json=args.json, text=lambda: "\n".join(describe_run(r) for r in result.runs) or "no runs")
        return 0

    return run_async(go)


def runs_get(args: argparse.Namespace) -> int:
    """Show a run."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetRun(OS.GetRunRequest(run_id=args.run_id), metadata=t.metadata)
        emit(result.run, as_json=args.json, text=lambda: describe_run(result.run))
        return 0

    return run_async(go)


def dead_letters(args: argparse.Namespace) -> int:
    """List failed runs."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListDeadLetters(
                OS.ListDeadLettersRequest(journey=args.journey, page_size=args.limit), metadata=t.metadata)
        emit(result, as_json=args.json, text=lambda: "\n".join(describe_run(r) for r in result.runs) or "no dead letters")
        return 0

    return run_async(go)


def redrive(args: argparse.Namespace) -> int:
    """Re-drive failed runs from the step that failed."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).RedriveDeadLetters(
                OS.RedriveDeadLettersRequest(run_ids=args.run_ids, journey=args.journey, reason=args.reason), metadata=t.metadata)
        print(f"re-drove {result.redriven_count} run(s)")
        return 0

    return run_async(go)


def explain(args: argparse.Namespace) -> int:
    """Why a subject was or was not messaged: one decision, or a subject's latest."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            if args.subject:
                found = await stub.ListDecisions(rules_service_pb2.ListDecisionsRequest(subject_id=args.target, page_size=args.limit), metadata=t.metadata)
                decisions = list(found.decisions)
            else:
                decisions = [(await stub.GetDecision(rules_service_pb2.GetDecisionRequest(decision_id=args.target), metadata=t.metadata)).decision]
        for d in decisions:
            emit(d, as_json=args.json, text=functools.partial(describe_decision, d))
        if not decisions:
            print("no decisions")
        return 0

    return run_async(go)


def profile_get(args: argparse.Namespace) -> int:
    """Show a profile."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_service_pb2.GetProfileRequest(subject_id=args.subject), metadata=t.metadata)
        emit(result.profile, as_json=True)
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``runs``, ``explain`` and ``profiles``."""
    runs = sub.add_parser("runs", help="list and show journey runs").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = runs.add_parser("list", help="list runs, newest first", parents=[common])
    p.add_argument("--subject", default="")
    p.add_argument("--journey", default="")
    p.add_argument("--event", default="", help="only runs started by this event id")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=runs_list)
    p = runs.add_parser("get", help="show a run and its steps", parents=[common])
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=runs_get)
    p = runs.add_parser("dead-letters", help="list failed runs", parents=[common])
    p.add_argument("--journey", default="")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=dead_letters)
    p = runs.add_parser("redrive", help="re-drive failed runs (by id, or all of a journey)", parents=[common])
    p.add_argument("run_ids", nargs="*")
    p.add_argument("--journey", default="")
    p.add_argument("--reason", default="")
    p.set_defaults(func=redrive)
    p = sub.add_parser("explain", help="show why a message was or was not sent", parents=[common])
    p.add_argument("target", help="a decision id, or a subject id with --subject")
    p.add_argument("--subject", action="store_true", help="explain the subject's latest decisions")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=explain)
    profiles = sub.add_parser("profiles", help="read profiles").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = profiles.add_parser("get", help="show a profile", parents=[common])
    p.add_argument("subject")
    p.set_defaults(func=profile_get)
