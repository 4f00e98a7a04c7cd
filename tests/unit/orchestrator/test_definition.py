"""Unit tests of :mod:`overture_orchestrator.definition`: compiling a whole
journey (its steps' ids, its triggers, entry policy, goal and action limit).
Each step kind's checks are in test_stepcheck.py, the graph's in test_graph.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_cli.specfile import load_spec
from overture_orchestrator import stepcheck
from overture_orchestrator.definition import SCHEDULED, SEGMENT_ENTERED, compile_journey, evaluate_expression, trigger_event_type
from overture_orchestrator.rendering import render

from .specs import compiled, condition, delay, duration, exit_step, journey, outcome, send, step, violations_of

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def event(**fields: str) -> J.JourneyTrigger:
    """An event trigger."""
    return J.JourneyTrigger(event=J.EventTrigger(**fields))


# --- whole journeys --------------------------------------------------------------------


def test_example_journey_compiles() -> None:
    """examples/welcome-journey.yaml loads and compiles, starting at its send step with both templates compiled."""
    name, spec = load_spec(EXAMPLES / "welcome-journey.yaml", J.JourneySpec)
    assert name == "welcome"
    result = compiled(spec)
    assert result.first_step == "send-welcome"
    assert set(result.templates["welcome"]) == {"subject", "text_body"}
    scope = {"profile": {"traits": {"first_name": "Ada"}}, "event": {"attributes": {"plan": "pro"}}}
    assert render(result.templates["welcome"]["subject"], scope) == "Welcome to Overture, Ada!"
    assert "for the pro plan" in render(result.templates["welcome"]["text_body"], scope)


def test_multi_step_journey_compiles() -> None:
    """A journey with send, delay, condition and exit steps compiles, with its steps by id and its filter and conditions compiled."""
    result = compiled(journey(
        send("hello", "wait"), delay("wait", 86400, "check"), condition("check", 'profile["traits"]["plan"] == "pro"', then="thanks", else_="bye"),
        send("thanks", "bye"), exit_step("bye", goal="done"), trigger=event(event_type="user.signed_up", filter='attributes["plan"] == "pro"')))
    assert result.first_step == "hello" and list(result.steps) == ["hello", "wait", "check", "thanks", "bye"]
    assert set(result.conditions) == {"check"} and result.warnings == ()
    assert result.conditions["check"].matches({"profile": {"traits": {"plan": "pro"}}})
    assert not result.conditions["check"].matches({"profile": {"traits": {"plan": "free"}}})
    assert result.filter is not None and result.filter.matches({"attributes": {"plan": "pro"}})


@pytest.mark.parametrize(
    ("spec", "scope"),
    [(journey(condition("check", 'profile.traits.plan == "pro"')), {"profile": {"traits": {"plan": "pro"}}, "event": {}}),
     (journey(exit_step("bye"), trigger=event(event_type="user.signed_up", filter='attributes.plan == "pro"')),
      {"attributes": {"plan": "pro"}, "event_type": "user.signed_up"})],
    ids=["condition", "filter"],
)
def test_documented_dot_syntax_evaluates_without_deprecation(monkeypatch: pytest.MonkeyPatch, spec: J.JourneySpec, scope: dict[str, object]) -> None:
    """A condition or filter in the documented dot syntax compiles and matches the executor's dict scope without a deprecation warning."""
    # rule-engine warns once per Context; reset its flag so the outcome does not depend on test order.
    monkeypatch.setattr(stepcheck._expressions, "_mapping_fallback_warned", False)
    result = compiled(spec)
    rule = result.filter if result.filter is not None else result.conditions["check"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate_expression(rule, scope)
    assert [w.message for w in caught if issubclass(w.category, DeprecationWarning)] == []


def test_journey_without_sends_needs_no_rule_set() -> None:
    """A journey with no send step may omit the rule set."""
    compiled(journey(delay("wait", 60), rule_set=""))


def test_journey_needs_steps() -> None:
    """A journey without steps is REQUIRED at spec.steps."""
    assert violations_of(journey()) == {("spec.steps", "REQUIRED")}


def test_too_many_steps_are_rejected() -> None:
    """More than 200 steps are TOO_MANY."""
    assert violations_of(journey(*(delay(f"s{i}", 60, f"s{i + 1}" if i < 200 else "") for i in range(201)))) == {("spec.steps", "TOO_MANY")}


def test_duplicate_step_ids_are_rejected() -> None:
    """Two steps with the same id are a DUPLICATE at the second one's id."""
    assert violations_of(journey(send("hello"), send("hello"))) == {("spec.steps[1].id", "DUPLICATE")}


@pytest.mark.parametrize(("step_id", "reason"), [("", "REQUIRED"), ("Hello", "INVALID_NAME"), ("under_score", "INVALID_NAME")])
def test_step_ids_are_names(step_id: str, reason: str) -> None:
    """A step id must be a lower-case name."""
    assert violations_of(journey(send(step_id))) == {("spec.steps[0].id", reason)}


def test_prefix_roots_field_paths() -> None:
    """The prefix argument roots every field path."""
    _, violations = compile_journey(journey(send("hello", template="nope")), prefix="journey.spec")
    assert [v.field for v in violations] == ["journey.spec.steps[0].send.template"]


# --- triggers -------------------------------------------------------------------------------


def test_an_event_trigger_compiles_its_filter_and_profile_condition() -> None:
    """An event trigger's filter (over the event) and its second, ANDed condition (over the profile) are both compiled."""
    result = compiled(journey(send("hello"), trigger=event(event_type="order.completed", filter="attributes.total > 100",
                                                             profile_condition='"vip" in profile.segments')))
    assert trigger_event_type(result.spec) == "order.completed"
    assert result.filter is not None and evaluate_expression(result.filter, {"attributes": {"total": 120}})
    assert not evaluate_expression(result.filter, {"attributes": {"total": 80}})
    assert result.profile_condition is not None and evaluate_expression(result.profile_condition, {"profile": {"segments": ["vip"]}})


@pytest.mark.parametrize(("fields", "expected"), [
    ({"event_type": "User Signed Up"}, {("event_type", "INVALID_EVENT_TYPE")}),
    ({"event_type": ""}, {("event_type", "INVALID_EVENT_TYPE")}),
    ({"event_type": "user.signed_up", "filter": "attributes.plan =="}, {("filter", "SYNTAX_ERROR")}),
    ({"event_type": "user.signed_up", "profile_condition": 'profile.traits.x =~ "("'}, {("profile_condition", "INVALID_EXPRESSION")}),
], ids=["event-type", "no-event-type", "filter", "profile-condition"])
def test_event_trigger_problems(fields: dict[str, str], expected: set[tuple[str, str]]) -> None:
    """Each problem of an event trigger is reported at its field."""
    assert violations_of(journey(send("hello"), trigger=event(**fields))) == {(f"spec.trigger.event.{f}", r) for f, r in expected}


def test_a_missing_trigger_is_required() -> None:
    """A journey without a trigger is REQUIRED at spec.trigger."""
    spec = journey(send("hello"))
    spec.ClearField("trigger")
    assert violations_of(spec) == {("spec.trigger", "REQUIRED")}


def test_a_manual_trigger_listens_to_no_event() -> None:
    """A manual trigger compiles with no filter, and no event type starts it."""
    result = compiled(journey(send("hello"), trigger=J.JourneyTrigger(manual=J.ManualTrigger())))
    assert result.filter is None and trigger_event_type(result.spec) is None


def test_a_segment_entered_trigger_listens_to_that_segment_only() -> None:
    """A segment-entered trigger starts on `segment.entered` events whose segment is its own."""
    result = compiled(journey(send("hello"), trigger=J.JourneyTrigger(segment_entered=J.SegmentEnteredTrigger(segment="trial-ended"))))
    assert trigger_event_type(result.spec) == SEGMENT_ENTERED and result.filter is not None
    assert evaluate_expression(result.filter, {"attributes": {"segment": "trial-ended"}})
    assert not evaluate_expression(result.filter, {"attributes": {"segment": "customers"}})


@pytest.mark.parametrize(("segment", "reason"), [("", "REQUIRED"), ("Trial Ended", "INVALID_NAME")])
def test_a_segment_entered_trigger_names_a_segment(segment: str, reason: str) -> None:
    """A segment-entered trigger's segment must be a name."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(segment_entered=J.SegmentEnteredTrigger(segment=segment)))
    assert violations_of(spec) == {("spec.trigger.segment_entered.segment", reason)}


@pytest.mark.parametrize(("inactivity", "expected"), [
    (J.InactivityTrigger(event_type="session.started", period=duration(days=30)), set()),
    (J.InactivityTrigger(event_type="session.started", period=duration(minutes=1)), set()),
    (J.InactivityTrigger(event_type="session.started", period=duration(days=366)), set()),
    (J.InactivityTrigger(event_type="Session Started", period=duration(days=30)), {("event_type", "INVALID_EVENT_TYPE")}),
    (J.InactivityTrigger(event_type="session.started"), {("period", "OUT_OF_RANGE")}),
    (J.InactivityTrigger(event_type="session.started", period=duration(seconds=59)), {("period", "OUT_OF_RANGE")}),
    (J.InactivityTrigger(event_type="session.started", period=duration(days=367)), {("period", "OUT_OF_RANGE")}),
], ids=["30-days", "1-minute", "366-days", "event-type", "no-period", "59-seconds", "367-days"])
def test_an_inactivity_trigger_waits_between_a_minute_and_366_days(inactivity: J.InactivityTrigger, expected: set[tuple[str, str]]) -> None:
    """An inactivity trigger names an event type and a period from 1 minute to 366 days; each problem is at its field."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(inactivity=inactivity))
    assert outcome(spec) == {(f"spec.trigger.inactivity.{f}", r) for f, r in expected}
    if not expected:
        assert trigger_event_type(spec) is None  # its runs start from timers, not from the event


@pytest.mark.parametrize("schedule", [
    J.ScheduleTrigger(cron="0 9 * * MON", timezone="Europe/Berlin", segment="all"),
    J.ScheduleTrigger(cron="*/15 * * * *", profile_condition='profile.traits.plan == "trial"'),
    J.ScheduleTrigger(cron="0 9 1 * *", timezone="America/New_York", segment="customers", profile_condition="true"),
], ids=["segment", "profile-condition-in-utc", "both"])
def test_a_schedule_trigger_enrols_a_segment_or_a_profile_condition(schedule: J.ScheduleTrigger) -> None:
    """A schedule over a segment, a profile condition, or both compiles; its condition is the journey's profile condition."""
    result = compiled(journey(send("hello"), trigger=J.JourneyTrigger(schedule=schedule)))
    assert trigger_event_type(result.spec) == SCHEDULED
    assert (result.profile_condition is not None) == bool(schedule.profile_condition)


@pytest.mark.parametrize(("schedule", "expected"), [
    (J.ScheduleTrigger(cron="every monday", timezone="Mars/Olympus"), {("", "REQUIRED"), (".cron", "INVALID_CRON"), (".timezone", "INVALID_TIMEZONE")}),
    (J.ScheduleTrigger(cron="0 0 9 * * MON", segment="all"), {(".cron", "INVALID_CRON")}),
    (J.ScheduleTrigger(cron="0 9 * * *", segment="All Users"), {(".segment", "INVALID_NAME")}),
    (J.ScheduleTrigger(cron="0 9 * * *", profile_condition="profile.traits.plan =="), {(".profile_condition", "SYNTAX_ERROR")}),
], ids=["everything", "six-fields", "segment", "profile-condition"])
def test_schedule_trigger_problems(schedule: J.ScheduleTrigger, expected: set[tuple[str, str]]) -> None:
    """A schedule's bad cron (five fields only), unknown zone, bad segment or condition, or nothing to enrol, each at its field."""
    spec = journey(send("hello"), trigger=J.JourneyTrigger(schedule=schedule))
    assert violations_of(spec) == {(f"spec.trigger.schedule{f}", r) for f, r in expected}


# --- entry policy and goal ------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "expected"), [
    (J.EntryPolicy(), set()),
    (J.EntryPolicy(mode=J.ENTRY_MODE_ALWAYS), set()),
    (J.EntryPolicy(mode=J.ENTRY_MODE_ONCE), set()),
    (J.EntryPolicy(mode=J.ENTRY_MODE_ONCE_PER_WINDOW, window=duration(days=30)), set()),
    (J.EntryPolicy(mode=J.ENTRY_MODE_ONCE_PER_WINDOW), {("spec.entry.window", "REQUIRED")}),
    (J.EntryPolicy(mode=J.ENTRY_MODE_ONCE_PER_WINDOW, window=duration(seconds=-1)), {("spec.entry.window", "REQUIRED")}),
    (J.EntryPolicy(mode=9), {("spec.entry.mode", "INVALID_ENUM")}),  # type: ignore[arg-type]
], ids=["unset", "always", "once", "once-per-window", "no-window", "negative-window", "unknown-mode"])
def test_entry_policy(entry: J.EntryPolicy, expected: set[tuple[str, str]]) -> None:
    """Every entry mode compiles; once per window needs a positive window, and an unknown mode is INVALID_ENUM."""
    assert outcome(journey(send("hello"), entry=entry)) == expected


