"""Unit tests of :mod:`overture_orchestrator.stepcheck`: for every step kind,
a valid step compiles and each of its problems is reported at its field,
under the step's index."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.definition import evaluate_expression
from overture_orchestrator.stepcheck import SUPPORTED_STEPS

from .specs import compiled, condition, delay, duration, journey, outcome, send, step

DAY = duration(days=1)


def problems(*steps: J.Step, **fields: object) -> set[tuple[str, str]]:
    """The (field, reason) pairs of a journey made of *steps*; empty when it compiles."""
    return outcome(journey(*steps, **fields))  # type: ignore[arg-type]


# --- any step ------------------------------------------------------------------


def test_a_step_needs_a_kind() -> None:
    """A step with no kind is REQUIRED at the step."""
    assert problems(J.Step(id="empty")) == {("spec.steps[0]", "REQUIRED")}


def test_every_kind_of_the_contract_runs() -> None:
    """Every step kind of the contract is one this release runs."""
    kinds = {f.name for f in J.Step.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert kinds == SUPPORTED_STEPS


@pytest.mark.parametrize(("url", "expected"), [
    ("https://crm.example.com/hooks/{{ profile.subject_id }}", set()),
    ("", {("spec.steps[0].webhook.url", "REQUIRED")}),
    ("ftp://crm.example.com", {("spec.steps[0].webhook.url", "INVALID_URL")}),
    ("https://crm.example.com/{{ profile.trait.id }}", {("spec.steps[0].webhook.url", "UNKNOWN_TEMPLATE_VARIABLE")}),
])
def test_a_webhook_step_needs_an_http_url_whose_template_can_render(url: str, expected: set[tuple[str, str]]) -> None:
    """A webhook step's URL is required, http(s), and reads only names that can exist; its body strings are templates too."""
    assert problems(step("call", webhook=J.WebhookStep(url=url))) == expected


@pytest.mark.parametrize(("visits", "expected"), [(0, set()), (1000, set()), (-1, {("spec.steps[0].max_visits", "OUT_OF_RANGE")}),
                                               (1001, {("spec.steps[0].max_visits", "OUT_OF_RANGE")})])
def test_max_visits_is_between_0_and_1000(visits: int, expected: set[tuple[str, str]]) -> None:
    """max_visits outside 0-1000 is OUT_OF_RANGE at the step's max_visits."""
    assert problems(delay("wait", 60, max_visits=visits)) == expected


# --- send and notify -----------------------------------------------------------


@pytest.mark.parametrize(("send_step", "expected"), [
    (send("hello", category=M.MESSAGE_CATEGORY_TRANSACTIONAL, tags=["onboarding"], priority=100, to="{{ profile.traits.work_email }}",
          track_opens=True, track_clicks=True), set()),
    (J.Step(id="hello", send=J.SendStep()), {("spec.steps[0].send.channel", "REQUIRED"), ("spec.steps[0].send.template", "REQUIRED")}),
    (send("hello", template="nope"), {("spec.steps[0].send.template", "UNKNOWN_TEMPLATE")}),
    (send("hello", priority=-1), {("spec.steps[0].send.priority", "OUT_OF_RANGE")}),
    (send("hello", priority=101), {("spec.steps[0].send.priority", "OUT_OF_RANGE")}),
    (send("hello", to="{{ profile.traits.email "), {("spec.steps[0].send.to", "TEMPLATE_SYNTAX_ERROR")}),
    (send("hello", to="{{ email }}"), {("spec.steps[0].send.to", "UNKNOWN_TEMPLATE_VARIABLE")}),
], ids=["valid", "empty", "unknown-template", "priority-low", "priority-high", "to-syntax", "to-unknown-name"])
def test_send_problems(send_step: J.Step, expected: set[tuple[str, str]]) -> None:
    """A full send step compiles, and each problem of one is reported at its field."""
    assert problems(send_step) == expected


@pytest.mark.parametrize(("rule_set", "reason"), [("", "REQUIRED"), ("Marketing Email", "INVALID_NAME")])
def test_a_send_step_needs_a_rule_set(rule_set: str, reason: str) -> None:
    """A journey with a send step must name a valid rule set, which decides its sends."""
    assert problems(send("hello"), rule_set=rule_set) == {("spec.rule_set", reason)}


def notify(**fields: object) -> J.Step:
    """A notify step to a Slack-style webhook; *fields* override the NotifyStep's."""
    given: dict[str, object] = {"channel": M.CHANNEL_WEBHOOK, "to": "https://hooks.example.com/{{ run.journey }}", "template": "welcome"}
    return step("tell-sales", notify=J.NotifyStep(**{**given, **fields}))  # type: ignore[arg-type]


