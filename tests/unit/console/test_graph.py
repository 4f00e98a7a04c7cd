"""Unit tests of :mod:`overture_console.graph`: a journey's graph laid out
for drawing: one node per step and the trigger, the named edges the
orchestrator follows, layers by longest distance from the trigger (a
loop's edge back does not push its head down), branches side by side,
joins below every branch, and the statistics' counters on nodes and edges."""

from __future__ import annotations

from pathlib import Path

import pytest

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture_console.graph import MARGIN, NODE_H, NODE_W, TRIGGER, Edge, Layout, Node, edges_of, layout, trigger_label
from overture_orchestrator.graph import edges as orchestrator_edges

from .forms import JOURNEY_FILES, journey_file


def nodes(drawn: Layout) -> dict[str, Node]:
    """The layout's nodes by id."""
    return {n.id: n for n in drawn.nodes}


def edge(drawn: Layout, source: str, name: str) -> Edge:
    """The edge named *name* leaving *source*."""
    (found,) = [e for e in drawn.edges if e.source == source and e.name == name]
    return found


def overlap(a: Node, b: Node) -> bool:
    """Whether the boxes of *a* and *b* overlap."""
    return a.x < b.x + NODE_W and b.x < a.x + NODE_W and a.y < b.y + NODE_H and b.y < a.y + NODE_H