def test_a_goal_compiles_its_filter() -> None:
    """A goal event's filter is compiled over the goal event's attributes; a goal without one, or no goal, has none."""
    result = compiled(journey(send("hello"), goal=J.Goal(event_type="order.completed", filter="attributes.total >= 50")))
    assert result.goal_filter is not None and evaluate_expression(result.goal_filter, {"attributes": {"total": 50}})
    assert compiled(journey(send("hello"), goal=J.Goal(event_type="order.completed"))).goal_filter is None
    assert compiled(journey(send("hello"))).goal_filter is None


@pytest.mark.parametrize(("goal", "expected"), [
    (J.Goal(), {("event_type", "INVALID_EVENT_TYPE")}),
    (J.Goal(event_type="Order Completed"), {("event_type", "INVALID_EVENT_TYPE")}),
    (J.Goal(event_type="order.completed", filter="attributes.total >="), {("filter", "SYNTAX_ERROR")}),
], ids=["empty", "event-type", "filter"])
def test_goal_problems(goal: J.Goal, expected: set[tuple[str, str]]) -> None:
    """A set goal needs a valid event type, and its filter must compile."""
    assert violations_of(journey(send("hello"), goal=goal)) == {(f"spec.goal.{f}", r) for f, r in expected}


# --- actions per run -------------------------------------------------------------------------------