def test_a_notify_step_compiles_without_a_rule_set() -> None:
    """A notification (or a task with an assignee) goes to the team, not the subject: it needs no rule set."""
    compiled(journey(notify(task=True, assignee="sales-team"), rule_set=""))


@pytest.mark.parametrize(("fields", "expected"), [
    ({"channel": M.CHANNEL_UNSPECIFIED}, {("channel", "REQUIRED")}),
    ({"template": ""}, {("template", "REQUIRED")}),
    ({"template": "nope"}, {("template", "UNKNOWN_TEMPLATE")}),
    ({"to": ""}, {("to", "REQUIRED")}),
    ({"to": "{% if %}"}, {("to", "TEMPLATE_SYNTAX_ERROR")}),
    ({"to": "{{ profile.trait.slack }}"}, {("to", "UNKNOWN_TEMPLATE_VARIABLE")}),
    ({"assignee": "sales-team"}, {("assignee", "ASSIGNEE_WITHOUT_TASK")}),
], ids=["channel", "template", "unknown-template", "to", "to-syntax", "to-unknown-name", "assignee-without-task"])
def test_notify_problems(fields: dict[str, object], expected: set[tuple[str, str]]) -> None:
    """Each problem of a notify step is reported at its field."""
    assert problems(notify(**fields)) == {(f"spec.steps[0].notify.{f}", r) for f, r in expected}


# --- branching -----------------------------------------------------------------


def test_a_condition_compiles_its_expression() -> None:
    """A condition's expression is compiled under the step's id."""
    rule = compiled(journey(condition("check", 'profile.traits.plan == "pro"'))).conditions["check"]
    assert [evaluate_expression(rule, {"profile": {"traits": {"plan": p}}}) for p in ("pro", "free")] == [True, False]


@pytest.mark.parametrize(("expression", "reason"), [("", "REQUIRED"), ("profile.traits.plan == ", "SYNTAX_ERROR"),
                                                    ('profile.traits.plan =~ "("', "INVALID_EXPRESSION")])
def test_condition_problems(expression: str, reason: str) -> None:
    """A missing, unparsable or invalid (a bad regex) condition expression is reported at the expression."""
    assert problems(condition("check", expression)) == {("spec.steps[0].condition.expression", reason)}


def cases(*pairs: tuple[str, str]) -> J.Step:
    """A multi-split of (name, expression) cases, each ending the run."""
    return step("route", multi_split=J.MultiSplitStep(cases=[J.SplitCase(name=n, expression=e) for n, e in pairs]))


def test_a_multi_split_compiles_its_cases_in_order() -> None:
    """A multi-split's cases compile in order, each with its name, expression and target."""
    spec = journey(step("route", multi_split=J.MultiSplitStep(cases=[J.SplitCase(name="vip", expression='"vip" in profile.segments', step="a"),
                                                                     J.SplitCase(name="pro", expression="true")])), send("a"))
    [(first, rule, target), (second, _, end)] = compiled(spec).cases["route"]
    assert (first, target, second, end) == ("vip", "a", "pro", "")
    assert evaluate_expression(rule, {"profile": {"segments": ["vip"]}}) and not evaluate_expression(rule, {"profile": {"segments": []}})


@pytest.mark.parametrize(("split", "expected"), [
    (cases(), {("cases", "REQUIRED")}),
    (cases(("vip", "")), {("cases[0].expression", "REQUIRED")}),
    (cases(("vip", "true"), ("pro", "profile.traits.plan ==")), {("cases[1].expression", "SYNTAX_ERROR")}),
    (cases(("vip", "true"), ("vip", "false")), {("cases[1].name", "DUPLICATE")}),
    (cases(("default", "true")), {("cases[0].name", "RESERVED")}),
    (cases(("VIP", "true"), ("", "false")), {("cases[0].name", "INVALID_NAME"), ("cases[1].name", "REQUIRED")}),
], ids=["no-cases", "no-expression", "syntax", "duplicate", "default-reserved", "bad-names"])
def test_multi_split_problems(split: J.Step, expected: set[tuple[str, str]]) -> None:
    """Each problem of a multi-split is reported at its case's field; `default` is the default edge's name."""
    assert problems(split) == {(f"spec.steps[0].multi_split.{f}", r) for f, r in expected}


