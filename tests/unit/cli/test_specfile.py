"""Unit tests of :mod:`overture_cli.specfile`: reading rule sets and journeys from YAML."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture.rules.v1 import rule_set_pb2 as R
from overture_cli.specfile import SpecFileError, load_spec, read_spec
from overture_rules.compiler import compile_rule_set
from overture_rules.testcases import run_test_cases
from overture_runtime.protojson import struct_to_dict

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    """Write *text* to a YAML file under *tmp_path*."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def delay_of(tmp_path: Path, duration: str) -> dt.timedelta:
    """Load a one-step journey whose delay is *duration*; return the parsed delay."""
    _, spec = load_spec(write(tmp_path, f"name: j\nsteps:\n  - id: wait\n    delay: {{duration: {duration}}}\n"), J.JourneySpec)
    return spec.steps[0].delay.duration.ToTimedelta()


# --- the examples ------------------------------------------------------------


def test_marketing_email_example_loads_and_passes_its_tests() -> None:
    """examples/marketing-email.yaml loads into a RuleSetSpec that compiles and passes its own test cases."""
    name, spec = load_spec(EXAMPLES / "marketing-email.yaml", R.RuleSetSpec)
    assert name == "marketing-email"
    assert spec.description == "Guardrails for marketing email."
    assert [(a.name, a.type, a.source) for a in spec.attributes] == [("plan", R.ATTRIBUTE_TYPE_STRING, R.ATTRIBUTE_SOURCE_TRAIT)]
    assert [(r.id, r.effect) for r in spec.rules] == [("not-churned", R.RULE_EFFECT_DENY)]
    assert [(c.channel, c.purpose) for c in spec.consents] == [(M.CHANNEL_EMAIL, "marketing")]
    assert list(spec.suppression_lists) == ["hard-bounces", "unsubscribed"]
    assert len(spec.test_cases) == 4
    assert spec.test_cases[3].category == M.MESSAGE_CATEGORY_TRANSACTIONAL
    assert struct_to_dict(spec.test_cases[0].profile.traits) == {"plan": "pro"}
    compiled, violations = compile_rule_set(spec)
    assert violations == []
    assert compiled is not None
    assert run_test_cases(compiled) == []


def test_welcome_journey_example_loads() -> None:
    """examples/welcome-journey.yaml loads into a JourneySpec with its trigger, template and send step."""
    name, spec = load_spec(EXAMPLES / "welcome-journey.yaml", J.JourneySpec)
    assert name == "welcome"
    assert spec.trigger.event.event_type == "user.signed_up"
    assert spec.rule_set == "marketing-email"
    assert set(spec.templates) == {"welcome"}
    assert "first_name" in spec.templates["welcome"].subject
    (step,) = spec.steps
    assert (step.id, step.send.channel, step.send.template) == ("send-welcome", M.CHANNEL_EMAIL, "welcome")


# --- conveniences ------------------------------------------------------------


def test_short_enum_names_map_to_full_names(tmp_path: Path) -> None:
    """`channel: email`, `effect: deny`, `type: string` and `source: trait` map to the full enum values."""
    path = write(tmp_path, """
name: r
attributes:
  - {name: plan, type: string, source: trait}
  - {name: tags_of, type: string_list, source: context}
rules:
  - {id: a, expression: 'plan == "x"', effect: deny}
  - {id: b, expression: 'plan == "y"', effect: require}
consents:
  - {channel: email, purpose: marketing}
""")
    _, spec = load_spec(path, R.RuleSetSpec)
    assert [(a.type, a.source) for a in spec.attributes] == [
        (R.ATTRIBUTE_TYPE_STRING, R.ATTRIBUTE_SOURCE_TRAIT),
        (R.ATTRIBUTE_TYPE_STRING_LIST, R.ATTRIBUTE_SOURCE_CONTEXT),
    ]
    assert [r.effect for r in spec.rules] == [R.RULE_EFFECT_DENY, R.RULE_EFFECT_REQUIRE]
    assert spec.consents[0].channel == M.CHANNEL_EMAIL


@pytest.mark.parametrize(("given", "expected"), [("email", M.CHANNEL_EMAIL), ("EMAIL", M.CHANNEL_EMAIL), ("Sms", M.CHANNEL_SMS),
                                                  ("in-app", M.CHANNEL_IN_APP), ("in_app", M.CHANNEL_IN_APP),
                                                  ("audience/sync", M.CHANNEL_AUDIENCE_SYNC), ("CHANNEL_PUSH", M.CHANNEL_PUSH)])
