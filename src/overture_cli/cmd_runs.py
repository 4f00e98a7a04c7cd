"""``overture runs``, ``overture explain`` and ``overture profiles``: what
happened to whom, and why."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .client import target
from .output import Fields, Table, emit, flatten_data, run_async, short, to_data

if TYPE_CHECKING:
    from overture.orchestrator.v1 import run_pb2
    from overture.rules.v1 import decision_pb2, profile_pb2

__all__ = ["add_commands", "describe_decision", "describe_profile", "describe_run", "runs_table"]


def runs_table(runs: Iterable[run_pb2.Run], *, empty: str = "no runs") -> Table:
    """Runs as one table, a row per step (a run's own columns on its first row)."""
    from overture.orchestrator.v1 import run_pb2

    rows: list[list[object]] = []
    for run in runs:
        head: list[object] = [run.run_id, f"{run.journey or '(enqueued)'} v{run.journey_version}", run.subject_id, short(run_pb2.RunState, run.state)]
        if not run.steps:
            rows.append([*head, "", "", "", ""])
        for i, s in enumerate(run.steps):
            rows.append([*(head if i == 0 else [""] * len(head)), s.step_id, short(run_pb2.StepRunState, s.state), s.outcome or s.error, s.decision_id])
    return Table(["run", "journey", "subject", "state", "step", "step state", "outcome", "decision"], rows, empty=empty)


def describe_run(run: run_pb2.Run) -> list[Fields | Table]:
    """A run: its own fields, then a row per step."""
    from overture.orchestrator.v1 import run_pb2

    header = Fields([
        ("run", run.run_id), ("journey", f"{run.journey or '(enqueued)'} v{run.journey_version}"), ("subject", run.subject_id),
        ("trigger event", run.trigger_event_id), ("state", short(run_pb2.RunState, run.state)), ("current step", run.current_step),
        ("created", run.create_time.ToJsonString() if run.HasField("create_time") else ""),
        ("updated", run.update_time.ToJsonString() if run.HasField("update_time") else ""),
    ])
    steps = Table(["step", "state", "attempts", "outcome", "error", "decision", "delivery", "wakes"], [
        [s.step_id, short(run_pb2.StepRunState, s.state), s.attempts, s.outcome, s.error, s.decision_id, s.delivery_id,
         s.wake_time.ToJsonString() if s.HasField("wake_time") else ""] for s in run.steps
    ], title="steps", empty="no steps yet")
    return [header, steps]


def describe_decision(d: decision_pb2.Decision) -> list[Fields | Table]:
    """A decision record, for `overture explain`: what was decided, each verdict, and what was read."""
    from overture.common.v1 import messaging_pb2
    from overture.rules.v1 import decision_pb2 as D

    items: list[tuple[str, object]] = [
        ("decision", d.decision_id), ("verdict", "ALLOWED" if d.allowed else "DENIED"), ("summary", d.summary), ("subject", d.subject_id),
        ("channel", short(messaging_pb2.Channel, d.channel)),
        ("category", short(messaging_pb2.MessageCategory, d.category or messaging_pb2.MESSAGE_CATEGORY_MARKETING)),
        ("rule set", f"{d.rule_set} v{d.version}"), ("digest", d.digest[:16]),
        ("evaluated", d.evaluate_time.ToJsonString()), ("mode", short(D.EvaluationMode, d.mode)),
    ]
    if d.HasField("defer_until"):
        items.append(("deferred until", d.defer_until.ToJsonString()))
    blocks: list[Fields | Table] = [Fields(items), Table(["outcome", "kind", "id", "reason"], [
        [short(D.VerdictOutcome, v.outcome), short(D.VerdictKind, v.kind), v.id, v.reason] for v in d.verdicts
    ], title="verdicts", empty="no verdicts")]
    if d.cap_counters:
        blocks.append(Table(["cap", "count", "limit", "window"], [
            [c.cap_id, c.count, c.limit, f"{c.window_start.ToJsonString()} to {c.window_end.ToJsonString()}"] for c in d.cap_counters
        ], title="frequency caps"))
    if d.profile_snapshot.fields:
        blocks.append(Fields(flatten_data("", to_data(d.profile_snapshot)), title="profile read"))
    return blocks


def describe_profile(profile: profile_pb2.Profile) -> list[Fields | Table | str]:
    """A profile: its own fields, traits, and consents."""
    from overture.common.v1 import messaging_pb2
    from overture.rules.v1 import profile_pb2

    header = Fields([
        ("subject", profile.subject_id), ("timezone", profile.timezone), ("segments", list(profile.segments)),
        ("suppression lists", list(profile.suppression_lists)), ("erased", profile.erased),
        ("updated", profile.update_time.ToJsonString() if profile.HasField("update_time") else ""),
    ])
    traits = Fields(flatten_data("", to_data(profile.traits)), title="traits") if profile.traits.fields else "traits: none"
    consents = Table(["channel", "purpose", "status", "source", "updated"], [
        [short(messaging_pb2.Channel, c.channel), c.purpose, short(profile_pb2.ConsentStatus, c.status), c.source,
         c.update_time.ToJsonString() if c.HasField("update_time") else ""] for c in profile.consents
    ], title="consents", empty="no consents")
    return [header, traits, consents]


def runs_list(args: argparse.Namespace) -> int:
    """List runs."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListRuns(OS.ListRunsRequest(
                journey=args.journey, subject_id=args.subject, trigger_event_id=args.event, page_size=args.limit), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [runs_table(result.runs)])
        return 0

    return run_async(go)


def runs_get(args: argparse.Namespace) -> int:
    """Show a run."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetRun(OS.GetRunRequest(run_id=args.run_id), metadata=t.metadata)
        emit(result.run, as_json=args.json, human=lambda: describe_run(result.run))
        return 0

    return run_async(go)


def dead_letters(args: argparse.Namespace) -> int:
    """List failed runs."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        poison = args.kind == "event"
        kind = OS.DEAD_LETTER_KIND_EVENT if poison else OS.DEAD_LETTER_KIND_RUN
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ListDeadLetters(
                OS.ListDeadLettersRequest(journey=args.journey, page_size=args.limit, kind=kind), metadata=t.metadata)
        if poison:
            emit(result, as_json=args.json, human=lambda: [Table(
                ["entry", "event", "type", "attempts", "last error"],
                [[e.entry_id, e.event.event_id or "(unreadable)", e.event.event_type, str(e.attempts), e.last_error[:80]]
                 for e in result.poison_events], empty="no poison entries")])
        else:
            emit(result, as_json=args.json, human=lambda: [runs_table(result.runs, empty="no dead letters")])
        return 0

    return run_async(go)


def redrive(args: argparse.Namespace) -> int:
    """Re-drive failed runs from the step that failed."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).RedriveDeadLetters(
                OS.RedriveDeadLettersRequest(
                    run_ids=args.run_ids, journey=args.journey, reason=args.reason, entry_ids=args.entry,
                    journey_version_policy=OS.JOURNEY_VERSION_POLICY_LATEST if args.journey_version == "latest"
                    else OS.JOURNEY_VERSION_POLICY_PINNED,
                ), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Fields([("re-driven", f"{result.redriven_count}")]), Table(
            ["run or entry", "reason", "not re-driven because"], [[r.run_id or r.entry_id, r.reason, r.description] for r in result.rejections],
            title="rejections", empty="no rejections",
        )])
        return 0

    return run_async(go)