def arms(*branches: tuple[str, int, bool]) -> J.Step:
    """A split of (name, weight, holdout) branches, each ending the run."""
    return step("ab", split=J.SplitStep(branches=[J.SplitBranch(name=n, weight=w, holdout=h) for n, w, h in branches]))


@pytest.mark.parametrize(("split", "expected"), [
    (arms(("subject-a", 45, False), ("subject-b", 45, False), ("control", 10, True)), set()),
    (arms(("only", 1, False)), {("branches", "TOO_FEW")}),
    (arms(("a", 1, False), ("a", 1, False)), {("branches[1].name", "DUPLICATE")}),
    (arms(("a", 0, False), ("b", 10_001, False)), {("branches[0].weight", "OUT_OF_RANGE"), ("branches[1].weight", "OUT_OF_RANGE")}),
    (arms(("a", 1, True), ("b", 1, True)), {("branches", "ALL_HOLDOUT")}),
    (arms(("A", 1, False), ("", 1, False)), {("branches[0].name", "INVALID_NAME"), ("branches[1].name", "REQUIRED")}),
], ids=["valid-with-holdout", "one-branch", "duplicate", "weights", "all-holdout", "bad-names"])
def test_split_problems(split: J.Step, expected: set[tuple[str, str]]) -> None:
    """A weighted split with a holdout branch compiles; each problem of a split is reported at its branch's field."""
    assert problems(split) == {(f"spec.steps[0].split.{f}", r) for f, r in expected}


# --- delays and waits ------------------------------------------------------------


@pytest.mark.parametrize("kind", [
    J.DelayStep(duration=duration(days=90)),
    J.DelayStep(until=timestamp_pb2.Timestamp(seconds=1_900_000_000)),
    J.DelayStep(until_local_time=J.LocalTimeWindow(time="09:00", weekdays=["mon", "fri"])),
    J.DelayStep(until_local_time=J.LocalTimeWindow(time="23:59")),
    J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", offset=duration(days=-366))),
], ids=["duration-90-days", "until", "local-time-weekdays", "local-time-any-day", "trait-offset-before"])
def test_each_delay_variant_compiles(kind: J.DelayStep) -> None:
    """A delay for a duration of up to 90 days, until a time, a local time on weekdays, or a trait date with an offset compiles."""
    assert problems(step("wait", delay=kind)) == set()