def test_enum_short_names_in_any_case(tmp_path: Path, given: str, expected: int) -> None:
    """Short enum names are matched in any case, with dashes or slashes for underscores, and full names still work."""
    _, spec = load_spec(write(tmp_path, f"name: r\nconsents:\n  - {{channel: {given}, purpose: marketing}}\n"), R.RuleSetSpec)
    assert spec.consents[0].channel == expected


def test_repeated_and_nested_enums_are_mapped(tmp_path: Path) -> None:
    """Enums in repeated fields and nested messages (quiet_hours.channels, frequency cap scope and window kind) are mapped."""
    path = write(tmp_path, """
name: r
quiet_hours: {start: "22:00", end: "07:00", channels: [email, push]}
frequency_caps:
  - {id: weekly, scope: channel, channel: email, limit: 3, window: {kind: rolling, duration: 7d}}
  - {id: daily, scope: all_channels, limit: 1, window: {kind: calendar_day}}
""")
    _, spec = load_spec(path, R.RuleSetSpec)
    assert list(spec.quiet_hours.channels) == [M.CHANNEL_EMAIL, M.CHANNEL_PUSH]
    weekly, daily = spec.frequency_caps
    assert (weekly.scope, weekly.channel, weekly.window.kind) == (R.CAP_SCOPE_CHANNEL, M.CHANNEL_EMAIL, R.CAP_WINDOW_KIND_ROLLING)
    assert weekly.window.duration.ToTimedelta() == dt.timedelta(days=7)
    assert (daily.scope, daily.window.kind) == (R.CAP_SCOPE_ALL_CHANNELS, R.CAP_WINDOW_KIND_CALENDAR_DAY)


def test_enums_in_journey_steps_are_mapped(tmp_path: Path) -> None:
    """Enums nested in repeated messages of a journey (send.channel, send.category) are mapped."""
    path = write(tmp_path, """
name: j
rule_set: r
templates: {t: {subject: hi}}
steps:
  - {id: s, send: {channel: sms, template: t, category: transactional}}
""")
    _, spec = load_spec(path, J.JourneySpec)
    assert (spec.steps[0].send.channel, spec.steps[0].send.category) == (M.CHANNEL_SMS, M.MESSAGE_CATEGORY_TRANSACTIONAL)
    assert spec.templates["t"].subject == "hi"


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        ("2d", dt.timedelta(days=2)),
        ("90m", dt.timedelta(minutes=90)),
        ("1.5h", dt.timedelta(minutes=90)),
        ("45s", dt.timedelta(seconds=45)),
        ("0.5s", dt.timedelta(milliseconds=500)),
        ("3600s", dt.timedelta(hours=1)),
    ],
)
def test_durations_with_units(tmp_path: Path, duration: str, expected: dt.timedelta) -> None:
    """Durations may be written with s, m, h or d, and with a fraction."""
    assert delay_of(tmp_path, duration) == expected


@pytest.mark.parametrize(("duration", "expected"), [("14d", dt.timedelta(days=14)), ("30d", dt.timedelta(days=30)),
                                                    ("1000000s", dt.timedelta(seconds=1_000_000))])
def test_long_durations(tmp_path: Path, duration: str, expected: dt.timedelta) -> None:
    """Durations of about twelve days or more (within the 366-day delay limit) load."""
    assert delay_of(tmp_path, duration) == expected


def test_duration_keeps_its_precision(tmp_path: Path) -> None:
    """A duration with a fraction keeps it exactly."""
    assert delay_of(tmp_path, "100000.5s") == dt.timedelta(seconds=100000, milliseconds=500)


@pytest.mark.parametrize(("offset", "expected"), [("-7d", -dt.timedelta(days=7)), ("-1.5h", -dt.timedelta(minutes=90)), ("3d", dt.timedelta(days=3))])
def test_an_offset_may_be_negative(tmp_path: Path, offset: str, expected: dt.timedelta) -> None:
    """A duration may carry a minus sign: a trait date's offset of `-7d` is a week before the date."""
    path = write(tmp_path, f"name: j\nsteps:\n  - id: wait\n    delay: {{until_trait: {{trait: renewal_date, offset: {offset}}}}}\n")
    _, spec = load_spec(path, J.JourneySpec)
    assert spec.steps[0].delay.until_trait.offset.ToTimedelta() == expected


