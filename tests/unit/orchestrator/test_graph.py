"""Unit tests of :mod:`overture_orchestrator.graph`: each step kind's named
edges, and what publish refuses in a journey's graph (edges to nothing,
unreachable steps, unbounded loops, parallel branches that miss their join)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.definition import compile_journey
from overture_orchestrator.graph import edges

from .specs import compiled, condition, delay, duration, exit_step, journey, send, step, violations_of

EDGES: dict[str, list[tuple[str, str]]] = {
    "send": [("next", "next")],
    "notify": [("next", "next")],
    "update_profile": [("next", "next")],
    "webhook": [("next", "next")],
    "delay": [("next", "next")],
    "delay_until_trait": [("next", "next"), ("missing", "delay.until_trait.on_missing_step")],
    "join": [("next", "next")],
    "condition": [("true", "condition.then_step"), ("false", "condition.else_step")],
    "multi_split": [("vip", "multi_split.cases[0].step"), ("churned", "multi_split.cases[1].step"), ("default", "multi_split.default_step")],
    "split": [("treatment", "split.branches[0].step"), ("control", "split.branches[1].step")],
    "wait_for_event": [("event", "wait_for_event.on_event_step"), ("timeout", "wait_for_event.on_timeout_step")],
    "wait_until": [("true", "wait_until.on_true_step"), ("timeout", "wait_until.on_timeout_step")],
    "approval": [("approved", "next"), ("rejected", "approval.on_reject_step")],
    "parallel": [("branch:0", "parallel.branches[0]"), ("branch:1", "parallel.branches[1]")],
    "exit": [],
}
"""For each kind: its edges' names and field paths, in order."""


