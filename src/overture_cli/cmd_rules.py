"""``overture rules`` and ``overture audit``: publish, test, inspect and audit rule sets."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import fail, new_request_id, target
from .output import CliError, Fields, Table, each_page, emit, run_async, short

if TYPE_CHECKING:
    from overture.rules.v1 import audit_event_pb2, rule_set_pb2, rules_service_pb2_grpc

    from .specfile import SpecFile

__all__ = ["add_commands", "parse_when"]

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: dt.datetime) -> dt.datetime:
    """A window edge: a time that long before *now* (``30m``, ``1h``, ``2d``, ``1w``), or an RFC 3339 time."""
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        fail(f"{text!r} is neither a time ago (30m, 1h, 2d, 1w) nor an RFC 3339 time (2026-11-01T00:00:00Z)")
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _load(path: str) -> SpecFile[rule_set_pb2.RuleSetSpec]:
    from overture.rules.v1 import rule_set_pb2

    from .specfile import SpecFileError, read_spec

    try:
        return read_spec(Path(path), rule_set_pb2.RuleSetSpec)
    except SpecFileError as error:
        raise CliError(f"{path} is not a valid rule set", problems=error.problems) from None


def test(args: argparse.Namespace) -> int:
    """Compile a rule set file and run its test cases locally, like ``opa test``."""
    from overture_rules.compiler import compile_rule_set
    from overture_rules.testcases import run_test_cases

    spec = _load(args.file)
    compiled, problems = compile_rule_set(spec.message)
    if compiled is not None:
        problems = run_test_cases(compiled)
    if problems:
        raise CliError(f"rule set {spec.name}: {len(problems)} problem(s)", problems=[spec.locate(p.field, p.description) for p in problems])
    rules, cases = len(spec.message.rules), len(spec.message.test_cases)
    emit({"rule_set": spec.name, "rules": rules, "test_cases": cases, "ok": True}, as_json=args.json, human=lambda: [Fields([
        ("rule set", spec.name), ("rules", f"{rules} compiled"), ("test cases", f"{cases} passed"),
    ])])
    return 0


def publish(args: argparse.Namespace) -> int:
    """Create a new version from a file and, unless told not to, activate it."""
    from overture.rules.v1 import rules_service_pb2 as R
    from overture.rules.v1 import rules_service_pb2_grpc

    spec = _load(args.file)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            created = await stub.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(
                rule_set=spec.name, spec=spec.message, reason=args.reason, request_id=new_request_id()), metadata=t.metadata)
            version = created.rule_set_version
            activated = None
            if not args.no_activate:
                activated = await stub.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(
                    rule_set=spec.name, version=version.version, reason=args.reason, request_id=new_request_id()), metadata=t.metadata)

        def human() -> list[Fields]:
            items: list[tuple[str, object]] = [
                ("rule set", spec.name), ("version", version.version), ("digest", version.digest[:12]),
                ("status", "unchanged (same content as this version)" if created.unchanged else "created"),
            ]
            if activated is not None:
                items.append(("active", f"yes (was {activated.previous_version or 'none'})"))
            else:
                items.append(("active", "yes" if version.active else "no (activate it with `overture rules activate`)"))
            return [Fields(items)]

        emit({"created": created, "activated": activated}, as_json=args.json, human=human)
        return 0

    return run_async(go, locate=spec.locate)


def activate(args: argparse.Namespace) -> int:
    """Activate a version (an older one is a rollback)."""
    from overture.rules.v1 import rules_service_pb2 as R
    from overture.rules.v1 import rules_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).ActivateRuleSetVersion(
                R.ActivateRuleSetVersionRequest(rule_set=args.name, version=args.version, reason=args.reason, request_id=new_request_id()),
                metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("rule set", args.name), ("active", f"version {args.version}"), ("previous", result.previous_version or "none"),
        ])])
        return 0

    return run_async(go)


def versions(args: argparse.Namespace) -> int:
    """List a rule set's versions."""
    from overture.rules.v1 import rules_service_pb2 as R
    from overture.rules.v1 import rules_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            found = [v async for page in each_page(lambda token: stub.ListRuleSetVersions(
                R.ListRuleSetVersionsRequest(rule_set=args.name, page_size=100, page_token=token), metadata=t.metadata))
                for v in page.rule_set_versions]
        emit({"rule_set_versions": found}, as_json=args.json, human=lambda: [Table(
            ["active", "version", "created", "author", "digest", "reason"],
            [["*" if v.active else "", v.version, v.create_time.ToJsonString(), v.author, v.digest[:12], v.reason] for v in found],
            empty=f"rule set {args.name} has no versions",
        )])
        return 0

    return run_async(go)


def diff(args: argparse.Namespace) -> int:
    """Show what changed between two versions."""
    from overture.rules.v1 import rule_set_pb2, rules_service_pb2_grpc
    from overture.rules.v1 import rules_service_pb2 as R

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).DiffRuleSetVersions(
                R.DiffRuleSetVersionsRequest(rule_set=args.name, from_version=args.from_version, to_version=args.to_version), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [Table(
            ["change", "path", "before", "after"],
            [[short(rule_set_pb2.RuleSetChangeKind, c.kind), c.path, c.before, c.after] for c in result.changes],
            empty=f"no changes between versions {args.from_version} and {args.to_version}",
        )])
        return 0

    return run_async(go)