def test_duration_without_unit_is_an_error(tmp_path: Path) -> None:
    """A bare number as a duration is a SpecFileError: the unit is required."""
    with pytest.raises(SpecFileError):
        delay_of(tmp_path, "30")


def test_structs_are_kept_as_given(tmp_path: Path) -> None:
    """Struct fields (traits, context) are passed through, even when their keys look like enum fields."""
    path = write(tmp_path, """
name: r
test_cases:
  - name: t
    profile: {traits: {channel: email, plan: pro, score: 3}}
    context: {effect: deny}
""")
    _, spec = load_spec(path, R.RuleSetSpec)
    assert struct_to_dict(spec.test_cases[0].profile.traits) == {"channel": "email", "plan": "pro", "score": 3.0}
    assert struct_to_dict(spec.test_cases[0].context) == {"effect": "deny"}


def test_camel_case_keys_are_accepted(tmp_path: Path) -> None:
    """Keys in the JSON mapping's camelCase form work like proto field names."""
    path = write(tmp_path, "name: r\nsuppressionLists: [a]\nquietHours: {start: '22:00', end: '07:00', defaultTimezone: UTC}\n")
    _, spec = load_spec(path, R.RuleSetSpec)
    assert list(spec.suppression_lists) == ["a"]
    assert spec.quiet_hours.default_timezone == "UTC"


def test_name_is_not_part_of_the_message(tmp_path: Path) -> None:
    """The top-level name is returned separately and does not reach the message."""
    name, spec = load_spec(write(tmp_path, "name: my-rules\ndescription: d\n"), R.RuleSetSpec)
    assert name == "my-rules"
    assert spec == R.RuleSetSpec(description="d")


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["description: no name\n", "name: ''\ndescription: d\n", "name: 42\n", "name: [a]\n"])
def test_missing_or_bad_name_is_an_error(tmp_path: Path, text: str) -> None:
    """A file without a non-empty string `name` is a SpecFileError that says so."""
    with pytest.raises(SpecFileError, match="'name' is required"):
        load_spec(write(tmp_path, text), R.RuleSetSpec)


def test_bad_yaml_is_an_error(tmp_path: Path) -> None:
    """A file that is not valid YAML is a SpecFileError naming the file."""
    path = write(tmp_path, "name: r\nrules: [ {id: a\n")
    with pytest.raises(SpecFileError, match="cannot read") as raised:
        load_spec(path, R.RuleSetSpec)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_non_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    """A file whose top level is not a mapping is a SpecFileError."""
    with pytest.raises(SpecFileError, match="mapping"):
        load_spec(write(tmp_path, text), R.RuleSetSpec)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A file that does not exist is a SpecFileError, not an OSError."""
    with pytest.raises(SpecFileError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml", R.RuleSetSpec)


@pytest.mark.parametrize(
    "text",
    [
        "name: r\nno_such_field: 1\n",
        "name: r\nconsents: [{channel: carrier-pigeon, purpose: marketing}]\n",
        "name: r\nrules: [{id: a, effect: maybe}]\n",
        "name: r\nrules: notalist\n",
    ],
)
def test_content_that_does_not_fit_the_message_is_an_error(tmp_path: Path, text: str) -> None:
    """Unknown fields, unknown enum names and wrongly shaped values are a SpecFileError naming the file."""
    path = write(tmp_path, text)
    with pytest.raises(SpecFileError) as raised:
        load_spec(path, R.RuleSetSpec)
    assert str(path) in str(raised.value)


# --- where a problem is ------------------------------------------------------------

JOURNEY = """\
name: j
rule_set: r
trigger:
  event: {event_type: user.signed_up}
templates:
  welcome: {subject: hi}
steps:
  - id: first
    delay: {duration: 1h}
  - id: second
    delay: {duration: 2h}
  - id: third
    send:
      channel: email
      template: [welcome, other]
"""


def problems_of(tmp_path: Path, text: str, message_type: type = J.JourneySpec) -> list[str]:
    """The problem lines (path:line:column: field: description) of loading *text*, with the file's folder left out."""
    path = write(tmp_path, text)
    with pytest.raises(SpecFileError) as raised:
        load_spec(path, message_type)
    return [p.text().removeprefix(str(tmp_path) + "/") for p in raised.value.problems]