def explain(args: argparse.Namespace) -> int:
    """Why a subject was or was not messaged: one decision, or a subject's latest."""
    from overture.rules.v1 import rules_service_pb2, rules_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            if args.subject:
                found = await stub.ListDecisions(rules_service_pb2.ListDecisionsRequest(subject_id=args.target, page_size=args.limit), metadata=t.metadata)
                emit({"decisions": list(found.decisions)}, as_json=args.json, human=lambda: [
                    block for d in found.decisions for block in describe_decision(d)] or [f"no decisions about {args.target}"])
            else:
                got = await stub.GetDecision(rules_service_pb2.GetDecisionRequest(decision_id=args.target), metadata=t.metadata)
                emit(got.decision, as_json=args.json, human=lambda: describe_decision(got.decision))
        return 0

    return run_async(go)


def profile_get(args: argparse.Namespace) -> int:
    """Show a profile."""
    from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_service_pb2.GetProfileRequest(subject_id=args.subject), metadata=t.metadata)
        emit(result.profile, as_json=args.json, human=lambda: describe_profile(result.profile))
        return 0

    return run_async(go)


def replay(args: argparse.Namespace) -> int:
    """Feed a window of stored events to a journey's trigger again (runs start once per event, whatever the replays)."""
    import datetime as dt

    from google.protobuf import timestamp_pb2

    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    from .client import new_request_id
    from .cmd_rules import parse_when
    from .output import fail

    now = dt.datetime.now(dt.UTC)
    start = parse_when(args.since, now=now)
    end = parse_when(args.until, now=now) if args.until else now
    if end <= start:
        fail(f"the window is empty: --until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    request = OS.ReplayEventsRequest(journey=args.journey, reason=args.reason, request_id=new_request_id())
    request.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(start.timestamp())))
    request.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(end.timestamp())))

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ReplayEvents(
                request, metadata=t.metadata, timeout=args.timeout)
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("journey", args.journey), ("window", f"{start.isoformat()} to {end.isoformat()}"), ("events read", result.events_read),
            ("runs started", f"{result.runs_started} (events that had started none before)"),
        ])])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``runs``, ``explain`` and ``profiles``."""
    runs = sub.add_parser("runs", help="list and show journey runs").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = runs.add_parser("list", help="list runs, newest first", parents=[common])
    p.add_argument("--subject", default="")
    p.add_argument("--journey", default="")
    p.add_argument("--event", default="", help="only runs started by this event id")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=runs_list)
    p = runs.add_parser("get", help="show a run and its steps", parents=[common])
    p.add_argument("run_id")
    p.set_defaults(func=runs_get)
    p = runs.add_parser("dead-letters", help="list failed runs, or poison stream entries with --kind event", parents=[common])
    p.add_argument("--journey", default="")
    p.add_argument("--kind", choices=["run", "event"], default="run", help="failed runs (default) or poison stream entries")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=dead_letters)
    p = runs.add_parser("redrive", help="re-drive failed runs (by id, or all of a journey) and poison entries (--entry)", parents=[common])
    p.add_argument("run_ids", nargs="*")
    p.add_argument("--journey", default="")
    p.add_argument("--entry", action="append", default=[], metavar="ENTRY_ID", help="a poison entry to handle again (repeatable)")
    p.add_argument("--journey-version", choices=["pinned", "latest"], default="pinned",
                   help="continue on the run's own journey version (default) or move it to the latest")
    p.add_argument("--reason", default="")
    p.set_defaults(func=redrive)
    p = runs.add_parser("replay", help="feed a window of stored events to a journey's trigger again (idempotent)", parents=[common])
    p.add_argument("journey")
    p.add_argument("--since", required=True, help="window start: a time ago (30m, 1h, 2d, 1w) or an RFC 3339 time")
    p.add_argument("--until", default="", help="window end (default: now)")
    p.add_argument("--reason", required=True, help="why (it goes to the audit log)")
    p.add_argument("--timeout", type=float, default=600.0, help="how long to wait for the replay, in seconds (default 600)")
    p.set_defaults(func=replay)
    p = sub.add_parser("explain", help="show why a message was or was not sent", parents=[common])
    p.add_argument("target", help="a decision id, or a subject id with --subject")
    p.add_argument("--subject", action="store_true", help="explain the subject's latest decisions")
    p.add_argument("--limit", type=int, default=5)
    p.set_defaults(func=explain)
    profiles = sub.add_parser("profiles", help="read profiles").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = profiles.add_parser("get", help="show a profile", parents=[common])
    p.add_argument("subject")
    p.set_defaults(func=profile_get)
