"""``overture rules`` and ``overture audit``: publish, test, inspect and audit rule sets."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from overture.rules.v1 import audit_event_pb2, rule_set_pb2, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.clock import new_id

from .client import fail, target
from .output import each_page, emit, run_async
from .specfile import SpecFileError, load_spec

__all__ = ["add_commands"]
R = rules_service_pb2


def _load(path: str) -> tuple[str, rule_set_pb2.RuleSetSpec]:
    try:
        return load_spec(Path(path), rule_set_pb2.RuleSetSpec)
    except SpecFileError as error:
        fail(str(error))


def test(args: argparse.Namespace) -> int:
    """Compile a rule set file and run its test cases locally, like ``opa test``."""
    from overture_rules.compiler import compile_rule_set
    from overture_rules.testcases import run_test_cases

    name, spec = _load(args.file)
    compiled, problems = compile_rule_set(spec)
    if compiled is not None:
        problems = run_test_cases(compiled)
    for p in problems:
        print(f"FAIL {p.field}: {p.description}")
    if problems:
        return 1
    print(f"ok   {name}: {len(spec.rules)} rules compiled, {len(spec.test_cases)} test cases passed")
    return 0


def publish(args: argparse.Namespace) -> int:
    """Create a new version from a file and, unless told not to, activate it."""
    name, spec = _load(args.file)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            created = await stub.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(
                rule_set=name, spec=spec, reason=args.reason, request_id=new_id()), metadata=t.metadata)
            version = created.rule_set_version
            verb = "unchanged, still" if created.unchanged else "created"
            print(f"rule set {name}: {verb} version {version.version} (digest {version.digest[:12]})")
            if not args.no_activate:
                activated = await stub.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(
                    rule_set=name, version=version.version, reason=args.reason, request_id=new_id()), metadata=t.metadata)
                previous = f" (was {activated.previous_version})" if activated.previous_version else ""
                print(f"rule set {name}: version {version.version} is active{previous}")
        return 0

    return run_async(go)


def activate(args: argparse.Namespace) -> int:
    """Activate a version (an older one is a rollback)."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).ActivateRuleSetVersion(
                R.ActivateRuleSetVersionRequest(rule_set=args.name, version=args.version, reason=args.reason, request_id=new_id()),
                metadata=t.metadata)
        print(f"rule set {args.name}: version {args.version} is active (was {result.previous_version or 'none'})")
        return 0

    return run_async(go)


def versions(args: argparse.Namespace) -> int:
    """List a rule set's versions."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            pages = each_page(lambda token: stub.ListRuleSetVersions(
                R.ListRuleSetVersionsRequest(rule_set=args.name, page_size=100, page_token=token), metadata=t.metadata))
            async for page in pages:
                for v in page.rule_set_versions:
                    mark = "*" if v.active else " "
                    print(f"{mark} v{v.version:<4} {v.create_time.ToJsonString()}  {v.author:<20} {v.digest[:12]}  {v.reason}")
        return 0

    return run_async(go)


def diff(args: argparse.Namespace) -> int:
    """Show what changed between two versions."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).DiffRuleSetVersions(
                R.DiffRuleSetVersionsRequest(rule_set=args.name, from_version=args.from_version, to_version=args.to_version), metadata=t.metadata)
        symbols = {1: "+", 2: "-", 3: "~"}
        emit(result, as_json=args.json, text=lambda: "\n".join(
            f"{symbols.get(c.kind, '?')} {c.path}: {c.before or ''}{' -> ' if c.before and c.after else ''}{c.after or ''}" for c in result.changes
        ) or "no changes")
        return 0

    return run_async(go)


