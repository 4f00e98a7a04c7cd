"""Unit tests of :mod:`overture_console.builder`: a journey spec drawn as the
builder's widgets and read back from the fields a browser posts (every
step and trigger kind, through the repository's journey files), the
conveniences and checks of reading a form, and problems keyed by the form
path of the field they name."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from overture.orchestrator.v1 import journey_pb2 as J
from overture_console.builder import MAX_STEPS, Widget, form_path, read_form, spec_values, widgets

from .forms import JOURNEY_FILES, form_of, journey_file, widget_paths

STEP_KINDS = {f.name for f in J.Step.DESCRIPTOR.oneofs_by_name["kind"].fields}
TRIGGER_KINDS = {f.name for f in J.JourneyTrigger.DESCRIPTOR.oneofs_by_name["kind"].fields}
BASE = [("name", "welcome"), ("trigger.@kind", "event"), ("trigger.event.event_type", "user.signed_up"), ("steps.0.id", "hello"),
        ("steps.0.@kind", "send"), ("steps.0.send.channel", "email"), ("steps.0.send.template", "welcome"),
        ("templates.0.@key", "welcome"), ("templates.0.subject", "Hi"), ("templates.0.text_body", "Welcome")]
"""The form of a one-step journey that reads."""


def read(fields: list[tuple[str, str]]) -> J.JourneySpec:
    """The spec *fields* read as, expecting no problem."""
    _, _, spec, problems = read_form(fields)
    assert problems == {}
    assert spec is not None
    return spec


def replaced(fields: list[tuple[str, str]], **changes: str) -> list[tuple[str, str]]:
    """*fields* with the values of the keys in *changes* (``steps__0__send__template`` for ``steps.0.send.template``) replaced."""
    new = {k.replace("__", "."): v for k, v in changes.items()}
    return [(k, new.get(k, v)) for k, v in fields]


def find(widget_list: list[Widget], path: str) -> Widget:
    """The widget at *path* among *widget_list* and their descendants."""
    for widget in widget_list:
        if widget.path == path:
            return widget
        try:
            return find(widget.children, path)
        except LookupError:
            continue
    raise LookupError(path)


# --- the round trip ----------------------------------------------------------------------


def test_the_journey_files_hold_every_step_kind_and_every_trigger_kind() -> None:
    """The journeys the round trip below reads cover each step kind and each trigger kind of the contract, so that it covers
    every kind's fields (a new kind without an example fails here)."""
    specs = [journey_file(path.stem)[1] for path in JOURNEY_FILES]
    assert {s.WhichOneof("kind") for spec in specs for s in spec.steps} == STEP_KINDS
    assert {spec.trigger.WhichOneof("kind") or "" for spec in specs} == TRIGGER_KINDS


@pytest.mark.parametrize("path", JOURNEY_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_a_journey_read_back_from_its_own_form_is_the_spec_its_file_holds(path: Path) -> None:
    """Each journey file, drawn as the builder's widgets and posted as a browser would, reads back as the very spec (and name)
    the file holds, with no problem."""
    name, spec = journey_file(path.stem)
    read_name, _, back, problems = read_form(form_of(name, spec))
    assert problems == {}
    assert read_name == name
    assert back is not None
    assert json_format.MessageToDict(back) == json_format.MessageToDict(spec)
    assert back == spec


def test_the_round_trip_keeps_values_the_form_could_lose() -> None:
    """Values with their own encoding in the form survive a round trip: a Struct (a webhook's body), a map of numbers, a
    checkbox, a multi-line body, a duration of 90 seconds, a list of words and an enum."""
    spec = J.JourneySpec(
        trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="order.placed", filter="attributes.total > 10")),
        steps=[J.Step(id="hook", next="count", webhook=J.WebhookStep(url="https://crm.example.com/hook")),
               J.Step(id="count", next="pause", update_profile=J.UpdateProfileStep(add_tags=["buyer", "recent"])),
               J.Step(id="pause", next="send", delay=J.DelayStep()),
               J.Step(id="send", send=J.SendStep(template="thanks", track_clicks=True))],
        templates={"thanks": J.MessageTemplate(subject="Thanks", text_body="Line one\n\nLine three\n")})
    spec.steps[0].webhook.body.update({"order": "{{ event.attributes.order_id }}", "items": [1, 2], "gift": False})
    spec.steps[1].update_profile.increment["orders"] = 1
    spec.steps[2].delay.duration.FromSeconds(90)
    assert read(form_of("orders", spec)) == spec


