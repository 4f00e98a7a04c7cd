"""Unit tests of :mod:`overture_orchestrator.walk`: a walk takes the path a
run would take, in simulated time, and stops where a run would stop."""

from __future__ import annotations

import datetime as dt
from typing import Any

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import run_pb2
from overture_orchestrator.nodes import split_branch
from overture_orchestrator.walk import Walk, WalkResult

from .specs import compiled, condition, delay, duration, exit_step, journey, send, step

NOW = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
PROFILE: dict[str, Any] = {"subject_id": "ann", "traits": {"first_name": "Ann", "email": "ann@example.com"}, "segments": [],
                           "timezone": "", "tags": []}
EVENT = event_pb2.Event(event_id="e1", event_type="user.signed_up", subject_id="ann")


def _walk(spec: J.JourneySpec, **options: Any) -> WalkResult:
    return Walk(compiled(spec), name="j", subject_id=options.pop("subject_id", "ann"), event=EVENT, profile=options.pop("profile", PROFILE),
                now=NOW, **options).run()


def _path(result: WalkResult) -> list[tuple[str, str]]:
    return [(s.step_id, s.edge) for s in result.steps]


def test_a_holdout_branch_sends_nothing_but_walks_on() -> None:
    """A subject the split puts in the holdout has its sends shown skipped, and no message to decide."""
    split = step("ab", split=J.SplitStep(branches=[J.SplitBranch(name="treat", weight=1, step="hi"),
                                                   J.SplitBranch(name="hold", weight=1, step="hi", holdout=True)]))
    spec = journey(split, send("hi"))
    for subject in ("s1", "s2", "s3", "s4", "s5", "s6"):
        result = _walk(spec, subject_id=subject)
        branch = split_branch(spec.steps[0], journey="j", subject_id=subject)
        assert _path(result) == [("ab", branch.name), ("hi", "next")]
        assert (result.steps[1].state == run_pb2.STEP_RUN_STATE_SKIPPED) is branch.holdout
        assert len(result.messages) == (0 if branch.holdout else 1)


def test_a_bounded_loop_stops_at_its_bound() -> None:
    """A loop whose head allows two visits ends the walk, stopped, on the third."""
    spec = journey(send("hi", "again", max_visits=2), condition("again", "true", then="hi"))
    result = _walk(spec)
    assert _path(result)[:4] == [("hi", "next"), ("again", "true"), ("hi", "next"), ("again", "true")]
    assert result.end == "stopped" and "loop bound reached" in result.steps[-1].outcome and len(result.messages) == 2


def test_delays_move_simulated_time_and_a_goal_ends_the_run_where_it_waits() -> None:
    """Two one-day delays end a day apart; a goal event on the second day ends the walk at the second delay, converted."""
    spec = journey(delay("d1", 86_400, "d2"), delay("d2", 86_400, "hi"), send("hi"))
    result = _walk(spec)
    assert [s.wake_time.ToDatetime(tzinfo=dt.UTC) for s in result.steps[:2]] == [NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=2)]
    assert result.messages[0].at == NOW + dt.timedelta(days=2)
    converted = _walk(spec, goal_at=NOW + dt.timedelta(days=1, hours=3))
    assert _path(converted) == [("d1", "next"), ("d2", "goal")] and converted.end == "converted" and not converted.messages


def test_a_wait_for_an_event_takes_the_event_edge_when_one_arrives_and_later_steps_read_it() -> None:
    """With an arrival, the wait leaves by `event` at its time and a later template reads steps.<id>.event; without, by `timeout`."""
    wait = step("w", wait_for_event=J.WaitForEventStep(event_type="order.completed", timeout=duration(days=2), on_event_step="thanks",
                                                        on_timeout_step="nudge"))
    spec = journey(wait, send("thanks", template="thanks"), send("nudge"),
                   templates={"welcome": J.MessageTemplate(subject="Hi"),
                              "thanks": J.MessageTemplate(subject="Thanks for {{ steps.w.event.attributes.item }}")})
    order = event_pb2.Event(event_id="o1", event_type="order.completed", subject_id="ann")
    order.attributes.update({"item": "a lamp"})
    arrived = _walk(spec, arrival=lambda s, start, until: (order, start + dt.timedelta(hours=5)))
    assert _path(arrived) == [("w", "event"), ("thanks", "next")]
    assert arrived.messages[0].rendered["subject"] == "Thanks for a lamp" and arrived.messages[0].at == NOW + dt.timedelta(hours=5)
    timed_out = _walk(spec, arrival=lambda s, start, until: None)
    assert _path(timed_out) == [("w", "timeout"), ("nudge", "next")] and timed_out.messages[0].at == NOW + dt.timedelta(days=2)


def test_an_approval_is_shown_approved_or_left_pending() -> None:
    """A preview walks past an approval as approved; a backtest's walk stops there, pending."""
    spec = journey(step("ok", "hi", approval=J.ApprovalStep(approver_role="boss", message="Send to {{ profile.traits.first_name }}?")),
                   send("hi"))
    assert _path(_walk(spec)) == [("ok", "approved"), ("hi", "next")]
    pending = _walk(spec, approve=False)
    assert _path(pending) == [("ok", "")] and pending.end == "pending" and pending.steps[0].state == run_pb2.STEP_RUN_STATE_WAITING


def test_parallel_branches_meet_at_the_join_at_the_last_or_first_arrival() -> None:
    """Both branches are walked from the fork's time; the join goes on at the later arrival (all) or the earlier (any)."""
    for mode, after in ((J.JOIN_MODE_ALL, dt.timedelta(hours=3)), (J.JOIN_MODE_ANY, dt.timedelta(hours=1))):
        spec = journey(step("fork", parallel=J.ParallelStep(branches=["short", "long"], join="meet")),
                       delay("short", 3600, "meet"), delay("long", 3 * 3600, "meet"), step("meet", "hi", join=J.JoinStep(mode=mode)),
                       send("hi"))
        result = _walk(spec)
        assert _path(result) == [("fork", "branch:0"), ("short", "next"), ("long", "next"), ("meet", "next"), ("hi", "next")]
        assert result.messages[0].at == NOW + after


def test_a_template_the_profile_cannot_fill_fails_the_walk_there() -> None:
    """A send whose template reads a trait the subject lacks fails, naming it, and nothing after it is walked."""
    spec = journey(send("hi", "bye"), exit_step("bye"))
    result = _walk(spec, profile={**PROFILE, "traits": {"email": "x@example.com"}})
    assert _path(result) == [("hi", "")] and result.end == "failed" and "first_name" in result.steps[0].error


def test_the_steps_after_an_update_see_its_change_and_a_non_number_fails_like_the_rules_would() -> None:
    """After adding 10 to a score and a tag, a condition on both is true; adding to a text trait fails the walk at the update."""
    update = step("bump", "hot", update_profile=J.UpdateProfileStep(increment={"score": 10}, add_tags=["warm"],
                                                                      traits={"last": "{{ event.event_type }}"}))
    spec = journey(update, condition("hot", 'profile.traits.score >= 15 and "warm" in profile.tags and profile.traits.last == "user.signed_up"',
                                     then="hi"), send("hi"))
    result = _walk(spec, profile={**PROFILE, "traits": {**PROFILE["traits"], "score": 5}})
    assert _path(result) == [("bump", "next"), ("hot", "true"), ("hi", "next")]
    refused = _walk(spec, profile={**PROFILE, "traits": {**PROFILE["traits"], "score": "high"}})
    assert _path(refused) == [("bump", "")] and refused.end == "failed" and "not a number" in refused.steps[0].error