@pytest.mark.parametrize(("kind", "expected"), [
    (J.DelayStep(), {("", "ONE_OF")}),
    (J.DelayStep(duration=DAY, until_trait=J.TraitDate(trait="renewal_date")), {("", "ONE_OF")}),
    (J.DelayStep(duration=duration(seconds=0)), {(".duration", "OUT_OF_RANGE")}),
    (J.DelayStep(duration=duration(seconds=-60)), {(".duration", "OUT_OF_RANGE")}),
    (J.DelayStep(duration=duration(days=90, seconds=1)), {(".duration", "OUT_OF_RANGE")}),
    (J.DelayStep(until_local_time=J.LocalTimeWindow(time="9:00")), {(".until_local_time.time", "INVALID_TIME")}),
    (J.DelayStep(until_local_time=J.LocalTimeWindow(time="24:00")), {(".until_local_time.time", "INVALID_TIME")}),
    (J.DelayStep(until_local_time=J.LocalTimeWindow(time="09:00", weekdays=["mon", "Tuesday"])),
     {(".until_local_time.weekdays[1]", "INVALID_WEEKDAY")}),
    (J.DelayStep(until_trait=J.TraitDate(trait="renewal-date")), {(".until_trait.trait", "INVALID_TRAIT")}),
    (J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", offset=duration(days=367))), {(".until_trait.offset", "OUT_OF_RANGE")}),
    (J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", offset=duration(days=-367))), {(".until_trait.offset", "OUT_OF_RANGE")}),
], ids=["none", "two", "zero", "negative", "over-90-days", "time-unpadded", "time-24h", "weekday", "trait", "offset-after", "offset-before"])
def test_delay_problems(kind: J.DelayStep, expected: set[tuple[str, str]]) -> None:
    """A delay needs exactly one variant, and each variant's problem is reported at its field."""
    assert problems(step("wait", delay=kind)) == {(f"spec.steps[0].delay{f}", r) for f, r in expected}


def test_a_wait_for_event_compiles_its_filter() -> None:
    """A wait for an event with a filter compiles, its filter under the step's id."""
    wait = J.WaitForEventStep(event_type="email.confirmed", timeout=duration(days=90), filter='attributes.list == "news"')
    assert evaluate_expression(compiled(journey(step("wait", wait_for_event=wait))).conditions["wait"], {"attributes": {"list": "news"}})


@pytest.mark.parametrize(("wait", "expected"), [
    (J.WaitForEventStep(event_type="Email Confirmed", timeout=DAY), {("event_type", "INVALID_EVENT_TYPE")}),
    (J.WaitForEventStep(event_type="email.confirmed"), {("timeout", "OUT_OF_RANGE")}),
    (J.WaitForEventStep(event_type="email.confirmed", timeout=duration(days=91)), {("timeout", "OUT_OF_RANGE")}),
    (J.WaitForEventStep(event_type="email.confirmed", timeout=DAY, filter="attributes.list =="), {("filter", "SYNTAX_ERROR")}),
], ids=["event-type", "no-timeout", "long-timeout", "filter"])
def test_wait_for_event_problems(wait: J.WaitForEventStep, expected: set[tuple[str, str]]) -> None:
    """Each problem of a wait for an event is reported at its field."""
    assert problems(step("wait", wait_for_event=wait)) == {(f"spec.steps[0].wait_for_event.{f}", r) for f, r in expected}


@pytest.mark.parametrize(("wait", "expected"), [
    (J.WaitUntilStep(expression='"trial-ended" in profile.segments', timeout=DAY), set()),
    (J.WaitUntilStep(timeout=DAY), {("expression", "REQUIRED")}),
    (J.WaitUntilStep(expression="profile.traits.plan ==", timeout=DAY), {("expression", "SYNTAX_ERROR")}),
    (J.WaitUntilStep(expression="true"), {("timeout", "OUT_OF_RANGE")}),
    (J.WaitUntilStep(expression="true", timeout=duration(days=91)), {("timeout", "OUT_OF_RANGE")}),
], ids=["valid", "no-expression", "syntax", "no-timeout", "long-timeout"])
def test_wait_until_problems(wait: J.WaitUntilStep, expected: set[tuple[str, str]]) -> None:
    """A wait until a condition compiles with an expression and a timeout of at most 90 days; each problem is at its field."""
    assert problems(step("wait", wait_until=wait)) == {(f"spec.steps[0].wait_until.{f}", r) for f, r in expected}


@pytest.mark.parametrize(("approval", "expected"), [
    (J.ApprovalStep(approver_role="marketing-lead", message="Offer {{ profile.traits.tier }} to {{ profile.subject_id }}?"), set()),
    (J.ApprovalStep(timeout=duration(days=90)), set()),
    (J.ApprovalStep(timeout=duration(days=91)), {("timeout", "OUT_OF_RANGE")}),
    (J.ApprovalStep(timeout=duration(seconds=-1)), {("timeout", "OUT_OF_RANGE")}),
    (J.ApprovalStep(message="{{ profile.traits.tier"), {("message", "TEMPLATE_SYNTAX_ERROR")}),
    (J.ApprovalStep(message="{{ tier }}"), {("message", "UNKNOWN_TEMPLATE_VARIABLE")}),
], ids=["valid", "90-days", "long-timeout", "negative-timeout", "message-syntax", "message-unknown-name"])
def test_approval_problems(approval: J.ApprovalStep, expected: set[tuple[str, str]]) -> None:
    """An approval (timeout 0 meaning 24 hours) compiles; a timeout past 90 days or a bad message template is reported at its field."""
    assert problems(step("ask", approval=approval)) == {(f"spec.steps[0].approval.{f}", r) for f, r in expected}


# --- profile updates, parallel, join and exit ---------------------------------------


def update(**fields: object) -> J.Step:
    """An update-profile step."""
    return step("update", update_profile=J.UpdateProfileStep(**fields))  # type: ignore[arg-type]


def test_an_update_profile_with_every_change_compiles() -> None:
    """Setting templated traits, unsetting traits, tags, segments and increments together compiles."""
    traits = struct_pb2.Struct()
    traits.update({"plan": "pro", "last_step": "{{ run.step_id }}", "address": {"city": "{{ event.attributes.city }}"}})
    assert problems(update(traits=traits, unset_traits=["trial_end"], add_tags=["engaged"], remove_tags=["cold"],
                           enter_segments=["customers"], exit_segments=["trials"], increment={"lead_score": 10.0})) == set()


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {("", "REQUIRED")}),
    ({"unset_traits": ["ok", "not ok"]}, {(".unset_traits[1]", "INVALID_TRAIT")}),
    ({"add_tags": ["VIP"], "remove_tags": [""]}, {(".add_tags[0]", "INVALID_NAME"), (".remove_tags[0]", "REQUIRED")}),
    ({"enter_segments": ["ok", "Bad"], "exit_segments": ["x_y"]}, {(".enter_segments[1]", "INVALID_NAME"), (".exit_segments[0]", "INVALID_NAME")}),
    ({"increment": {"lead_score": 1.0, "bad name": 2.0, "visits": 3.0}}, {(".increment[bad name]", "INVALID_TRAIT")}),
], ids=["no-change", "unset-traits", "tags", "segments", "increment"])
def test_update_profile_problems(fields: dict[str, object], expected: set[tuple[str, str]]) -> None:
    """A step that changes nothing is REQUIRED; each bad trait name, tag or segment is reported at its index, each bad increment at its key."""
    assert problems(update(**fields)) == {(f"spec.steps[0].update_profile{f}", r) for f, r in expected}


