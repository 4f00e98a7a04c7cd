"""``overture journeys versions|draft|archive|migrate``: a journey's versions,
its draft, retiring it, and moving its live runs to another version."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from .client import new_request_id, target
from .output import CliError, Fields, Table, each_page, emit, run_async, short

if TYPE_CHECKING:
    from overture.common.v1 import field_violation_pb2

    from .output import Problem

__all__ = ["add_commands"]


def versions(args: argparse.Namespace) -> int:
    """List a journey's published versions, newest first."""
    from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2_grpc
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
            found = [j async for page in each_page(lambda token: stub.ListJourneyVersions(
                OS.ListJourneyVersionsRequest(name=args.name, page_size=100, page_token=token), metadata=t.metadata)) for j in page.journeys]
        emit({"journeys": found}, as_json=args.json, human=lambda: [Table(
            ["version", "state", "created", "author", "digest", "reason"],
            [[j.version, short(journey_pb2.JourneyState, j.state), j.create_time.ToJsonString(), j.author, j.digest[:12], j.reason]
             for j in found], empty=f"journey {args.name} has no versions")])
        return 0

    return run_async(go)


def _violations(title: str, items: list[field_violation_pb2.FieldViolation],
                locate: Callable[[str, str], Problem] | None = None) -> Table:
    """A draft's problems or warnings, each placed in the file when *locate* can."""
    rows = [[(locate(v.field, v.description).where if locate else "") or v.field, v.reason, v.description] for v in items]
    return Table(["where", "reason", "problem"], rows, title=title, empty=f"no {title}")


def draft_save(args: argparse.Namespace) -> int:
    """Save a journey file as the journey's draft; its problems are shown, not refused."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    from .cmd_journeys import _load

    spec = _load(args.file)
    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            draft = (await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).SaveJourneyDraft(
                OS.SaveJourneyDraftRequest(name=spec.name, spec=spec.message), metadata=t.metadata)).draft
        status = f"saved with {len(draft.problems)} problem(s) publish would refuse" if draft.problems else "saved; publish would accept it"
        emit(draft, as_json=args.json, human=lambda: [
            Fields([("journey", draft.name), ("draft", status), ("warnings", len(draft.warnings))]),
            _violations("problems", list(draft.problems), spec.locate), _violations("warnings", list(draft.warnings), spec.locate)])
        return 0

    return run_async(go, locate=spec.locate)


def draft_show(args: argparse.Namespace) -> int:
    """Print a journey's draft with its problems and warnings."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    from .cmd_journeys import _step_row

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            draft = (await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).GetJourneyDraft(
                OS.GetJourneyDraftRequest(name=args.name), metadata=t.metadata)).draft
        emit(draft, as_json=args.json, human=lambda: [
            Fields([("journey", draft.name), ("author", draft.author), ("updated", draft.update_time.ToJsonString()),
                    ("problems", len(draft.problems)), ("warnings", len(draft.warnings))]),
            Table(["step", "kind", "settings"], [_step_row(s) for s in draft.spec.steps], title="steps", empty="no steps"),
            _violations("problems", list(draft.problems)), _violations("warnings", list(draft.warnings))])
        return 0

    return run_async(go)


def archive(args: argparse.Namespace) -> int:
    """Archive a journey: no new runs, live runs cancelled with the reason."""
    from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2_grpc
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).ArchiveJourney(
                OS.ArchiveJourneyRequest(name=args.name, reason=args.reason), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("journey", args.name), ("version", result.journey.version), ("state", short(journey_pb2.JourneyState, result.journey.state)),
            ("cancelled runs", result.cancelled_runs),
        ])])
        return 0

    return run_async(go)


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise CliError(f"--map {pair!r}: expected OLD_STEP=NEW_STEP")
        if old in mapping:
            raise CliError(f"--map {old}=...: step {old!r} is mapped twice")
        mapping[old] = new
    return mapping


def migrate(args: argparse.Namespace) -> int:
    """Move a journey's live runs from one version to another."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
    from overture.orchestrator.v1 import orchestrator_service_pb2_grpc

    mapping = _mapping(args.map)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("orchestrator") as channel:
            result = await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).MigrateRuns(OS.MigrateRunsRequest(
                journey=args.name, from_version=args.from_version, to_version=args.to_version, step_mapping=mapping, reason=args.reason,
                request_id=new_request_id()), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [
            Fields([("journey", args.name), ("from version", args.from_version), ("to version", result.to_version),
                    ("migrated", result.migrated_count), ("left in place", len(result.rejections))]),
            Table(["run", "reason", "why"], [[r.run_id, r.reason, r.description] for r in result.rejections], title="left in place",
                  empty="every live run moved")])
        return 0

    return run_async(go)


def add_commands(journeys: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register the lifecycle actions under ``journeys``."""
    p = journeys.add_parser("versions", help="list a journey's published versions, newest first", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=versions)
    drafts = journeys.add_parser("draft", help="save or show a journey's draft").add_subparsers(dest="draft_action", required=True,
                                                                                                metavar="ACTION")
    p = drafts.add_parser("save", help="save a journey file as its draft (problems are shown, not refused)", parents=[common])
    p.add_argument("file")
    p.set_defaults(func=draft_save)
    p = drafts.add_parser("show", help="print a journey's draft", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=draft_show)
    p = journeys.add_parser("archive", help="archive a journey: no new runs, live runs cancelled", parents=[common])
    p.add_argument("name")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=archive)
    p = journeys.add_parser("migrate", help="move a journey's live runs to another version", parents=[common])
    p.add_argument("name")
    p.add_argument("--from", dest="from_version", type=int, required=True, metavar="VERSION", help="the version whose live runs move")
    p.add_argument("--to", dest="to_version", type=int, default=0, metavar="VERSION", help="the version they move to (default: the latest)")
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="move runs at step OLD to step NEW (repeatable; unmapped steps keep their id)")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=migrate)