def actions(n: int, *, first: J.Step | None = None) -> list[J.Step]:
    """A chain a0, a1, ... of *n* action steps (sends, notifications and profile updates in turn), after *first* if given."""
    notify = J.NotifyStep(channel=M.CHANNEL_WEBHOOK, to="https://hooks.example.com/x", template="welcome")
    chain = [step(f"a{i}", f"a{i + 1}" if i < n - 1 else "", **{0: {"send": J.SendStep(channel=M.CHANNEL_EMAIL, template="welcome")},
                                                               1: {"notify": notify},
                                                               2: {"update_profile": J.UpdateProfileStep(add_tags=["seen"])}}[i % 3])
             for i in range(n)]
    return ([first] if first else []) + chain


@pytest.mark.parametrize(("max_actions", "expected"), [(0, 100), (1, 1), (1000, 1000)])
def test_max_actions_defaults_to_100(max_actions: int, expected: int) -> None:
    """settings.max_actions of 0 means 100; up to 1,000 is allowed."""
    assert compiled(journey(send("hello"), settings=J.JourneySettings(max_actions=max_actions))).max_actions == expected


@pytest.mark.parametrize("max_actions", [-1, 1001])
def test_max_actions_out_of_range(max_actions: int) -> None:
    """settings.max_actions below 0 or above 1,000 is OUT_OF_RANGE."""
    assert violations_of(journey(send("hello"), settings=J.JourneySettings(max_actions=max_actions))) == {
        ("spec.settings.max_actions", "OUT_OF_RANGE")}