def test_error_names_the_yaml_path_line_and_column(tmp_path: Path) -> None:
    """A value of the wrong shape is reported at its line and column, under its YAML path in the file's snake_case names."""
    assert problems_of(tmp_path, JOURNEY) == ["spec.yaml:15:17: steps[2].send.template: expected text, got a list"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: j\nsteps:\n  - id: a\n    send: {channel: email, tempalte: t}\n",
         "spec.yaml:4:28: steps[0].send.tempalte: unknown field 'tempalte'; did you mean 'template'?"),
        ("name: j\nsteps:\n  - id: a\n    send: {channel: emial}\n",
         "spec.yaml:4:21: steps[0].send.channel: unknown value 'emial' (did you mean 'email'?); "
         "expected one of: email, sms, push, webhook, in_app, audience_sync"),
        ("name: j\ntrigger: {event: {eventType: [a]}}\n", "spec.yaml:2:30: trigger.event.eventType: expected text, got a list"),
        ("name: j\nsteps:\n  - id: a\n    delay: {duration: 30}\n",
         "spec.yaml:4:23: steps[0].delay.duration: '30' needs a unit: write it as a number and s, m, h or d, for example 30s, 15m, 2h or 7d"),
        ("name: j\nsteps:\n  - id: a\n    retry: {max_attempts: lots}\n", "spec.yaml:4:27: steps[0].retry.max_attempts: expected a whole number, got 'lots'"),
        ("name: j\nsteps:\n  - id: a\n    send: {channel: email}\n    exit: {}\n",
         "spec.yaml:5:5: steps[0].exit: 'send' and 'exit' are both given, but only one of 'send', 'condition', 'delay', 'wait_for_event', "
         "'approval', 'update_profile', 'webhook', 'split', 'exit', 'multi_split', 'notify', 'wait_until', 'parallel' or 'join' may be"),
        ("name: j\nsteps: {id: a}\n", "spec.yaml:2:8: steps: expected a list, got a mapping"),
        ("name: j\nsettings:\n  max_causation_depth: 3\n  max_causation_depth: 4\n",
         "spec.yaml:4:3: settings.max_causation_depth: is given twice (also as 'max_causation_depth')"),
        ("name: j\nsteps:\n  - id: a\n    update_profile: {traits: {score: .nan}}\n",
         "spec.yaml:4:38: steps[0].update_profile.traits.score: '.nan' is not a finite number"),
    ],
)
def test_each_kind_of_problem_is_located_and_plainly_worded(tmp_path: Path, text: str, expected: str) -> None:
    """Unknown fields and enum values (with a suggestion), wrong types, unitless durations, two kinds in one step, duplicate keys
    and non-finite numbers are each one plain sentence at the offending line and column."""
    assert problems_of(tmp_path, text) == [expected]


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    """All the problems of a file are reported at once, in the order they appear."""
    lines = problems_of(tmp_path, "name: j\nsteps:\n  - id: a\n    send: {channel: emial}\n  - id: b\n    delay: {duration: 2}\nnope: 1\n")
    assert [line.split(": ")[1] for line in lines] == ["steps[0].send.channel", "steps[1].delay.duration", "nope"]
    assert [line.split(":")[1] for line in lines] == ["4", "6", "7"]


def test_errors_carry_none_of_the_raw_protobuf_text(tmp_path: Path) -> None:
    """Problems never show protobuf's own wording: camelCase names, "Available Fields", message type names or a doubled period."""
    text = "name: j\nrule_set: r\nruleSett: x\ntemplates: {t: {text_bodyy: x}}\nsteps:\n  - {id: a, send: {channel: 7x}}\n"
    path = write(tmp_path, text)
    with pytest.raises(SpecFileError) as raised:
        load_spec(path, J.JourneySpec)
    message = str(raised.value)
    for raw in ("Available Fields", "textBody", "ruleSet ", "overture.", "JourneySpec", "..", "Message type"):
        assert raw not in message, message
    assert len(raised.value.problems) == 3