@pytest.mark.parametrize("path", JOURNEY_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_step_is_drawn_once_inside_the_drawing_with_the_edges_the_orchestrator_follows(path: Path) -> None:
    """For each journey file: one node per step plus the trigger, no two boxes overlapping and all inside the drawing; a
    ``start`` edge to the first step, then each step's edges with the names and targets the orchestrator follows; every edge
    that is not a loop's way back leads down."""
    _, spec = journey_file(path.stem)
    drawn = layout(spec)
    assert [n.id for n in drawn.nodes] == [TRIGGER, *(s.id for s in spec.steps)]
    for i, a in enumerate(drawn.nodes):
        assert MARGIN <= a.x and a.x + NODE_W <= drawn.width - MARGIN
        assert MARGIN <= a.y and a.y + NODE_H <= drawn.height - MARGIN
        assert not any(overlap(a, b) for b in drawn.nodes[i + 1:]), a.id
    expected = [(TRIGGER, "start", spec.steps[0].id)]
    for step in spec.steps:
        expected += [(step.id, name, target) for name, _, target in orchestrator_edges(step)]
    assert [(e.source, e.name, e.target) for e in drawn.edges] == expected
    at = nodes(drawn)
    assert all(at[e.target].y > at[e.source].y for e in drawn.edges if e.target and not e.back)


def test_every_reachable_step_is_below_each_step_that_leads_to_it() -> None:
    """In the welcome series each forward edge goes down a layer or more; both branches of the condition are on one layer, side
    by side, and the delay they both lead to is below them."""
    _, spec = journey_file("welcome-series")
    drawn = layout(spec)
    at = nodes(drawn)
    for e in drawn.edges:
        if e.target:
            assert at[e.target].y > at[e.source].y, (e.source, e.name, e.target)
    assert at["power-tips"].y == at["finish-setup"].y
    assert at["power-tips"].x != at["finish-setup"].x
    assert at["wait-four-days"].y > at["power-tips"].y
    assert [at[s].y for s in ("welcome", "wait-two-days", "finished-setup")] == sorted({at[s].y for s in ("welcome", "wait-two-days", "finished-setup")})


def test_a_join_is_drawn_below_the_longest_of_its_branches() -> None:
    """In parallel-all the join comes after a one-step branch and a two-step branch: it is drawn below the longer one, and the
    fork's edges are its branches by number."""
    _, spec = journey_file("parallel-all")
    drawn = layout(spec)
    at = nodes(drawn)
    assert at["guide"].y == at["later"].y
    assert at["meet"].y > at["checklist"].y > at["later"].y
    assert (edge(drawn, "fork", "branch:0").target, edge(drawn, "fork", "branch:1").target) == ("guide", "later")
    assert at["meet"].kind == "join"


def test_a_loop_is_drawn_with_its_edge_back_marked_and_its_head_not_pushed_down() -> None:
    """A check that waits and comes back: the edge back to the head is ``back`` and ends at the head's side; the head stays
    above the steps of the loop; no other edge is back."""
    spec = J.JourneySpec(trigger=J.JourneyTrigger(manual=J.ManualTrigger()), steps=[
        J.Step(id="check", condition=J.ConditionStep(expression="profile.traits.paid == true", then_step="thanks", else_step="wait")),
        J.Step(id="wait", next="check", max_visits=3, delay=J.DelayStep(duration={"seconds": 86400})),
        J.Step(id="thanks", send=J.SendStep(template="thanks"))])
    drawn = layout(spec)
    at = nodes(drawn)
    back = [e for e in drawn.edges if e.back]
    assert [(e.source, e.target) for e in back] == [("wait", "check")]
    assert at["check"].y < at["wait"].y
    assert back[0].points[-1] == (at["check"].x + NODE_W, at["check"].y + NODE_H // 2)


def test_a_step_loop_to_itself_is_a_back_edge() -> None:
    """A step whose next is itself is one node with one back edge to itself."""
    spec = J.JourneySpec(steps=[J.Step(id="again", next="again", max_visits=2, delay=J.DelayStep(duration={"seconds": 60}))])
    drawn = layout(spec)
    assert [(e.source, e.name, e.target, e.back) for e in drawn.edges] == [(TRIGGER, "start", "again", False), ("again", "next", "again", True)]


def test_edges_that_end_the_run_or_name_no_step_have_no_target() -> None:
    """A last step's empty next ends the run; a reference to a step that does not exist (a draft's) is drawn as an end too,
    not as a node; an exit has no edge at all."""
    spec = J.JourneySpec(steps=[J.Step(id="hello", next="ghost", send=J.SendStep(template="t")),
                                J.Step(id="bye", exit=J.ExitStep())])
    drawn = layout(spec)
    assert [(e.source, e.name, e.target) for e in drawn.edges] == [(TRIGGER, "start", "hello"), ("hello", "next", "")]
    end = edge(drawn, "hello", "next")
    assert end.points[1][1] > end.points[0][1]
    assert "ghost" not in nodes(drawn)


def test_an_unreachable_step_is_drawn_once_below_the_rest() -> None:
    """Steps no edge reaches (a draft may have them) are each drawn once, below every reachable step."""
    spec = J.JourneySpec(steps=[J.Step(id="a", next="b", send=J.SendStep(template="t")), J.Step(id="b", exit=J.ExitStep()),
                                J.Step(id="lost", exit=J.ExitStep()), J.Step(id="stray", exit=J.ExitStep())])
    drawn = layout(spec)
    at = nodes(drawn)
    assert [n.id for n in drawn.nodes].count("lost") == 1
    assert min(at["lost"].y, at["stray"].y) > at["b"].y
    assert at["stray"].y + NODE_H <= drawn.height


def test_a_journey_without_steps_is_its_trigger_alone() -> None:
    """No steps: one node (the trigger), no edge, and a drawing just big enough for it."""
    drawn = layout(J.JourneySpec(trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up"))))
    assert [(n.id, n.label) for n in drawn.nodes] == [(TRIGGER, "event user.signed_up")]
    assert drawn.edges == []
    assert drawn.width == 2 * MARGIN + NODE_W


def test_a_nodes_edges_leave_side_by_side() -> None:
    """The edges leaving one node start at distinct points along its bottom, left to right in their order, so that their labels
    do not overlap."""
    _, spec = journey_file("order-routing")
    drawn = layout(spec)
    for source in {e.source for e in drawn.edges}:
        leaving = [e for e in drawn.edges if e.source == source]
        starts = [e.points[0] for e in leaving]
        assert [x for x, _ in starts] == sorted({x for x, _ in starts}), source
        assert {y for _, y in starts} == {nodes(drawn)[source].y + NODE_H}


def test_the_statistics_counters_are_drawn_on_their_nodes_and_edges() -> None:
    """GetJourneyStats' counters: the trigger's entered (also on the start edge), each step's entered, waiting, failed and
    skipped, and each edge's count by its name; a step the statistics do not know shows zeros."""
    _, spec = journey_file("welcome-series")
    stats = OS.JourneyStats(entered=10, steps=[
        OS.StepStats(step_id="finished-setup", entered=8, edges={"true": 5, "false": 3}),
        OS.StepStats(step_id="wait-two-days", entered=9, waiting=1, failed=0, skipped=0),
        OS.StepStats(step_id="welcome", entered=10, failed=1, skipped=2, edges={"next": 9}),
        OS.StepStats(step_id="gone", entered=4)])
    drawn = layout(spec, stats)
    at = nodes(drawn)
    assert at[TRIGGER].entered == 10 and edge(drawn, TRIGGER, "start").count == 10
    assert (at["welcome"].entered, at["welcome"].failed, at["welcome"].skipped) == (10, 1, 2)
    assert at["wait-two-days"].waiting == 1
    assert (edge(drawn, "finished-setup", "true").count, edge(drawn, "finished-setup", "false").count) == (5, 3)
    assert edge(drawn, "welcome", "next").count == 9
    assert at["invite-team"].entered == 0 and edge(drawn, "invite-team", "next").count == 0
    assert "gone" not in at


@pytest.mark.parametrize(("trigger", "label"), [
    (J.JourneyTrigger(event=J.EventTrigger(event_type="order.placed")), "event order.placed"),
    (J.JourneyTrigger(schedule=J.ScheduleTrigger(cron="0 9 * * 1")), "schedule 0 9 * * 1"),
    (J.JourneyTrigger(inactivity=J.InactivityTrigger(event_type="app.opened")), "no app.opened"),
    (J.JourneyTrigger(segment_entered=J.SegmentEnteredTrigger(segment="vip")), "enters vip"),
    (J.JourneyTrigger(manual=J.ManualTrigger()), "manual trigger"),
    (J.JourneyTrigger(), "manual trigger"),
])
def test_the_trigger_is_labelled_by_what_starts_the_journey(trigger: J.JourneyTrigger, label: str) -> None:
    """Each trigger kind has its few words; no trigger at all reads as a manual one."""
    assert trigger_label(trigger) == label


def test_steps_are_labelled_by_kind_and_what_they_do() -> None:
    """A send names its channel and template, a delay its duration, a wait its event; other kinds their kind in words."""
    _, spec = journey_file("welcome-series")
    at = nodes(layout(spec))
    assert at["welcome"].label == "send email · welcome"
    assert at["wait-two-days"].label == "delay 2 d"
    assert at["finished-setup"].label == "condition"
    drawn = layout(J.JourneySpec(steps=[J.Step(id="w", wait_for_event=J.WaitForEventStep(event_type="email.confirmed")),
                                        J.Step(id="u", update_profile=J.UpdateProfileStep())]))
    assert [n.label for n in drawn.nodes[1:]] == ["wait for email.confirmed", "update profile"]


def test_a_delay_until_a_trait_has_an_edge_for_a_missing_trait() -> None:
    """A delay until a profile date has ``next`` and ``missing``, as the orchestrator follows them."""
    step = J.Step(id="until", next="remind", delay=J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", on_missing_step="skip")))
    assert edges_of(step) == [("next", "remind"), ("missing", "skip")]
