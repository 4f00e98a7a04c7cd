"""``overture journeys``: validate, publish, show, pause and resume journeys (versions, drafts,
archive and migrate are in :mod:`.cmd_journey_lifecycle`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import cmd_journey_lifecycle, cmd_journey_previews
from .client import new_request_id, target
from .output import CliError, Fields, Table, emit, flatten, human_value, run_async, short

if TYPE_CHECKING:
    from overture.orchestrator.v1 import journey_pb2

    from .specfile import SpecFile

__all__ = ["add_commands"]


def _load(path: str) -> SpecFile[journey_pb2.JourneySpec]:
    from overture.orchestrator.v1 import journey_pb2

    from .specfile import SpecFileError, read_spec

    try:
        return read_spec(Path(path), journey_pb2.JourneySpec)
    except SpecFileError as error:
        raise CliError(f"{path} is not a valid journey", problems=error.problems) from None


def validate(args: argparse.Namespace) -> int:
    """Check a journey file locally."""
    from overture_orchestrator.definition import compile_journey

    spec = _load(args.file)
    _, problems = compile_journey(spec.message)
    if problems:
        raise CliError(f"journey {spec.name}: {len(problems)} problem(s)", problems=[spec.locate(p.field, p.description) for p in problems])
    steps = len(spec.message.steps)
    emit({"journey": spec.name, "steps": steps, "ok": True}, as_json=args.json, human=lambda: [Fields([
        ("journey", spec.name), ("steps", steps), ("result", "valid"),
    ])])
    return 0


def publish(args: argparse.Namespace) -> int:
    """Publish a journey file as a new version."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    spec = _load(args.file)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).PublishJourney(
                OS.PublishJourneyRequest(name=spec.name, spec=spec.message, reason=args.reason, request_id=new_request_id()), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("journey", spec.name), ("version", result.journey.version), ("digest", result.journey.digest[:12]),
            ("status", "unchanged (same content as this version)" if result.unchanged else "published"),
        ])])
        return 0

    return run_async(go, locate=spec.locate)


def _step_row(step: journey_pb2.Step) -> list[object]:
    kind = step.WhichOneof("kind") or ""
    settings = [(k.removeprefix(f"{kind}."), v) for k, v in flatten(step) if k != "id"]
    return [step.id, kind, ", ".join(f"{k}={human_value(v)}" for k, v in settings)]


def describe_journey(journey: journey_pb2.Journey) -> list[Fields | Table]:
    """A journey as a header, its steps and the rest of its spec."""
    from overture.orchestrator.v1 import journey_pb2

    header = Fields([
        ("journey", journey.name), ("version", journey.version), ("state", short(journey_pb2.JourneyState, journey.state)),
        ("digest", journey.digest[:12]), ("author", journey.author), ("created", journey.create_time.ToJsonString()),
        ("reason", journey.reason),
    ])
    steps = Table(["step", "kind", "settings"], [_step_row(s) for s in journey.spec.steps], title="steps", empty="no steps")
    rest = journey_pb2.JourneySpec()
    rest.CopyFrom(journey.spec)
    del rest.steps[:]
    return [header, steps, Fields(flatten(rest), title="spec")]


def get(args: argparse.Namespace) -> int:
    """Print a journey."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetJourney(
                OS.GetJourneyRequest(name=args.name, version=args.version), metadata=t.metadata)
        emit(result.journey, as_json=args.json, human=lambda: describe_journey(result.journey))
        return 0

    return run_async(go)


def set_state(args: argparse.Namespace) -> int:
    """Pause or resume a journey."""
    from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2_grpc
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            if args.action == "pause":
                result = await stub.PauseJourney(OS.PauseJourneyRequest(name=args.name, reason=args.reason), metadata=t.metadata)
            else:
                result = await stub.ResumeJourney(OS.ResumeJourneyRequest(name=args.name, reason=args.reason), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("journey", args.name), ("version", result.journey.version), ("state", short(journey_pb2.JourneyState, result.journey.state)),
        ])])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``journeys``."""
    journeys = sub.add_parser("journeys", help="validate and publish journeys").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = journeys.add_parser("validate", help="check a journey file locally", parents=[fmt])
    p.add_argument("file")
    p.set_defaults(func=validate)
    p = journeys.add_parser("publish", help="publish a journey file as a new version", parents=[common])
    p.add_argument("file")
    p.add_argument("--reason", default="published from the CLI")
    p.set_defaults(func=publish)
    p = journeys.add_parser("get", help="print a journey", parents=[common])
    p.add_argument("name")
    p.add_argument("--version", type=int, default=0)
    p.set_defaults(func=get)
    for action in ("pause", "resume"):
        p = journeys.add_parser(action, help=f"{action} a journey", parents=[common])
        p.add_argument("name")
        p.add_argument("--reason", default="")
        p.set_defaults(func=set_state)
    cmd_journey_lifecycle.add_commands(journeys, common)
    cmd_journey_previews.add_commands(journeys, common)