# --- drawing the widgets ------------------------------------------------------------------


def test_step_references_are_choices_of_the_journeys_steps_or_the_end_of_the_run() -> None:
    """A field that names another step (a condition's else_step) is a select of every step id, after ``(end of the run)``."""
    _, spec = journey_file("welcome-series")
    form = widgets(spec_values(spec), {})
    widget = find(form["steps"], "steps.2.condition.else_step")
    assert widget.kind == "select"
    assert widget.value == "finish-setup"
    assert widget.options == [("", "(end of the run)"), *((s.id, s.id) for s in spec.steps)]


def test_values_are_drawn_as_a_person_writes_them() -> None:
    """A duration of two days is ``2d``, the email channel ``email``, a step's kind the chosen member of a oneof offering
    every kind, a list of tags comma-separated and an expression an input with the condition builder."""
    _, spec = journey_file("welcome-series")
    form = widgets(spec_values(spec), {})
    assert find(form["steps"], "steps.1.delay.duration").value == "2d"
    channel = find(form["steps"], "steps.0.send.channel")
    assert (channel.kind, channel.value) == ("select", "email")
    assert ("sms", "sms") in channel.options
    kind = find(form["steps"], "steps.0.@kind")
    assert (kind.kind, kind.value) == ("oneof", "send")
    assert {value for value, _ in kind.options} == STEP_KINDS
    assert find(form["steps"], "steps.0.send.tags.@csv").value == "onboarding"
    assert find(form["steps"], "steps.2.condition.expression").expression


@pytest.mark.parametrize(("seconds", "shown"), [(90, "90s"), (120, "2m"), (7200, "2h"), (86400, "1d"), (90000, "25h")])
def test_a_duration_is_shown_in_its_largest_whole_unit(seconds: int, shown: str) -> None:
    """A delay's duration is drawn in the largest unit that divides it, and reads back as the same duration."""
    spec = J.JourneySpec(steps=[J.Step(id="wait", delay=J.DelayStep())])
    spec.steps[0].delay.duration.FromSeconds(seconds)
    assert find(widgets(spec_values(spec), {})["steps"], "steps.0.delay.duration").value == shown
    assert read([("name", "j"), ("steps.0.id", "wait"), ("steps.0.@kind", "delay"), ("steps.0.delay.duration", shown)]) == spec


def test_templates_are_rows_named_by_their_key() -> None:
    """Each template is a removable row whose first input is its name (``templates.N.@key``), followed by its parts."""
    _, spec = journey_file("parallel-all")
    rows = find(widgets(spec_values(spec), {})["rest"], "templates")
    assert rows.kind == "rows"
    assert [r.children[0].path for r in rows.children] == ["templates.0.@key", "templates.1.@key", "templates.2.@key"]
    subjects = {r.children[0].value: find(r.children, f"{r.path}.subject").value for r in rows.children}
    assert subjects == {"guide": "Your guide", "checklist": "Your checklist", "summary": "You are all set"}
    assert all(r.removable for r in rows.children)


def test_field_help_and_required_marks_come_from_the_catalogue() -> None:
    """The help the orchestrator's step catalogue gives a kind's field is drawn with it, required or not."""
    help_ = {"send": {"template": ("The template's name.", True)}}
    _, spec = journey_file("welcome-series")
    widget = find(widgets(spec_values(spec), help_)["steps"], "steps.0.send.template")
    assert (widget.help, widget.required) == ("The template's name.", True)
    assert widget.id == "f-steps-0-send-template"


# --- reading the form ---------------------------------------------------------------------


def test_a_map_of_plain_values_is_read_whole_from_its_json_field() -> None:
    """An update-profile step's increment (a map of numbers, drawn as one JSON field) comes back as the map it was."""
    fields = [("name", "reviews"), ("trigger.@kind", "event"), ("trigger.event.event_type", "review.submitted"),
              ("steps.0.id", "count"), ("steps.0.@kind", "update_profile"),
              ("steps.0.update_profile.increment.@json", '{"reviews_written": 1, "score": 2.5}'),
              ("steps.0.update_profile.add_tags.@csv", "reviewer")]
    name, _, spec, problems = read_form(fields)
    assert (name, problems) == ("reviews", {})
    assert spec is not None
    update = spec.steps[0].update_profile
    assert dict(update.increment) == {"reviews_written": 1.0, "score": 2.5} and list(update.add_tags) == ["reviewer"]


