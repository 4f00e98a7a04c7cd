"""The CLI's commands end to end against stand-in services: one readable text
form for people, one stable JSON form with ``--json``, and errors in both."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from overture.rules.v1 import audit_event_pb2
from overture.rules.v1 import rules_service_pb2 as R
from overture_cli.client import SERVICES
from overture_cli.main import main, parser
from tests.unit.cli.fakes import FakeServices, _ts, bad_request, not_found

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RULES = str(EXAMPLES / "marketing-email.yaml")
JOURNEY = str(EXAMPLES / "welcome-journey.yaml")


@dataclass
class Cli:
    """Runs ``overture`` in a thread (it runs its own event loop) against the fake services."""

    fake: FakeServices
    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        """Run ``overture *argv``; its exit code, stdout and stderr."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
async def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Cli]:
    """The CLI pointed at a fresh set of fake services, in an empty folder (no dev.json)."""
    fake = FakeServices()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((fake,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for svc in SERVICES:
        monkeypatch.setenv(f"OVERTURE_{svc.upper()}_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setenv("OVERTURE_TOKEN", "test-token")
    monkeypatch.chdir(tmp_path)
    try:
        yield Cli(fake, capsys)
    finally:
        await server.stop(None)


# Every command, with what its text form must show. The test below checks the list is complete.
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "events send": (["events", "send", "--type", "user.signed_up", "--subject", "alice", "--id", "signup-alice"],
                    ["event:   signup-alice", "status:  accepted"]),
    "events get": (["events", "get", "signup-alice"], ["type:", "user.signed_up", "published:", "attributes.plan:", "attributes.referrer.campaign:",
                                                       "runs:", "run-alice"]),
    "rules test": (["rules", "test", RULES], ["rule set:", "marketing-email", "4 passed"]),
    "rules publish": (["rules", "publish", RULES], ["version:", "2", "active:", "yes (was 1)"]),
    "rules activate": (["rules", "activate", "marketing-email", "2", "--reason", "tighter churn rule"], ["active:", "version 2", "previous:"]),
    "rules versions": (["rules", "versions", "marketing-email"], ["ACTIVE", "VERSION", "*", "published from the CLI"]),
    "rules diff": (["rules", "diff", "marketing-email", "1", "2"], ["CHANGE", "PATH", "changed", "rules[id=not-churned].expression"]),
    "rules backtest": (["rules", "backtest", "marketing-email", "2", "--since", "1h"],
                       ["replayed:", "2 decisions", "1 (1 newly denied, 0 newly allowed)", "DECISION", "dec-alice", "allowed", "denied"]),
    "audit list": (["audit", "list"], ["SEQ", "ACTION", "rule_set_version_created", "alice@acme"]),
    "audit verify": (["audit", "verify"], ["audit chain:", "verified"]),
    "journeys validate": (["journeys", "validate", JOURNEY], ["journey:", "welcome", "valid"]),
    "journeys publish": (["journeys", "publish", JOURNEY], ["journey:", "welcome", "published"]),
    "journeys get": (["journeys", "get", "welcome"], ["state:", "active", "STEP", "send-welcome", "channel=email", "templates.welcome.text_body:",
                                                      "Thanks for signing up."]),
    "journeys pause": (["journeys", "pause", "welcome"], ["state:", "paused"]),
    "journeys resume": (["journeys", "resume", "welcome"], ["state:", "active"]),
    "journeys versions": (["journeys", "versions", "welcome"], ["VERSION", "STATE", "active", "superseded", "2b02a9dcaad1"]),
    "journeys draft save": (["journeys", "draft", "save", JOURNEY], ["draft:", "saved with 1 problem(s)", "welcome-journey.yaml:17:",
                                                                    "UNKNOWN_TEMPLATE", "NOT_CHECKED"]),
    "journeys draft show": (["journeys", "draft", "show", "welcome"], ["problems:", "send-welcome", "spec.steps[0].send.template",
                                                                       "no template named 'welcom'"]),
    "journeys archive": (["journeys", "archive", "welcome", "--reason", "campaign over"], ["state:", "archived", "cancelled runs:", "3"]),
    "journeys migrate": (["journeys", "migrate", "welcome", "--from", "1", "--to", "2", "--map", "wait=hold", "--reason", "fix"],
                         ["migrated:", "2", "left in place:", "run-carol", "STEP_NOT_IN_VERSION"]),
    "journeys preview": (["journeys", "preview", JOURNEY, "--subject", "alice", "--attr", "plan=pro",
                          "--profile", '{"traits": {"first_name": "Alice"}, "consents": [{"channel": "email", "purpose": "marketing", "status": "granted"}]}'],
                         ["would enter:", "yes", "send-welcome", "would send template", "Welcome to Overture, Alice!", "allowed"]),
    "journeys backtest": (["journeys", "backtest", "welcome", "--since", "7d", "--poll", "0"],
                          ["backtest:", "bt-1", "active version 1", "PROJECTION", "sends email", "250", "270", "-20", "denied by consent", "+20"]),
    "runs replay": (["runs", "replay", "welcome", "--since", "2d", "--until", "1d", "--reason", "missed during the outage"],
                    ["journey:", "welcome", "events read:", "120", "runs started:", "7 (events that had started none before)"]),
    "runs list": (["runs", "list"], ["RUN", "STEP STATE", "run-bob", "skipped", "dec-bob", "run-alice", "sent"]),
    "runs get": (["runs", "get", "run-alice"], ["run:", "run-alice", "trigger event:", "signup-alice", "ATTEMPTS"]),
    "runs dead-letters": (["runs", "dead-letters"], ["run-carol", "failed", "SMTP relay refused the connection"]),
    "runs redrive": (["runs", "redrive", "run-carol", "--reason", "fixed", "--journey-version", "latest"], ["re-driven:", "1"]),
    "explain": (["explain", "dec-bob"], ["verdict:", "DENIED", "OUTCOME", "deny", "consent", "email/marketing", "profile read",
                                         "traits.plan:", "pro"]),
    "approvals list": (["approvals", "list"], ["RUN", "run-erin", "vip-gate", "vip-offer v2", "marketing.lead", "Offer Erin the VIP upgrade?"]),
    "approvals decide": (["approvals", "decide", "run-erin", "vip-gate", "approve", "--reason", "good customer"], ["run:", "run-alice"]),
    "stats": (["stats", "welcome"], ["entered:", "120", "converted:", "40", "send success rate:", "98.0%", "send-welcome", "next 115",
                                     "control", "yes", "20.0%"]),
    "step-types": (["step-types"], ["KIND", "wait_for_event", "event, timeout", "event_type"]),
    "deliveries list": (["deliveries", "list", "--status", "in_doubt"], ["KEY", "run-dave:send-welcome", "in_doubt", "connection lost"]),
    "deliveries resolve": (["deliveries", "resolve", "run-dave:send-welcome", "--as", "sent", "--reason", "relay log shows it queued"],
                           ["status:", "sent", "resolved as sent by an operator"]),
    "profiles get": (["profiles", "get", "alice"], ["subject:", "alice", "traits", "first_name:", "Alice", "CHANNEL", "granted"]),
}


def _audit_answer(fake: FakeServices) -> None:
    fake.answers["ListAuditEvents"] = R.ListAuditEventsResponse(audit_events=[audit_event_pb2.AuditEvent(
        sequence=1, action=audit_event_pb2.AUDIT_ACTION_RULE_SET_VERSION_CREATED, actor="alice@acme", time=_ts(),
        target="rule_set/marketing-email/1", reason="first",
    )])


def _leaf_commands() -> set[str]:
    found: set[str] = set()

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.add(" ".join(prefix))
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*prefix, name])

    walk(parser(), [])
    return found - {"serve", "dev"}