def backtest(args: argparse.Namespace) -> int:
    """Replay stored decisions of a window on a candidate version."""
    from google.protobuf import timestamp_pb2

    window = []
    for text in (args.since, args.until):
        stamp = timestamp_pb2.Timestamp()
        try:
            stamp.FromJsonString(text)
        except ValueError:
            fail(f"{text!r} is not an RFC 3339 time, for example 2026-11-01T00:00:00Z")
        window.append(stamp)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).BacktestRuleSet(R.BacktestRuleSetRequest(
                rule_set=args.name, candidate_version=args.version, start_time=window[0], end_time=window[1], page_size=args.limit),
                metadata=t.metadata)

        def text() -> str:
            lines = [f"{result.evaluated_count} decisions replayed on {args.name} v{args.version}: {result.changed_count} would change "
                     f"({result.newly_denied_count} newly denied, {result.newly_allowed_count} newly allowed)"]
            for c in result.changes:
                why = "; ".join(v.reason for v in c.verdicts_after) or "allowed"
                lines.append(f"  {c.decision_id}  {c.subject_id:<20} {'allowed' if c.allowed_before else 'denied'} -> "
                             f"{'allowed' if c.allowed_after else 'denied'}  {why}")
            return "\n".join(lines)

        emit(result, as_json=args.json, text=text)
        return 0

    return run_async(go)


async def _audit_events(stub: rules_service_pb2_grpc.RulesServiceStub, metadata: Any) -> AsyncIterator[audit_event_pb2.AuditEvent]:
    async for page in each_page(lambda token: stub.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000, page_token=token), metadata=metadata)):
        for event in page.audit_events:
            yield event


def audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit log's hash chain and report the first tampered entry."""
    from overture_rules.audit import verify_chain

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            entries = [e async for e in _audit_events(rules_service_pb2_grpc.RulesServiceStub(channel), t.metadata)]
        problem = verify_chain(entries)
        if problem is None:
            print(f"audit chain verified: {len(entries)} entries")
            return 0
        print(f"audit chain BROKEN at entry {problem[0]}: {problem[1]}")
        return 1

    return run_async(go)


def audit_list(args: argparse.Namespace) -> int:
    """Print the audit log."""

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            async for e in _audit_events(rules_service_pb2_grpc.RulesServiceStub(channel), t.metadata):
                action = audit_event_pb2.AuditAction.Name(e.action)
                print(f"{e.sequence:>5} {e.time.ToJsonString()} {action.removeprefix('AUDIT_ACTION_').lower():<28} {e.actor:<20} {e.target}  {e.reason}")
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``rules`` and ``audit``."""
    rules = sub.add_parser("rules", help="publish, test and inspect rule sets").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rules.add_parser("test", help="compile a rule set file and run its test cases locally")
    p.add_argument("file")
    p.set_defaults(func=test)
    p = rules.add_parser("publish", help="create a version from a file and activate it", parents=[common])
    p.add_argument("file")
    p.add_argument("--reason", default="published from the CLI")
    p.add_argument("--no-activate", action="store_true", help="create the version without activating it")
    p.set_defaults(func=publish)
    p = rules.add_parser("activate", help="activate a version (an older one rolls back)", parents=[common])
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=activate)
    p = rules.add_parser("versions", help="list a rule set's versions", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=versions)
    p = rules.add_parser("diff", help="show the changes between two versions", parents=[common])
    p.add_argument("name")
    p.add_argument("from_version", type=int)
    p.add_argument("to_version", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=diff)
    p = rules.add_parser("backtest", help="replay stored decisions of a time window on a candidate version", parents=[common])
    p.add_argument("name")
    p.add_argument("version", type=int, help="the candidate version (create it with publish --no-activate)")
    p.add_argument("--since", required=True, help="window start, RFC 3339")
    p.add_argument("--until", required=True, help="window end, RFC 3339")
    p.add_argument("--limit", type=int, default=100, help="changed decisions to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=backtest)
    audit = sub.add_parser("audit", help="read and verify the audit log").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = audit.add_parser("list", help="print the audit log", parents=[common])
    p.set_defaults(func=audit_list)
    p = audit.add_parser("verify", help="verify the audit log's hash chain", parents=[common])
    p.set_defaults(func=audit_verify)