def test_rows_are_ordered_by_their_number_not_as_text_nor_as_posted() -> None:
    """Twelve steps posted in reverse come back in the order of their numbers (``steps.10`` after ``steps.9``, not after
    ``steps.1``); each template row's fields stay with its name."""
    fields = [("name", "long")]
    for i in reversed(range(12)):
        fields += [(f"steps.{i}.id", f"s{i}"), (f"steps.{i}.@kind", "delay"), (f"steps.{i}.delay.duration", "1h"),
                   (f"steps.{i}.next", f"s{i + 1}" if i < 11 else "")]
    fields += [("templates.10.@key", "last"), ("templates.10.subject", "b"), ("templates.2.@key", "first"), ("templates.2.subject", "a")]
    spec = read(fields)
    assert [s.id for s in spec.steps] == [f"s{i}" for i in range(12)]
    assert {k: t.subject for k, t in spec.templates.items()} == {"first": "a", "last": "b"}


def test_the_chosen_kind_drops_the_fields_of_the_kind_it_replaced() -> None:
    """A step switched from send to delay still posts the send's fields; only the chosen kind is read."""
    fields = [(k, "delay" if k == "steps.0.@kind" else v) for k, v in BASE] + [("steps.0.delay.duration", "2d")]
    spec = read(fields)
    assert spec.steps[0].WhichOneof("kind") == "delay"
    assert spec.steps[0].delay.duration.ToTimedelta().days == 2
    assert not spec.steps[0].HasField("send")


def test_a_kind_with_no_fields_is_kept() -> None:
    """A chosen kind whose fields are all empty (an exit, a manual trigger) stays chosen rather than pruned away."""
    spec = read([("name", "j"), ("trigger.@kind", "manual"), ("steps.0.id", "stop"), ("steps.0.@kind", "exit")])
    assert spec.trigger.WhichOneof("kind") == "manual"
    assert spec.steps[0].WhichOneof("kind") == "exit"


def test_text_is_read_as_a_file_would_hold_it() -> None:
    """A one-line value loses stray blanks, a textarea's CRLF line ends become LF and its blanks are kept, a checked box is
    true and an unchecked one (not posted) false, and a whole number is typed."""
    fields = [*replaced(BASE, steps__0__send__template="  welcome "), ("templates.0.text_body", "Hi\r\n  there\r\n"),
              ("steps.0.send.track_clicks", "on"), ("settings.max_actions", "5")]
    fields = [(k, v) for k, v in fields if not (k == "templates.0.text_body" and v == "Welcome")]
    spec = read(fields)
    assert spec.steps[0].send.template == "welcome"
    assert spec.templates["welcome"].text_body == "Hi\n  there\n"
    assert spec.steps[0].send.track_clicks
    assert not spec.steps[0].send.track_opens
    assert spec.settings.max_actions == 5


def test_fields_outside_the_spec_are_ignored() -> None:
    """The form's other fields (csrf, op, the sample, the condition builder's) and keys that are not form paths are not read."""
    fields = [*BASE, ("csrf", "x"), ("op", "refresh"), ("sample_traits", "{}"), ("cond-attr:trigger.event.filter", "plan|string"),
              ("steps.0.send.Template", "other"), ("steps.0.send.template<", "other")]
    assert read(fields) == read(BASE)


def test_a_form_of_too_many_steps_is_refused_before_it_is_read() -> None:
    """More than MAX_STEPS steps is one problem at ``steps`` and no spec."""
    fields = [("name", "big")] + [(f"steps.{i}.id", f"s{i}") for i in range(MAX_STEPS + 1)]
    _, values, spec, problems = read_form(fields)
    assert spec is None
    assert problems == {"steps": f"at most {MAX_STEPS} steps"}
    assert len(values["steps"]) == MAX_STEPS + 1


# --- problems at their fields --------------------------------------------------------------


