"""``overture journeys preview`` and ``overture journeys backtest``: what a
journey would do, before it does anything."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import new_request_id, target
from .output import CliError, Fields, Progress, Table, emit, fail, run_async, short

if TYPE_CHECKING:
    from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
    from overture.rules.v1 import profile_pb2

    from .specfile import SpecFile

__all__ = ["add_commands", "journey_or_spec"]


def journey_or_spec(given: str) -> tuple[str, SpecFile[journey_pb2.JourneySpec] | None]:
    """A published journey's name, or a journey file (a path that exists, or ends in .yaml/.yml/.json) read locally."""
    from overture.orchestrator.v1 import journey_pb2

    from .specfile import SpecFileError, read_spec

    path = Path(given)
    if not (path.exists() or path.suffix in (".yaml", ".yml", ".json")):
        return given, None
    try:
        return "", read_spec(path, journey_pb2.JourneySpec)
    except SpecFileError as error:
        raise CliError(f"{given} is not a valid journey", problems=error.problems) from None


def _attributes(text: str, pairs: list[str]) -> dict[str, Any]:
    """The trigger event's attributes: ``--event`` (a JSON object, or @file), then each ``--attr key=value``."""
    attributes: dict[str, Any] = {}
    if text:
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text()
            except OSError as error:
                fail(f"--event: cannot read {text[1:]}: {error.strerror or error}")
        try:
            given = json.loads(text)
        except ValueError as error:
            fail(f"--event is not valid JSON: {error}")
        if not isinstance(given, dict):
            fail("--event must be a JSON object of the event's attributes, for example '{\"plan\": \"pro\"}'")
        attributes.update(given.get("attributes", given) if isinstance(given.get("attributes"), dict) else given)
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--attr expects key=value, got {item!r}")
        try:
            attributes[key] = json.loads(value)
        except ValueError:
            attributes[key] = value
    return attributes


def _profile(given: str) -> profile_pb2.Profile | None:
    """``--profile``: inline JSON, or a YAML or JSON file, in the proto's JSON mapping with short enum names."""
    from overture.rules.v1 import profile_pb2

    from .specfile import SpecFileError, parse_message

    if not given:
        return None
    inline = given.lstrip().startswith("{")
    path = Path("--profile" if inline else given)
    try:
        text = given if inline else path.read_text()
    except OSError as error:
        fail(f"--profile: cannot read {given}: {error.strerror or error}")
    try:
        return parse_message(text, profile_pb2.Profile, path=path)
    except SpecFileError as error:
        raise CliError("--profile is not a valid profile", problems=error.problems) from None


def _describe_preview(name: str, subject: str, result: orchestrator_service_pb2.PreviewJourneyResponse) -> list[Fields | Table]:
    from overture.orchestrator.v1 import run_pb2

    header = Fields([("journey", name), ("subject", subject),
                     ("would enter", "yes" if result.entered else f"no: {result.entry_reason}")])
    steps = Table(["step", "state", "edge", "at", "outcome"], [
        [s.step_id, short(run_pb2.StepRunState, s.state), s.edge, s.start_time.ToJsonString() if s.HasField("start_time") else "",
         s.error or s.outcome] for s in result.steps], title="path", empty="no steps")
    messages = Table(["step", "channel", "to", "subject", "decision"], [
        [m.step_id, short(_channel_enum(), m.channel), m.to, m.subject,
         ("allowed" if m.decision.allowed else f"denied: {m.decision.summary}") if m.HasField("decision") else "not decided (not to the subject)"]
        for m in result.messages], title="messages", empty="nothing would be sent")
    return [header, steps, messages]


def _channel_enum() -> Any:
    from overture.common.v1 import messaging_pb2

    return messaging_pb2.Channel