def make(kind: str, targets: Iterator[str]) -> J.Step:
    """A valid first step of *kind* whose edges lead, in order, to the next ids of *targets*."""
    t = targets.__next__  # one target per edge, taken in the order the edges are listed
    day = duration(days=1)
    builders = {
        "send": lambda: send("first", t()),
        "notify": lambda: step("first", t(), notify=J.NotifyStep(channel=M.CHANNEL_WEBHOOK, to="https://hooks.example.com/x", template="welcome")),
        "update_profile": lambda: step("first", t(), update_profile=J.UpdateProfileStep(add_tags=["engaged"])),
        "webhook": lambda: step("first", t(), webhook=J.WebhookStep(url="https://crm.example.com/hooks/{{ profile.subject_id }}")),
        "delay": lambda: delay("first", 60, t()),
        "delay_until_trait": lambda: step("first", t(), delay=J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", on_missing_step=t()))),
        "join": lambda: step("first", t(), join=J.JoinStep()),
        "condition": lambda: condition("first", "true", t(), t()),
        "multi_split": lambda: step("first", multi_split=J.MultiSplitStep(cases=[
            J.SplitCase(name="vip", expression="true", step=t()), J.SplitCase(name="churned", expression="false", step=t())], default_step=t())),
        "split": lambda: step("first", split=J.SplitStep(branches=[J.SplitBranch(name="treatment", weight=1, step=t()),
                                                                  J.SplitBranch(name="control", weight=1, step=t(), holdout=True)])),
        "wait_for_event": lambda: step("first", wait_for_event=J.WaitForEventStep(event_type="email.confirmed", timeout=day,
                                                                                  on_event_step=t(), on_timeout_step=t())),
        "wait_until": lambda: step("first", wait_until=J.WaitUntilStep(expression="true", timeout=day, on_true_step=t(), on_timeout_step=t())),
        "approval": lambda: step("first", t(), approval=J.ApprovalStep(on_reject_step=t())),
        "parallel": lambda: step("first", parallel=J.ParallelStep(branches=[t(), t()], join="meet")),
        "exit": lambda: exit_step("first"),
    }
    return builders[kind]()


@pytest.mark.parametrize("kind", EDGES)
def test_edges_are_named_as_histories_show_them(kind: str) -> None:
    """edges() yields each outgoing edge of a step with its name, its field path under the step and its target."""
    targets = [f"to-{i}" for i in range(len(EDGES[kind]))]
    assert list(edges(make(kind, iter(targets)))) == [(name, path, target) for (name, path), target in zip(EDGES[kind], targets, strict=True)]


@pytest.mark.parametrize("kind", [k for k in EDGES if EDGES[k]])
def test_an_edge_to_no_step_is_unknown_at_its_own_field(kind: str) -> None:
    """Every edge of every kind that names a missing step is UNKNOWN_STEP at that edge's field path under the step."""
    spec = journey(make(kind, iter([f"ghost-{i}" for i in range(len(EDGES[kind]))])))
    assert violations_of(spec) == {(f"spec.steps[0].{path}", "UNKNOWN_STEP") for _, path in EDGES[kind]}


@pytest.mark.parametrize("kind", [k for k in EDGES if EDGES[k] and k not in ("parallel", "join")])
def test_each_edge_reaches_its_own_target(kind: str) -> None:
    """A step reached through only one edge of any kind (a case, a holdout arm, a timeout, a rejection, a missing trait) is reachable."""
    ends = [f"end-{i}" for i in range(len(EDGES[kind]))]
    compiled(journey(make(kind, iter(ends)), *(exit_step(e) for e in ends)))


def test_a_diamond_is_not_a_loop() -> None:
    """Two branches that meet again at one step are acyclic."""
    compiled(journey(condition("check", "true", then="a", else_="b"), send("a", "end"), send("b", "end"), exit_step("end")))


def test_empty_edges_end_the_run_and_are_not_checked() -> None:
    """An edge with an empty target ends the run: it is neither unknown nor required."""
    assert list(edges(condition("check", "true"))) == [("true", "condition.then_step", ""), ("false", "condition.else_step", "")]
    compiled(journey(condition("check", "true")))


# --- loops ---------------------------------------------------------------------


def test_a_loop_bounded_by_max_visits_on_the_step_it_leads_back_to_is_accepted() -> None:
    """An edge back to a step with max_visits is a bounded loop, accepted at publish."""
    compiled(journey(send("hello", "wait"), delay("wait", 3600, "check", max_visits=3), condition("check", "true", then="wait")))


def test_an_unbounded_loop_is_named_at_the_step_whose_edge_leads_back() -> None:
    """Without max_visits on the step it leads back to, the loop is UNBOUNDED_LOOP at the edge's source step, naming both steps."""
    spec = journey(send("hello", "wait"), delay("wait", 3600, "check"), condition("check", "true", then="wait"))
    compiled_, violations = compile_journey(spec)
    assert compiled_ is None
    assert [(v.field, v.reason) for v in violations] == [("spec.steps[2]", "UNBOUNDED_LOOP")]
    assert "'check' leads back to step 'wait'" in violations[0].description and "max_visits on step 'wait'" in violations[0].description


def test_max_visits_on_another_step_of_the_loop_does_not_bound_it() -> None:
    """The bound belongs on the step the edge leads back to; max_visits elsewhere in the loop leaves it UNBOUNDED_LOOP."""
    spec = journey(send("hello", "wait"), delay("wait", 3600, "check"), condition("check", "true", then="wait", max_visits=3))
    assert violations_of(spec) == {("spec.steps[2]", "UNBOUNDED_LOOP")}


def test_a_self_loop_is_bounded_by_its_own_max_visits() -> None:
    """A step whose next is itself is accepted with max_visits and refused without."""
    compiled(journey(delay("wait", 60, "wait", max_visits=5)))
    assert violations_of(journey(delay("wait", 60, "wait"))) == {("spec.steps[0]", "UNBOUNDED_LOOP")}


def test_a_reminder_loop_through_a_timeout_edge_needs_its_bound() -> None:
    """Resending a confirmation on each wait timeout is a loop: accepted with max_visits on the send, refused at the wait without it."""
    wait = step("wait", wait_for_event=J.WaitForEventStep(event_type="email.confirmed", timeout=duration(days=2),
                                                          on_event_step="done", on_timeout_step="ask"))
    compiled(journey(send("ask", "wait", max_visits=3), wait, exit_step("done", goal="confirmed")))
    assert violations_of(journey(send("ask", "wait"), wait, exit_step("done"))) == {("spec.steps[1]", "UNBOUNDED_LOOP")}


def test_each_loop_needs_its_own_bound() -> None:
    """Of two loops, only the one whose head lacks max_visits is refused, at its own source step."""
    spec = journey(delay("a", 60, "b", max_visits=2), condition("b", "true", then="a", else_="c"), delay("c", 60, "d"),
                   condition("d", "true", then="c"))
    assert violations_of(spec) == {("spec.steps[3]", "UNBOUNDED_LOOP")}


# --- reachability --------------------------------------------------------------


def test_every_unreachable_step_is_named_and_an_unreachable_cycle_is_not_a_loop() -> None:
    """Steps no path from the first step reaches are each UNREACHABLE_STEP, even when they form a cycle among themselves."""
    spec = journey(send("hello"), delay("island", 60, "other"), delay("other", 60, "island"))
    assert violations_of(spec) == {("spec.steps[1]", "UNREACHABLE_STEP"), ("spec.steps[2]", "UNREACHABLE_STEP")}


# --- parallel branches and joins -------------------------------------------------


def fork(branches: list[str], join: str = "meet", id_: str = "fork") -> J.Step:
    """A parallel step."""
    return step(id_, parallel=J.ParallelStep(branches=branches, join=join))


def meet(id_: str = "meet", next_: str = "", mode: int = J.JOIN_MODE_ALL) -> J.Step:
    """A join step."""
    return step(id_, next_, join=J.JoinStep(mode=mode))  # type: ignore[arg-type]


def test_branches_that_reach_their_join_compile_with_the_join_counted() -> None:
    """Branches that each reach the parallel step's join compile; the join waits for as many branches as the parallel step has."""
    result = compiled(journey(fork(["a", "b", "meet"]), send("a", "meet"), delay("b", 60, "c"), send("c", "meet"), meet(next_="after"),
                              send("after")))
    assert result.joins == {"meet": 3}


def test_an_exit_inside_a_branch_is_fine() -> None:
    """A branch may end at an exit step (which ends the whole run) instead of its join."""
    compiled(journey(fork(["a", "b"]), send("a", "meet"), condition("b", "true", then="stop", else_="meet"), exit_step("stop"), meet()))


def test_a_bounded_loop_inside_a_branch_is_fine() -> None:
    """A branch may loop, bounded, before it reaches its join."""
    compiled(journey(fork(["a", "b"]), send("a", "meet"), delay("b", 60, "check", max_visits=3),
                     condition("check", "true", then="b", else_="meet"), meet()))


@pytest.mark.parametrize(("b", "extra"), [
    (send("b"), []),
    (condition("b", "true", then="meet"), []),
    (delay("b", 60, "c"), [condition("c", "true", else_="meet")]),
], ids=["next-empty", "else-empty", "deeper"])
def test_a_branch_that_can_end_without_its_join_is_refused(b: J.Step, extra: list[J.Step]) -> None:
    """A branch with a path ending on an empty edge (not at an exit) is BRANCH_WITHOUT_JOIN at that branch."""
    spec = journey(fork(["a", "b"]), send("a", "meet"), b, *extra, meet())
    assert violations_of(spec) == {("spec.steps[0].parallel.branches[1]", "BRANCH_WITHOUT_JOIN")}


def test_a_branch_reaching_another_join_is_the_wrong_join() -> None:
    """A branch that reaches a join other than its own parallel step's is WRONG_JOIN at that branch."""
    spec = journey(fork(["a", "b"]), send("a", "meet"), send("b", "meet-2"), meet(next_="fork-2"),
                   fork(["c", "d"], join="meet-2", id_="fork-2"), send("c", "meet-2"), send("d", "meet-2"), meet("meet-2"))
    assert violations_of(spec) == {("spec.steps[0].parallel.branches[1]", "WRONG_JOIN")}


def test_parallel_steps_do_not_nest() -> None:
    """A branch that reaches another parallel step is NESTED_PARALLEL at the outer branch, even when the inner one is well formed."""
    spec = journey(fork(["a", "b"]), fork(["c", "d"], join="inner", id_="a"), send("c", "inner"), send("d", "inner"), meet("inner", "meet"),
                   send("b", "meet"), meet())
    assert violations_of(spec) == {("spec.steps[0].parallel.branches[0]", "NESTED_PARALLEL")}


def test_a_branch_leading_back_to_its_own_parallel_step_is_nested() -> None:
    """A branch that loops back to its own parallel step (bounded or not) is NESTED_PARALLEL."""
    spec = journey(step("fork", max_visits=3, parallel=J.ParallelStep(branches=["a", "b"], join="meet")), send("a", "meet"),
                   delay("b", 60, "fork"), meet())
    assert violations_of(spec) == {("spec.steps[0].parallel.branches[1]", "NESTED_PARALLEL")}


@pytest.mark.parametrize(("join", "extra"), [("after", [send("after")]), ("nowhere", [])], ids=["not-a-join", "missing"])
def test_the_join_must_name_a_join_step(join: str, extra: list[J.Step]) -> None:
    """A parallel step whose join is another kind of step, or no step at all, is NOT_A_JOIN at its join field."""
    spec = journey(fork(["a", "b"], join=join), send("a", join if extra else ""), send("b", join if extra else ""), *extra)
    assert violations_of(spec) == {("spec.steps[0].parallel.join", "NOT_A_JOIN")}


def test_two_parallel_steps_cannot_share_a_join() -> None:
    """A join already closing one parallel step is a DUPLICATE at the second parallel step's join."""
    spec = journey(fork(["a", "b"]), send("a", "meet"), send("b", "meet"), meet(next_="fork-2"), fork(["c", "d"], id_="fork-2"),
                   send("c", "meet"), send("d", "meet"))
    assert violations_of(spec) == {("spec.steps[4].parallel.join", "DUPLICATE")}



def test_an_empty_branch_is_required() -> None:
    """A parallel branch with no first step is REQUIRED at that branch, reported rather than raised."""
    spec = journey(fork(["a", ""]), send("a", "meet"), meet())
    assert violations_of(spec) == {("spec.steps[0].parallel.branches[1]", "REQUIRED")}