def backtest(args: argparse.Namespace) -> int:
    """Replay stored decisions of a window on a candidate version."""
    from google.protobuf import timestamp_pb2

    from overture.rules.v1 import rules_service_pb2 as R
    from overture.rules.v1 import rules_service_pb2_grpc

    now = dt.datetime.now(dt.UTC)
    start, end = parse_when(args.since, now=now), parse_when(args.until, now=now) if args.until else now
    if end <= start:
        fail(f"the window is empty: --until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    window = []
    for when in (start, end):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(when)
        window.append(stamp)

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            result = await rules_service_pb2_grpc.RulesServiceStub(channel).BacktestRuleSet(R.BacktestRuleSetRequest(
                rule_set=args.name, candidate_version=args.version, start_time=window[0], end_time=window[1], page_size=args.limit),
                metadata=t.metadata)

        def human() -> list[Fields | Table]:
            summary = Fields([
                ("rule set", f"{args.name} v{args.version} (candidate)"),
                ("window", f"{window[0].ToJsonString()} to {window[1].ToJsonString()}"),
                ("replayed", f"{result.evaluated_count} decisions"),
                ("would change", f"{result.changed_count} ({result.newly_denied_count} newly denied, {result.newly_allowed_count} newly allowed)"),
            ])
            changes = Table(["decision", "subject", "before", "after", "why"], [
                [c.decision_id, c.subject_id, "allowed" if c.allowed_before else "denied", "allowed" if c.allowed_after else "denied",
                 "; ".join(v.reason for v in c.verdicts_after) or "-"] for c in result.changes
            ], empty="no decision would change")
            return [summary, changes]

        emit(result, as_json=args.json, human=human)
        return 0

    return run_async(go)


async def _audit_events(stub: rules_service_pb2_grpc.RulesServiceStub, metadata: Any) -> AsyncIterator[audit_event_pb2.AuditEvent]:
    from overture.rules.v1 import rules_service_pb2 as R

    async for page in each_page(lambda token: stub.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000, page_token=token), metadata=metadata)):
        for event in page.audit_events:
            yield event


def audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit log's hash chain and report the first tampered entry."""
    from overture.rules.v1 import rules_service_pb2_grpc
    from overture_runtime.audit_chain import verify_chain

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            entries = [e async for e in _audit_events(rules_service_pb2_grpc.RulesServiceStub(channel), t.metadata)]
        problem = verify_chain(entries)
        if problem is not None:
            raise CliError(f"audit chain BROKEN at entry {problem[0]}: {problem[1]}", code="DATA_LOSS")
        emit({"verified": True, "entries": len(entries)}, as_json=args.json, human=lambda: [Fields([
            ("audit chain", "verified"), ("entries", len(entries)),
        ])])
        return 0

    return run_async(go)


def audit_list(args: argparse.Namespace) -> int:
    """Print the audit log."""
    from overture.rules.v1 import audit_event_pb2, rules_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        async with t.channel("rules") as channel:
            entries = [e async for e in _audit_events(rules_service_pb2_grpc.RulesServiceStub(channel), t.metadata)]
        emit({"audit_events": entries}, as_json=args.json, human=lambda: [Table(
            ["seq", "time", "action", "actor", "target", "reason"],
            [[e.sequence, e.time.ToJsonString(), short(audit_event_pb2.AuditAction, e.action), e.actor, e.target, e.reason] for e in entries],
            empty="the audit log is empty",
        )])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``rules`` and ``audit``."""
    rules = sub.add_parser("rules", help="publish, test and inspect rule sets").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rules.add_parser("test", help="compile a rule set file and run its test cases locally", parents=[fmt])
    p.add_argument("file")
    p.set_defaults(func=test)
    p = rules.add_parser("publish", help="create a version from a file and activate it", parents=[common])
    p.add_argument("file")
    p.add_argument("--reason", default="published from the CLI")
    p.add_argument("--no-activate", action="store_true", help="create the version without activating it (a candidate)")
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
    p.set_defaults(func=diff)
    p = rules.add_parser("backtest", help="replay stored decisions of a time window on a candidate version", parents=[common])
    p.add_argument("name")
    p.add_argument("version", type=int, help="the candidate version (create it with publish --no-activate)")
    p.add_argument("--since", required=True, help="window start: a time ago (30m, 1h, 2d, 1w) or an RFC 3339 time")
    p.add_argument("--until", default="", help="window end, in the same forms (default: now)")
    p.add_argument("--limit", type=int, default=100, help="changed decisions to list")
    p.set_defaults(func=backtest)
    audit = sub.add_parser("audit", help="read and verify the audit log").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = audit.add_parser("list", help="print the audit log", parents=[common])
    p.set_defaults(func=audit_list)
    p = audit.add_parser("verify", help="verify the audit log's hash chain", parents=[common])
    p.set_defaults(func=audit_verify)