def test_a_run_that_could_take_more_actions_than_allowed_is_refused() -> None:
    """101 action steps in a row exceed the default 100: TOO_MANY_ACTIONS, named at the first action step."""
    assert violations_of(journey(*actions(101, first=delay("wait", 60, "a0")))) == {("spec.steps[1]", "TOO_MANY_ACTIONS")}


def test_only_action_steps_count_against_the_limit() -> None:
    """Delays and conditions are not actions: three actions among them fit a limit of 3, a fourth does not."""
    limit = J.JourneySettings(max_actions=3)
    spec = journey(delay("d0", 60, "d1"), delay("d1", 60, "c"), condition("c", "true", then="a0"), *actions(3), settings=limit)
    compiled(spec)
    assert violations_of(journey(*actions(4), settings=limit)) == {("spec.steps[0]", "TOO_MANY_ACTIONS")}


@pytest.mark.parametrize(("visits", "ok"), [(25, True), (26, False)])
def test_a_bounded_loop_counts_its_actions_once_per_visit(visits: int, ok: bool) -> None:
    """Four actions in a loop visited at most 25 times make 100 (accepted); 26 visits make 104 (refused)."""
    loop = actions(4, first=delay("head", 60, "a0", max_visits=visits))
    loop[-1].next = "back"
    assert outcome(journey(*loop, condition("back", "true", then="head"))) == (set() if ok else {("spec.steps[1]", "TOO_MANY_ACTIONS")})


@pytest.mark.parametrize(("count", "warned"), [(50, False), (51, True)])
def test_more_than_50_action_steps_compile_with_a_warning(count: int, warned: bool) -> None:
    """Past 50 action steps a journey still compiles, with a MANY_ACTIONS warning at spec.steps."""
    result = compiled(journey(*actions(count)))
    assert [(w.field, w.reason) for w in result.warnings] == ([("spec.steps", "MANY_ACTIONS")] if warned else [])