def test_bad_yaml_is_located(tmp_path: Path) -> None:
    """A YAML syntax error is reported at its line and column."""
    (line,) = problems_of(tmp_path, "name: j\nsteps:\n  - id: a\n    send: {channel: email\n")
    assert line.startswith("spec.yaml:5:1: cannot read: not valid YAML")


def test_text_fields_take_what_was_written(tmp_path: Path) -> None:
    """An unquoted 22:00 or 1.10 in a text field is that text, not the number YAML would make of it."""
    _, spec = load_spec(write(tmp_path, "name: r\nquiet_hours: {start: 22:00, end: 07:30}\nrules: [{id: 1.10}]\n"), R.RuleSetSpec)
    assert (spec.quiet_hours.start, spec.quiet_hours.end, spec.rules[0].id) == ("22:00", "07:30", "1.10")


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    """YAML anchors and merge keys may be used to share settings between steps."""
    text = "name: j\nsteps:\n  - {id: a, send: &s {channel: email, template: t}}\n  - {id: b, send: {<<: *s, template: u}}\n"
    _, spec = load_spec(write(tmp_path, text), J.JourneySpec)
    assert [(s.send.channel, s.send.template) for s in spec.steps] == [(M.CHANNEL_EMAIL, "t"), (M.CHANNEL_EMAIL, "u")]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("spec.steps[2].send.template", "spec.yaml:15:17: steps[2].send.template: bad"),
        ("spec.steps[2].send.channel", "spec.yaml:14:16: steps[2].send.channel: bad"),
        ("spec.templates[welcome].subject", "spec.yaml:6:22: templates.welcome.subject: bad"),
        ("spec.templates.welcome.subject", "spec.yaml:6:22: templates.welcome.subject: bad"),
        ("spec.steps[2].send.rule_set", "spec.yaml:13:5: steps[2].send.rule_set: bad"),
        ("spec.steps[7].id", "spec.yaml:7:1: steps[7].id: bad"),
        ("spec.trigger.event.event_type", "spec.yaml:4:23: trigger.event.event_type: bad"),
        ("spec", "spec.yaml:1:1: bad"),
        ("name", "spec.yaml:1:7: name: bad"),
        ("request_id", "spec.yaml: request_id: bad"),
    ],
)
def test_server_field_paths_are_placed_in_the_file(tmp_path: Path, field: str, expected: str) -> None:
    """A field path as a server names it is shown at its place in the file; a field the file lacks, at the key that would hold it."""
    text = JOURNEY.replace("template: [welcome, other]", "template: welcome")
    spec = read_spec(write(tmp_path, text), J.JourneySpec)
    assert spec.locate(field, "bad").text().removeprefix(str(tmp_path) + "/") == expected


def test_placed_paths_use_the_files_own_key_spelling(tmp_path: Path) -> None:
    """When the file writes a key in camelCase, the placed path uses the file's spelling."""
    spec = read_spec(write(tmp_path, "name: r\nquietHours: {start: '22:00', end: '07:00'}\n"), R.RuleSetSpec)
    problem = spec.locate("spec.quiet_hours.end", "end must differ from start")
    assert (problem.field, problem.line, problem.column) == ("quietHours.end", 2, 35)


def test_local_compile_problems_are_placed_in_the_file(tmp_path: Path) -> None:
    """The compiler's own field paths (spec.rules[0].expression) map to the file, so `rules test` can show where."""
    spec = read_spec(write(tmp_path, "name: r\nrules:\n  - id: a\n    expression: plan ==\n    effect: deny\n"), R.RuleSetSpec)
    _, problems = compile_rule_set(spec.message)
    (problem,) = [spec.locate(p.field, p.description) for p in problems]
    assert (problem.field, problem.line, problem.column) == ("rules[0].expression", 4, 17)


def test_enum_numbers_of_the_json_mapping_still_work(tmp_path: Path) -> None:
    """An enum given by its number, as the proto JSON mapping allows, loads; an unknown number is a located error."""
    _, spec = load_spec(write(tmp_path, "name: r\nconsents: [{channel: 1, purpose: marketing}]\n"), R.RuleSetSpec)
    assert spec.consents[0].channel == M.CHANNEL_EMAIL
    (line,) = problems_of(tmp_path, "name: r\nconsents: [{channel: 999, purpose: marketing}]\n", R.RuleSetSpec)
    assert line.startswith("spec.yaml:2:22: consents[0].channel: unknown value '999'")