def test_every_command_is_covered() -> None:
    """Every command the CLI has (but serve and dev, which run services) is in this module's table of formats."""
    assert _leaf_commands() == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
async def test_every_command_prints_readable_text(cli: Cli, name: str) -> None:
    """By default each command prints key: value blocks and aligned tables: no JSON, no Python reprs."""
    argv, expected = COMMANDS[name]
    if name == "audit list":
        _audit_answer(cli.fake)
    code, out, err = await cli(*argv)
    assert (code, err) == (0, "")
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert not out.lstrip().startswith(("{", "[")), out
    assert "{'" not in out and "': " not in out, out
    assert '"event_id"' not in out and "CHANNEL_EMAIL" not in out, out


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["before", "after"])
async def test_every_command_prints_stable_json_with_the_json_flag(cli: Cli, name: str, where: str) -> None:
    """With --json (before or after the command) each command prints one JSON document, indented, keys sorted, every field present."""
    argv, _ = COMMANDS[name]
    code, out, err = await cli(*(["--json", *argv] if where == "before" else [*argv, "--json"]))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert out.rstrip("\n") == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    assert isinstance(data, dict)


async def test_json_keeps_default_fields_and_full_enum_names(cli: Cli) -> None:
    """--json output uses proto field names and full enum names, and keeps fields at their default value (allowed: false)."""
    _, out, _ = await cli("explain", "dec-bob", "--json")
    decision = json.loads(out)
    assert decision["allowed"] is False
    assert decision["channel"] == "CHANNEL_EMAIL"
    assert decision["decision_id"] == "dec-bob"
    assert decision["verdicts"][0]["kind"] == "VERDICT_KIND_CONSENT"


