"""The steps that move a token without calling another service: branches
(condition, multi-split, split), waits (delay, wait for event, wait until,
approval), parallel branches and joins, exits. Each reads what it needs
from the run's scope (the trigger event, the profile, what earlier steps
left) and ends its step through :class:`~.tokens.Steps`.

Waits resume in three ways: their timer comes due (the token's state is
WAITING: a delay elapsed, a timeout passed), their event arrives or their
approval is decided or their subject's profile changes (RESUMED, with what
arrived in the run's context), or never (a join waits for its branches).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import rule_engine

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock

from .definition import evaluate_expression
from .model import StepState, TokenState
from .nodes import DEFAULT_APPROVAL_TIMEOUT, delay_until, split_branch
from .recording import FAR_FUTURE
from .rendering import RenderError, render_text
from .tokens import Steps, Token

__all__ = ["RECHECK", "Flow"]

RECHECK = dt.timedelta(hours=1)
"""How often a wait-until step re-checks its condition without a profile event."""


class Flow:
    """Executes the steps that need no other service."""

    def __init__(self, *, steps: Steps, clock: Clock) -> None:
        self._steps = steps
        self._clock = clock

    def condition(self, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any]) -> None:
        matched = self._holds(token, step, scope)
        if matched is not None:
            self._steps.complete(token, step, StepState.COMPLETED, step.condition.then_step if matched else step.condition.else_step,
                                 f"condition was {str(matched).lower()}", edge=str(matched).lower(),
                                 detail={"input": {"expression": step.condition.expression}})

    def multi_split(self, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any]) -> None:
        assert token.journey is not None
        for name, rule, target in token.journey.cases[step.id]:
            try:
                if evaluate_expression(rule, scope):
                    self._steps.complete(token, step, StepState.COMPLETED, target, f"case {name!r} holds", edge=name)
                    return
            except rule_engine.EngineError as error:
                self._steps.fail(token, step.id, f"case {name!r} failed to evaluate: {error.message}")
                return
        self._steps.complete(token, step, StepState.COMPLETED, step.multi_split.default_step, "no case holds", edge="default")

    def split(self, token: Token, step: journey_pb2.Step) -> None:
        work = token.work
        branch = split_branch(step, journey=work.journey or "enqueue", subject_id=work.subject_id)
        token.effects.arms.append(f"{step.id}:{branch.name}")
        if branch.holdout:
            token.effects.holdout = work.holdout = True
        self._steps.complete(token, step, StepState.COMPLETED, branch.step,
                             f"branch {branch.name!r}{' (holdout: sends nothing)' if branch.holdout else ''}", edge=branch.name)

    def delay(self, token: Token, step: journey_pb2.Step, profile: Mapping[str, Any]) -> None:
        # A waiting token is claimed only once due, so it never fires early.
        if token.work.state == TokenState.WAITING:
            self._steps.complete(token, step, StepState.COMPLETED, step.next, "delay elapsed")
            return
        now = self._clock.now()
        until = delay_until(step, now=now, profile=profile)
        if until is None:
            trait = step.delay.until_trait.trait
            self._steps.complete(token, step, StepState.SKIPPED, step.delay.until_trait.on_missing_step,
                                 f"the profile has no date in trait {trait!r}", edge="missing")
        elif until <= now:
            self._steps.complete(token, step, StepState.COMPLETED, step.next, "the time had already come")
        else:
            self._steps.wait(token, step, until, f"waiting until {until.isoformat()}")

    def wait_for_event(self, token: Token, step: journey_pb2.Step) -> None:
        wait, work = step.wait_for_event, token.work
        if work.state == TokenState.RESUMED and f"{step.id}.event" in work.context:
            arrived = work.context[f"{step.id}.event"]
            self._steps.complete(token, step, StepState.COMPLETED, wait.on_event_step,
                                 f"event {wait.event_type} arrived ({arrived.get('event_id', '')})", edge="event",
                                 detail={"output": {"event_id": arrived.get("event_id", ""), "event_type": wait.event_type}})
        elif work.state in (TokenState.WAITING, TokenState.RESUMED):
            self._steps.complete(token, step, StepState.COMPLETED, wait.on_timeout_step, f"no {wait.event_type} event in time",
                                 edge="timeout")
        else:
            deadline = self._clock.now() + wait.timeout.ToTimedelta()
            token.effects.wait = (wait.event_type, step.id)
            self._steps.wait(token, step, deadline, f"waiting for {wait.event_type} until {deadline.isoformat()}", deadline=deadline)

    def wait_until(self, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any]) -> None:
        wait, work = step.wait_until, token.work
        matched = self._holds(token, step, scope)
        if matched is None:
            return
        now = self._clock.now()
        if matched:
            self._steps.complete(token, step, StepState.COMPLETED, wait.on_true_step, "the condition holds", edge="true")
        elif work.state != TokenState.READY and work.deadline is not None and now >= work.deadline:
            self._steps.complete(token, step, StepState.COMPLETED, wait.on_timeout_step, "the condition did not hold in time", edge="timeout")
        else:
            deadline = work.deadline if work.state != TokenState.READY and work.deadline is not None else now + wait.timeout.ToTimedelta()
            # Re-checked whenever an event changes the subject's profile, and
            # at least hourly for changes that come by no event (UpdateProfile).
            token.effects.wait = ("", step.id)
            self._steps.wait(token, step, min(deadline, now + RECHECK), f"waiting until the condition holds, at most until "
                             f"{deadline.isoformat()}", deadline=deadline)

    def approval(self, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any]) -> None:
        approval, work = step.approval, token.work
        decided = work.context.get(f"{step.id}.approval")
        if work.state == TokenState.RESUMED and isinstance(decided, dict):
            who = decided.get("by", "")
            if decided.get("decision") == "approved":
                self._steps.complete(token, step, StepState.COMPLETED, step.next, f"approved by {who}", edge="approved")
            else:
                self._steps.complete(token, step, StepState.COMPLETED, approval.on_reject_step, f"rejected by {who}", edge="rejected")
        elif work.state in (TokenState.WAITING, TokenState.RESUMED):
            token.effects.expired_approval = step.id
            self._steps.complete(token, step, StepState.COMPLETED, approval.on_reject_step,
                                 "rejected automatically: no decision before the timeout", edge="rejected")
        else:
            try:
                message = render_text(approval.message, scope, where=f"the approval message of step {step.id!r}")
            except RenderError as error:
                self._steps.fail(token, step.id, str(error))
                return
            timeout = approval.timeout.ToTimedelta() or DEFAULT_APPROVAL_TIMEOUT
            expires = self._clock.now() + timeout
            token.effects.approval = (approval.approver_role, message, expires)
            self._steps.wait(token, step, expires, f"waiting for approval until {expires.isoformat()}", deadline=expires)

    def parallel(self, token: Token, step: journey_pb2.Step) -> None:
        first, *others = step.parallel.branches
        token.effects.forks.extend(others)
        self._steps.complete(token, step, StepState.COMPLETED, first, f"{len(step.parallel.branches)} branches started", edge="branch:0")

    def join(self, token: Token, step: journey_pb2.Step) -> None:
        if step.join.mode == journey_pb2.JOIN_MODE_ANY:
            token.effects.cancel_siblings = True
            self._steps.complete(token, step, StepState.COMPLETED, step.next, "the first branch arrived; the others are cancelled")
            return
        token.effects.joined, token.effects.join_next = True, step.next
        self._steps.wait(token, step, FAR_FUTURE, "waiting for the other branches", state=TokenState.JOINED)

    def exit(self, token: Token, step: journey_pb2.Step) -> None:
        goal = step.exit.goal
        if goal:
            token.effects.goal = goal
        self._steps.end(token, step, f"exited{': goal ' + goal if goal else ''}")

    def visit(self, token: Token, step: journey_pb2.Step) -> bool:
        """Count a visit of a loop head (a step with ``max_visits``); False
        when the run has used them all (the run ends)."""
        key = f"visits:{step.id}"
        visits = int(token.work.context.get(key, 0)) + 1
        if visits > step.max_visits:
            self._steps.end(token, step, f"loop bound reached: step {step.id!r} visited {step.max_visits} times")
            return False
        token.work.context[key] = token.effects.context[key] = visits
        return True

    def _holds(self, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any]) -> bool | None:
        assert token.journey is not None
        try:
            return evaluate_expression(token.journey.conditions[step.id], scope)
        except rule_engine.EngineError as error:
            self._steps.fail(token, step.id, f"condition failed to evaluate: {error.message}")
            return None