def preview(args: argparse.Namespace) -> int:
    """Walk a journey (a file, or a published one by name) for a subject, with no side effect."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    name, spec = journey_or_spec(args.journey)
    request = OS.PreviewJourneyRequest(name=name, subject_id=args.subject, profile=_profile(args.profile))
    if spec is not None:
        request.spec.CopyFrom(spec.message)
    try:
        request.attributes.update(_attributes(args.event, args.attr))
    except (ValueError, TypeError) as error:
        fail(f"the event's attributes cannot be sent: {error}")

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).PreviewJourney(request, metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: _describe_preview(name or (spec.name if spec else ""), args.subject, result))
        return 0

    return run_async(go, locate=spec.locate if spec is not None else None)


_REPORT_ROWS = (("runs entered", "runs_entered"), ("subjects entered", "subjects_entered"), ("converted", "runs_converted"),
                ("waiting for approval", "runs_pending"), ("failed", "runs_failed"))


def _compare(backtest: orchestrator_service_pb2.JourneyBacktest) -> list[Fields | Table]:
    """A backtest's two reports side by side, with the change."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

    cand, base = backtest.candidate, backtest.baseline
    has_base = backtest.HasField("baseline")
    header = Fields([
        ("backtest", backtest.backtest_id), ("journey", backtest.name), ("state", short(OS.BacktestState, backtest.state)),
        ("events read", f"{backtest.events_scanned:,}"),
        ("candidate", f"version {cand.version}" if cand.version else "the given definition"),
        ("compared with", f"active version {base.version}" if has_base else "nothing (no active version)"),
        *([("error", backtest.error)] if backtest.error else []),
    ])
    rows: list[list[object]] = []

    def row(label: str, new: int, old: int) -> None:
        rows.append([label, new, old if has_base else "-", f"{new - old:+d}" if has_base else "-"])

    for label, name in _REPORT_ROWS:
        row(label, getattr(cand, name), getattr(base, name))
    for title, field in (("sends", "sends_by_channel"), ("denied by", "denials_by_guardrail"), ("edge", "edge_counts")):
        new_map, old_map = getattr(cand, field), getattr(base, field)
        for key in sorted(set(new_map) | set(old_map)):
            row(f"{title} {key}", new_map.get(key, 0), old_map.get(key, 0))
    return [header, Table(["projection", "candidate", "active", "change"], rows, empty="nothing entered")]


def backtest(args: argparse.Namespace) -> int:
    """Replay a window of stored events through a journey (a file, or the latest version) and its active version; no side effects."""
    import asyncio

    from google.protobuf import timestamp_pb2

    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    from .cmd_rules import parse_when

    name, spec = journey_or_spec(args.journey)
    now = dt.datetime.now(dt.UTC)
    start = parse_when(args.since, now=now)
    end = parse_when(args.until, now=now) if args.until else None
    if start >= (end or now):
        fail(f"the window is empty: it must end after --since ({start.isoformat()})")
    request = OS.StartJourneyBacktestRequest(name=name or (spec.name if spec else ""), request_id=new_request_id())
    if spec is not None:
        request.spec.CopyFrom(spec.message)
    request.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(start.timestamp())))
    if end is not None:
        request.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=int(end.timestamp())))

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            found = (await stub.StartJourneyBacktest(request, metadata=t.metadata)).backtest
            progress = Progress(f"backtest {found.backtest_id}", unit="events")
            try:
                while not args.no_wait and found.state == OS.BACKTEST_STATE_RUNNING:
                    progress.update(found.events_scanned, found.events_total)
                    await asyncio.sleep(args.poll)
                    found = (await stub.GetJourneyBacktest(OS.GetJourneyBacktestRequest(backtest_id=found.backtest_id),
                                                           metadata=t.metadata)).backtest
                if found.state != OS.BACKTEST_STATE_RUNNING:
                    progress.update(found.events_scanned, found.events_scanned)
            finally:
                progress.close()
        emit(found, as_json=args.json, human=lambda: _compare(found))
        if found.state == OS.BACKTEST_STATE_FAILED:
            raise CliError(f"backtest {found.backtest_id} failed: {found.error}")
        return 0

    return run_async(go, locate=spec.locate if spec is not None else None)


def add_commands(journeys: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``journeys preview`` and ``journeys backtest``."""
    p = journeys.add_parser("preview", help="walk a journey for a subject: the path, each message and its decision, nothing sent",
                            parents=[common])
    p.add_argument("journey", metavar="FILE|NAME", help="a journey file, or the name of a published journey (its latest version)")
    p.add_argument("--subject", default="preview-subject", help="the subject to preview for (its stored profile, unless --profile)")
    p.add_argument("--event", default="", metavar="JSON", help="the trigger event's attributes as a JSON object, or @file")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="an attribute; VALUE is JSON or a string")
    p.add_argument("--profile", default="", metavar="FILE|JSON",
                   help="a profile to preview with instead of the stored one: YAML/JSON file or inline JSON "
                        "(traits, consents, segments, tags, timezone)")
    p.set_defaults(func=preview)
    p = journeys.add_parser("backtest", help="replay a window of stored events through a journey and its active version, nothing sent",
                            parents=[common])
    p.add_argument("journey", metavar="NAME|FILE", help="a published journey (its latest version), or a candidate journey file")
    p.add_argument("--since", required=True, help="window start: a time ago (30m, 1h, 2d, 1w) or an RFC 3339 time")
    p.add_argument("--until", default="", help="window end (default: now)")
    p.add_argument("--no-wait", action="store_true", help="start it and print its id; do not wait for the report")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    p.set_defaults(func=backtest)