async def test_explain_by_subject_is_one_json_document(cli: Cli) -> None:
    """`explain --subject` prints one JSON object holding all the decisions, not one document per decision."""
    _, out, _ = await cli("--json", "explain", "--subject", "bob")
    assert [d["decision_id"] for d in json.loads(out)["decisions"]] == ["dec-bob"]


async def test_key_value_blocks_are_aligned(cli: Cli) -> None:
    """In a key: value block every value starts in the same column."""
    _, out, _ = await cli("explain", "dec-bob")
    block = out.split("\n\n")[0].splitlines()
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in block}
    assert len(columns) == 1, block


async def test_tables_are_aligned(cli: Cli) -> None:
    """In a table every column starts at the same offset on every row."""
    _, out, _ = await cli("runs", "list")
    header, *rows = out.rstrip("\n").splitlines()
    for column in ("STEP STATE", "DECISION"):
        at = header.index(column)
        assert all(row[at - 2:at] == "  " and row[at] != " " for row in rows), out


async def test_rpc_error_is_readable_text_or_json_on_stderr(cli: Cli) -> None:
    """A failed call prints its status and message on stderr (JSON with --json) and exits 1, with nothing on stdout."""
    cli.fake.answers["DiffRuleSetVersions"] = not_found("rule set marketing-email has no version 2")
    code, out, err = await cli("rules", "diff", "marketing-email", "1", "2")
    assert (code, out) == (1, "")
    assert err == "error: NOT_FOUND: rule set marketing-email has no version 2\n"
    code, out, err = await cli("rules", "diff", "marketing-email", "1", "2", "--json")
    assert (code, out) == (1, "")
    assert json.loads(err) == {"error": {"code": "NOT_FOUND", "message": "rule set marketing-email has no version 2", "problems": []}}


async def test_server_field_violations_are_placed_in_the_published_file(cli: Cli, tmp_path: Path) -> None:
    """A publish refused with BadRequest field violations shows each at its file, line and column, in the file's names."""
    path = tmp_path / "journey.yaml"
    path.write_text(
        "name: welcome\n"
        "trigger:\n"
        "  event: {event_type: user.signed_up}\n"
        "rule_set: marketing-emial\n"
        "templates:\n"
        "  welcome: {subject: Hi}\n"
        "steps:\n"
        "  - id: send-welcome\n"
        "    send:\n"
        "      channel: email\n"
        "      template: welcome\n"
    )
    cli.fake.answers["PublishJourney"] = bad_request(
        "the journey is invalid",
        ("spec.rule_set", "no rule set named 'marketing-emial'"),
        ("spec.steps[0].send.template", "template 'welcome' uses profile.trait.first_name, which cannot exist"),
        ("spec.steps[0].send.rule_set", "no rule set named 'marketing-emial'"),
        ("request_id", "request_id is required"),
    )
    code, out, err = await cli("journeys", "publish", str(path))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: INVALID_ARGUMENT: the journey is invalid",
        f"  {path}:4:11: rule_set: no rule set named 'marketing-emial'",
        f"  {path}:11:17: steps[0].send.template: template 'welcome' uses profile.trait.first_name, which cannot exist",
        f"  {path}:9:5: steps[0].send.rule_set: no rule set named 'marketing-emial'",
        f"  {path}: request_id: request_id is required",
    ]
    _, _, err = await cli("--json", "journeys", "publish", str(path))
    first = json.loads(err)["error"]["problems"][0]
    assert first == {"field": "rule_set", "description": "no rule set named 'marketing-emial'", "file": str(path), "line": 4, "column": 11}