@pytest.mark.parametrize(("field", "path"), [
    ("spec.steps[2].send.template", "steps.2.send.template"),
    ("steps[0].delay.duration", "steps.0.delay.duration"),
    ("spec.name", "name"),
    ("spec.trigger.event.filter", "trigger.event.filter"),
    ("spec.steps[1].split.branches[0].weight", "steps.1.split.branches.0.weight"),
    ("spec.steps[3].parallel.branches[1]", "steps.3.parallel.branches"),
    ("spec.steps[0].webhook.body.order", "steps.0.webhook.body"),
    ("spec.steps[0].update_profile.increment[Bad Name]", "steps.0.update_profile.increment"),
])
def test_a_violation_is_keyed_by_the_form_path_of_its_field(field: str, path: str) -> None:
    """A violation's field, as the orchestrator or the spec reader names it, becomes the path of the input that holds it (a list
    of words, a JSON structure and a map of plain values are each one input)."""
    assert form_path(field) == path


def test_a_template_violation_is_keyed_by_the_templates_row() -> None:
    """Templates are rows by number in the form; a violation at ``templates[welcome]`` (as the orchestrator names it) is keyed
    by the row that holds that template, quoted keys included."""
    values = {"templates": {"welcome": {}, "a.b": {}}}
    assert form_path("spec.templates[welcome].subject", values) == "templates.0.subject"
    assert form_path("templates['a.b'].data", values) == "templates.1.data"


@pytest.mark.parametrize(("change", "path", "message"), [
    ({"steps.0.send.channel": "pigeon"}, "steps.0.send.channel", "unknown value 'pigeon'"),
    ({"settings.max_actions": "many"}, "settings.max_actions", "expected a whole number"),
    ({"templates.0.data.@json": "{not json"}, "templates.0.data", "is not valid JSON"),
    ({"templates.0.data.@json": "[1, 2]"}, "templates.0.data", "expected a mapping"),
    ({"steps.0.@kind": "delay", "steps.0.delay.duration": "2x"}, "steps.0.delay.duration", "is not a duration"),
])
def test_a_problem_is_shown_at_a_field_the_form_draws(change: dict[str, str], path: str, message: str) -> None:
    """A form that does not read gives no spec and a problem keyed by the path of an input the redrawn form holds."""
    fields = [(k, change.get(k, v)) for k, v in BASE] + [(k, v) for k, v in change.items() if k not in dict(BASE)]
    _, values, spec, problems = read_form(fields)
    assert spec is None
    assert list(problems) == [path]
    assert message in problems[path]
    assert path in widget_paths(values)


def test_a_json_input_keeps_false_zero_and_empty_text() -> None:
    """What a JSON input holds is read as written: traits set to false, 0 or "" and an empty list are changes, not blanks to
    leave out (a form value that is empty is left out; a JSON value that is empty is not)."""
    fields = [("name", "j"), ("steps.0.id", "forget"), ("steps.0.@kind", "update_profile"),
              ("steps.0.update_profile.traits.@json", '{"newsletter": false, "score": 0, "nickname": "", "pets": [], "prefs": {}}'),
              ("steps.0.update_profile.increment.@json", '{"visits": 0}')]
    update = read(fields).steps[0].update_profile
    assert dict(update.traits) == {"newsletter": False, "score": 0, "nickname": "", "pets": [], "prefs": {}}
    assert dict(update.increment) == {"visits": 0}


@pytest.mark.parametrize("journey", ["welcome-series", "parallel-all", "ab-holdout"])
def test_every_violation_of_a_broken_journey_names_a_field_the_builder_draws(journey: str) -> None:
    """A journey broken in several places (a template that does not parse, a step reference to nothing, a trait name that is
    not one) is refused by the orchestrator with violations that each, as a form path, name an input the builder draws."""
    from overture_orchestrator.definition import compile_journey

    _, spec = journey_file(journey)
    name = next(iter(spec.templates))
    spec.templates[name].subject = "{% if %}"
    spec.steps[0].next = "nowhere" if not spec.steps[0].HasField("split") else spec.steps[0].next
    if spec.steps[0].HasField("split"):
        spec.steps[0].split.branches[1].step = "nowhere"
    spec.steps.append(J.Step(id="count", update_profile=J.UpdateProfileStep()))
    spec.steps[-1].update_profile.increment["Not A Trait"] = 1
    compiled, violations = compile_journey(spec)
    assert compiled is None
    values = spec_values(spec)
    drawn = widget_paths(values)
    paths = {form_path(v.field, values) for v in violations}
    assert f"templates.{list(values['templates']).index(name)}.subject" in paths
    assert f"steps.{len(spec.steps) - 1}.update_profile.increment" in paths
    assert paths <= drawn
