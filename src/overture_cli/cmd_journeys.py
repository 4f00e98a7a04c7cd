"""``overture journeys``: validate and publish journeys."""

from __future__ import annotations

import argparse
from pathlib import Path

from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture_runtime.clock import new_id

from .client import fail, target
from .output import emit, run_async
from .specfile import SpecFileError, load_spec

__all__ = ["add_commands"]
OS = orchestrator_service_pb2


def _load(path: str) -> tuple[str, journey_pb2.JourneySpec]:
    try:
        return load_spec(Path(path), journey_pb2.JourneySpec)
    except SpecFileError as error:
        fail(str(error))


def validate(args: argparse.Namespace) -> int:
    """Check a journey file locally."""
    from overture_orchestrator.definition import compile_journey

    name, spec = _load(args.file)
    _, problems = compile_journey(spec)
    for p in problems:
        print(f"FAIL {p.field}: {p.description}")
    if problems:
        return 1
    print(f"ok   {name}: {len(spec.steps)} steps")
    return 0


def publish(args: argparse.Namespace) -> int:
    """Publish a journey file as a new version."""
    name, spec = _load(args.file)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).PublishJourney(
                OS.PublishJourneyRequest(name=name, spec=spec, reason=args.reason, request_id=new_id()), metadata=t.metadata)
        verb = "unchanged, still" if result.unchanged else "published"
        print(f"journey {name}: {verb} version {result.journey.version} (digest {result.journey.digest[:12]})")
        return 0

    return run_async(go)


def get(args: argparse.Namespace) -> int:
    """Print a journey."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetJourney(
                OS.GetJourneyRequest(name=args.name, version=args.version), metadata=t.metadata)
        emit(result.journey, as_json=True)
        return 0

    return run_async(go)


def set_state(args: argparse.Namespace) -> int:
    """Pause or resume a journey."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            if args.action == "pause":
                await stub.PauseJourney(OS.PauseJourneyRequest(name=args.name, reason=args.reason), metadata=t.metadata)
            else:
                await stub.ResumeJourney(OS.ResumeJourneyRequest(name=args.name, reason=args.reason), metadata=t.metadata)
        print(f"journey {args.name}: {args.action}d")
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``journeys``."""
    journeys = sub.add_parser("journeys", help="validate and publish journeys").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = journeys.add_parser("validate", help="check a journey file locally")
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