async def test_spec_errors_are_shown_before_any_call(cli: Cli, tmp_path: Path) -> None:
    """A file that does not fit the message fails with located problems and calls no service."""
    path = tmp_path / "rules.yaml"
    path.write_text("name: r\nrules:\n  - {id: a, expression: 'plan == \"x\"', effect: maybe}\n")
    code, out, err = await cli("rules", "publish", str(path))
    assert (code, out) == (1, "")
    assert f"{path}:3:48: rules[0].effect: unknown value 'maybe'" in err
    assert cli.fake.requests == {}


async def test_backtest_takes_a_window_relative_to_now(cli: Cli) -> None:
    """`--since 1h` asks for the last hour, up to now."""
    before = dt.datetime.now(dt.UTC)
    await cli("rules", "backtest", "marketing-email", "2", "--since", "1h")
    (request,) = cli.fake.requests["BacktestRuleSet"]
    start, end = request.start_time.ToDatetime(tzinfo=dt.UTC), request.end_time.ToDatetime(tzinfo=dt.UTC)
    assert end - start == dt.timedelta(hours=1)
    assert before <= end <= dt.datetime.now(dt.UTC)
    assert request.candidate_version == 2


async def test_backtest_takes_absolute_times_too(cli: Cli) -> None:
    """`--since` and `--until` also take RFC 3339 times."""
    await cli("rules", "backtest", "marketing-email", "2", "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-23T00:00:00Z")
    (request,) = cli.fake.requests["BacktestRuleSet"]
    assert request.start_time.ToJsonString() == "2026-11-01T00:00:00Z"
    assert request.end_time.ToJsonString() == "2026-11-23T00:00:00Z"


async def test_backtest_refuses_an_empty_window(cli: Cli) -> None:
    """A window whose end is not after its start is refused before any call."""
    code, _, err = await cli("rules", "backtest", "marketing-email", "2", "--since", "1h", "--until", "2h")
    assert code == 1 and "the window is empty" in err
    assert "BacktestRuleSet" not in cli.fake.requests


async def test_publish_sends_the_file_with_a_request_id(cli: Cli) -> None:
    """`rules publish` sends the file's name and spec with a fresh request id, then activates the created version."""
    await cli("rules", "publish", RULES)
    (created,) = cli.fake.requests["CreateRuleSetVersion"]
    (activated,) = cli.fake.requests["ActivateRuleSetVersion"]
    assert created.rule_set == "marketing-email" and created.spec.rules[0].id == "not-churned"
    assert created.request_id and activated.request_id and created.request_id != activated.request_id
    assert (activated.rule_set, activated.version) == ("marketing-email", 2)
    assert cli.fake.metadata[0]["authorization"] == "Bearer test-token"


async def test_rejected_event_names_its_fields(cli: Cli) -> None:
    """An event the server rejects fails with its field violations."""
    from overture.common.v1 import field_violation_pb2
    from overture.ingest.v1 import ingest_service_pb2 as IS

    cli.fake.answers["IngestEvents"] = IS.IngestEventsResponse(results=[IS.EventResult(
        event_id="e", status=IS.EVENT_RESULT_STATUS_REJECTED,
        violations=[field_violation_pb2.FieldViolation(field="events[0].event_type", description="event_type is required")],
    )])
    code, _, err = await cli("events", "send", "--type", "x", "--subject", "s")
    assert code == 1
    assert err.splitlines() == ["error: the event was rejected", "  events[0].event_type: event_type is required"]