def test_a_templated_trait_value_is_checked_at_its_path() -> None:
    """A trait value that reads a name that cannot exist is UNKNOWN_TEMPLATE_VARIABLE at its path inside traits."""
    traits = struct_pb2.Struct()
    traits.update({"address": {"lines": ["fine", "{{ event.attribute.street }}"]}})
    assert problems(update(traits=traits)) == {("spec.steps[0].update_profile.traits.address.lines[1]", "UNKNOWN_TEMPLATE_VARIABLE")}


@pytest.mark.parametrize(("parallel", "expected"), [
    (J.ParallelStep(branches=["a"], join="meet"), {("branches", "TOO_FEW")}),
    (J.ParallelStep(branches=["a", "b"]), {("join", "REQUIRED")}),
], ids=["one-branch", "no-join"])
def test_parallel_problems(parallel: J.ParallelStep, expected: set[tuple[str, str]]) -> None:
    """A parallel step needs two branches and a join (the graph checks where they lead)."""
    assert problems(step("fork", parallel=parallel), send("a", "meet"), send("b", "meet"), step("meet", join=J.JoinStep())) == {
        (f"spec.steps[0].parallel.{f}", r) for f, r in expected}


@pytest.mark.parametrize(("mode", "expected"), [(J.JOIN_MODE_UNSPECIFIED, set()), (J.JOIN_MODE_ALL, set()), (J.JOIN_MODE_ANY, set()),
                                             (7, {("spec.steps[1].join.mode", "INVALID_ENUM")})])
def test_a_join_takes_each_mode_of_the_enum(mode: int, expected: set[tuple[str, str]]) -> None:
    """A join step compiles in every mode of the enum; another number is INVALID_ENUM at its mode."""
    fork = step("fork", parallel=J.ParallelStep(branches=["meet", "meet"], join="meet"))  # two empty branches
    assert problems(fork, step("meet", join=J.JoinStep(mode=mode))) == expected  # type: ignore[arg-type]


def test_a_join_no_parallel_step_names_is_an_orphan() -> None:
    """A join step that closes no parallel step is ORPHAN_JOIN at its join field."""
    assert problems(send("hello", "meet"), step("meet", join=J.JoinStep())) == {("spec.steps[1].join", "ORPHAN_JOIN")}


@pytest.mark.parametrize(("retry", "expected"), [
    (J.RetryPolicy(max_attempts=10), set()),
    (J.RetryPolicy(max_attempts=101), {("spec.steps[0].retry.max_attempts", "OUT_OF_RANGE")}),
    (J.RetryPolicy(initial_backoff=duration_pb2.Duration(seconds=-1)), {("spec.steps[0].retry.initial_backoff", "OUT_OF_RANGE")}),
    (J.RetryPolicy(initial_backoff=duration_pb2.Duration(seconds=60), max_backoff=duration_pb2.Duration(seconds=10)),
     {("spec.steps[0].retry.max_backoff", "OUT_OF_RANGE")}),
])
def test_a_retry_policy_is_checked(retry: J.RetryPolicy, expected: set[tuple[str, str]]) -> None:
    """A step's retry policy keeps attempts within 100 and backoffs within their bounds, the ceiling not below the first."""
    hello = send("hello")
    hello.retry.CopyFrom(retry)
    assert problems(hello) == expected


@pytest.mark.parametrize(("goal", "expected"), [("", set()), ("converted", set()), ("Converted!", {("spec.steps[0].exit.goal", "INVALID_NAME")})])
def test_an_exit_goal_is_a_name(goal: str, expected: set[tuple[str, str]]) -> None:
    """An exit may name a goal, which must be a lower-case name."""
    assert problems(step("bye", exit=J.ExitStep(goal=goal))) == expected