async def test_a_broken_dev_file_is_a_clear_error(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A half-written .overture/dev.json is reported in one line that says what to do, not with a traceback."""
    monkeypatch.delenv("OVERTURE_TOKEN")
    (tmp_path / ".overture").mkdir()
    (tmp_path / ".overture" / "dev.json").write_text('{"tok')
    code, out, err = await cli("runs", "list")
    assert (code, out) == (1, "")
    assert err == "error: cannot read .overture/dev.json (JSONDecodeError); restart `overture dev` or delete the file\n"


async def test_the_token_and_addresses_come_from_the_dev_file(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without OVERTURE_TOKEN the CLI calls with the token `overture dev` saved."""
    monkeypatch.delenv("OVERTURE_TOKEN")
    (tmp_path / ".overture").mkdir()
    (tmp_path / ".overture" / "dev.json").write_text(json.dumps({"token": "ovt_dev_saved"}))
    code, _, _ = await cli("runs", "list")
    assert code == 0
    assert cli.fake.metadata[-1]["authorization"] == "Bearer ovt_dev_saved"


async def test_migrate_sends_the_mapping_with_a_request_id_and_refuses_a_bad_map_before_calling(cli: Cli) -> None:
    """`journeys migrate` sends every --map pair, the versions and the reason with a fresh request id; a --map without `=` or a step mapped twice fails before any call."""
    await cli("journeys", "migrate", "welcome", "--from", "1", "--map", "wait=hold", "--map", "send-welcome=send-hello", "--reason", "fix")
    (request,) = cli.fake.requests["MigrateRuns"]
    assert (request.journey, request.from_version, request.to_version, request.reason) == ("welcome", 1, 0, "fix")
    assert dict(request.step_mapping) == {"wait": "hold", "send-welcome": "send-hello"} and request.request_id
    for bad, why in ((["--map", "wait"], "expected OLD_STEP=NEW_STEP"), (["--map", "a=b", "--map", "a=c"], "mapped twice")):
        code, _, err = await cli("journeys", "migrate", "welcome", "--from", "1", *bad, "--reason", "fix")
        assert code == 1 and why in err
    assert len(cli.fake.requests["MigrateRuns"]) == 1


async def test_draft_save_places_each_problem_in_the_file(cli: Cli) -> None:
    """`journeys draft save` sends the file's name and spec, and shows each problem at the file, line and column of its field."""
    code, out, _ = await cli("journeys", "draft", "save", JOURNEY)
    (request,) = cli.fake.requests["SaveJourneyDraft"]
    assert code == 0 and request.name == "welcome" and request.spec.steps[0].id == "send-welcome"
    assert f"{JOURNEY}:17:" in out and "no template named 'welcom'" in out
    assert f"{JOURNEY}:7:" in out  # the warning, at rule_set


async def test_archive_needs_a_reason(cli: Cli) -> None:
    """`journeys archive` without --reason is a usage error and calls nothing."""
    with pytest.raises(SystemExit):
        await cli("journeys", "archive", "welcome")
    assert "ArchiveJourney" not in cli.fake.requests


async def test_journeys_preview_sends_the_file_the_event_and_the_profile(cli: Cli, tmp_path: Path) -> None:
    """A journey file goes as the spec, --event and --attr as the attributes, a --profile file (short enum names) as the profile;
    a name that is no file previews the published journey; a bad profile is refused at its place before any call."""
    profile = tmp_path / "alice.yaml"
    profile.write_text("traits: {first_name: Alice}\nconsents:\n  - {channel: email, purpose: marketing, status: granted}\ntags: [vip]\n")
    code, _, err = await cli("journeys", "preview", JOURNEY, "--subject", "alice", "--event", '{"plan": "pro", "seats": 3}',
                             "--attr", "seats=5", "--profile", str(profile))
    assert (code, err) == (0, "")
    (request,) = cli.fake.requests["PreviewJourney"]
    assert request.spec.steps[0].id == "send-welcome" and not request.name and request.subject_id == "alice"
    assert dict(request.attributes) == {"plan": "pro", "seats": 5}
    assert request.profile.traits["first_name"] == "Alice" and list(request.profile.tags) == ["vip"]
    assert request.profile.consents[0].channel == 1 and request.profile.consents[0].status == 1
    code, _, _ = await cli("journeys", "preview", "welcome")
    assert code == 0 and cli.fake.requests["PreviewJourney"][-1].name == "welcome"
    profile.write_text("consents: [{channel: emial}]\n")
    code, out, err = await cli("journeys", "preview", "welcome", "--profile", str(profile))
    assert code == 1 and out == "" and "alice.yaml:1:" in err and "emial" in err
    assert len(cli.fake.requests["PreviewJourney"]) == 2


async def test_journeys_backtest_starts_then_follows_the_backtest_until_it_is_done(cli: Cli, tmp_path: Path) -> None:
    """A file goes as the candidate spec with its name and the window from --since; the command polls GetJourneyBacktest while it
    runs, and a failed backtest exits 1 with its error."""
    from overture.orchestrator.v1 import orchestrator_service_pb2 as OS

    answers = iter([OS.JourneyBacktest(backtest_id="bt-1", state=OS.BACKTEST_STATE_RUNNING, events_scanned=10, events_total=100)] * 2)
    finished = cli.fake.answers["GetJourneyBacktest"]
    cli.fake.answers["GetJourneyBacktest"] = lambda _: OS.GetJourneyBacktestResponse(backtest=next(answers, finished.backtest))  # type: ignore[union-attr]
    code, out, err = await cli("journeys", "backtest", JOURNEY, "--since", "2d", "--until", "1d", "--poll", "0")
    assert (code, err) == (0, "") and "bt-1" in out
    (start,) = cli.fake.requests["StartJourneyBacktest"]
    assert start.name == "welcome" and start.spec.steps[0].id == "send-welcome" and start.request_id
    assert dt.timedelta(hours=23) < start.end_time.ToDatetime() - start.start_time.ToDatetime() < dt.timedelta(hours=25)
    assert len(cli.fake.requests["GetJourneyBacktest"]) == 3
    cli.fake.answers["GetJourneyBacktest"] = OS.GetJourneyBacktestResponse(backtest=OS.JourneyBacktest(
        backtest_id="bt-2", state=OS.BACKTEST_STATE_FAILED, error="interrupted: start the backtest again"))
    code, out, err = await cli("journeys", "backtest", "welcome", "--since", "1d", "--poll", "0")
    assert code == 1 and "interrupted" in err


def test_a_progress_bar_is_drawn_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal the bar redraws one line with the share done and ends it; elsewhere nothing is written."""
    import sys

    from overture_cli.output import Progress

    quiet = Progress("backtest", unit="events")
    quiet.update(5, 10)
    quiet.close()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = Progress("backtest", unit="events", width=10)
    bar.update(250, 1000)
    bar.update(1000, 1000)
    bar.close()
    assert capsys.readouterr().err == "\rbacktest [##        ]  25% 250/1,000 events\rbacktest [##########] 100% 1,000/1,000 events\n"


async def test_runs_replay_sends_the_window_and_the_reason(cli: Cli) -> None:
    """The window from --since/--until, the journey and the reason go in one ReplayEvents call with a request id; no reason is refused."""
    code, _, err = await cli("runs", "replay", "welcome", "--since", "3d", "--until", "1d", "--reason", "outage")
    assert (code, err) == (0, "")
    (request,) = cli.fake.requests["ReplayEvents"]
    assert (request.journey, request.reason) == ("welcome", "outage") and request.request_id
    assert dt.timedelta(hours=47) < request.end_time.ToDatetime() - request.start_time.ToDatetime() < dt.timedelta(hours=49)
    with pytest.raises(SystemExit):
        await cli("runs", "replay", "welcome", "--since", "3d")
