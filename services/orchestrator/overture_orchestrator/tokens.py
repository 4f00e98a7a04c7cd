"""A claimed token while its batch executes, and the ways its step ends.

:class:`Steps` turns what a node did into the token's next state and the
attempt appended to its run's history: completed (along a named edge, or
the run ends), waiting (on a timer, an event, an approval, a join), retrying
after a backoff, or failed for good (the run goes to the dead-letter queue).
Each attempt says whether it is the token's arrival at the step, whether
the token had been waiting there, and, when it leaves the step, how long it
stayed: the journey's counters are made from that.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import structlog

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock

from .contexts import DONE
from .definition import CompiledJourney
from .model import RunState, StepState, TokenState
from .work import Attempt, Effects, Outcome, Work

__all__ = ["Steps", "Token"]

log = structlog.get_logger("overture.orchestrator")


@dataclass
class Token:
    """A claimed token while its batch executes."""

    work: Work
    """The claimed token, moved as the batch goes."""
    journey: CompiledJourney | None
    """The journey version it runs on (None when it cannot run)."""
    attempts: list[Attempt] = field(default_factory=list)
    """The attempts this batch appended."""
    outcome: Outcome | None = None
    """Set once the token stops for this batch."""
    decision_id: str = ""
    """The decision of the send step it is at."""
    effects: Effects = field(default_factory=Effects)
    """What the batch changes besides the token's move."""

    @property
    def step(self) -> journey_pb2.Step:
        """The node the token is at (which must exist)."""
        assert self.journey is not None
        return self.journey.steps[self.work.node]


class Steps:
    """Ends steps on the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def attempt(self, token: Token, step_id: str, state: StepState, *, outcome: str = "", error: str = "",
                wake: dt.datetime | None = None, edge: str = "") -> Attempt:
        """Append an attempt of *step_id* to the token's history."""
        now = self._clock.now()
        work = token.work
        leaves = state in (StepState.COMPLETED, StepState.SKIPPED, StepState.FAILED)
        attempt = Attempt(step_id=step_id, state=state, start_time=now, outcome=outcome, error=error, decision_id=token.decision_id,
                          end_time=None if state in (StepState.WAITING, StepState.RETRY) else now, wake_time=wake, edge=edge,
                          arrival=work.state == TokenState.READY and work.attempts == 0 and not any(
                              a.step_id == step_id for a in token.attempts),
                          waited=work.state in (TokenState.WAITING, TokenState.RESUMED),
                          latency=(now - work.node_since).total_seconds() if leaves and work.node_since is not None else None)
        token.attempts.append(attempt)
        return attempt

    def complete(self, token: Token, step: journey_pb2.Step, state: StepState, next_node: str, outcome: str,
                 *, edge: str = "next", delivery_id: str = "", detail: dict[str, Any] | None = None) -> None:
        """The step is done: the token moves along *edge* to *next_node*, or the run ends."""
        attempt = self.attempt(token, step.id, state, outcome=outcome, edge=edge)
        attempt.delivery_id, attempt.detail = delivery_id, detail
        token.decision_id = ""
        work = token.work
        if token.journey is not None and step.id in token.journey.repeatable:  # the next time acts anew
            key = f"{DONE}{step.id}"
            work.context[key] = token.effects.context[key] = int(work.context.get(key, 0)) + 1
        if next_node:
            work.node, work.attempts, work.evaluations, work.state = next_node, 0, 0, TokenState.READY
            work.node_since, work.deadline = self._clock.now(), None
        else:
            token.outcome = Outcome(work=work, run_state=RunState.COMPLETED, node="", attempts=token.attempts, effects=token.effects)

    def wait(self, token: Token, step: journey_pb2.Step, until: dt.datetime, outcome: str, *, deadline: dt.datetime | None = None,
             state: TokenState = TokenState.WAITING) -> None:
        """The token waits at *step* until *until* (or until its wait ends earlier, by *deadline*)."""
        self.attempt(token, step.id, StepState.WAITING, outcome=outcome, wake=until if until.year < 9999 else None)
        token.work.deadline = deadline
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=state, due_time=until,
                                attempts=token.attempts, effects=token.effects)

    def retry(self, token: Token, step: journey_pb2.Step, error: str) -> None:
        """A transient failure: again after a backoff, or failed for good after the step's attempts."""
        policy = step.retry
        token.work.attempts += 1
        if token.work.attempts >= (policy.max_attempts or 5):
            self.fail(token, step.id, f"gave up after {token.work.attempts} attempts: {error}")
            return
        initial = policy.initial_backoff.ToTimedelta() if policy.HasField("initial_backoff") else dt.timedelta(seconds=1)
        ceiling = policy.max_backoff.ToTimedelta() if policy.HasField("max_backoff") else dt.timedelta(minutes=5)
        # In float seconds, the doubling capped at 2**64 (past any ceiling): a
        # timedelta times 2**n overflows from the 47th retry of a step allowed that many.
        backoff = min(initial.total_seconds() * 2.0 ** min(token.work.attempts - 1, 64), ceiling.total_seconds())
        wake = self._clock.now() + dt.timedelta(seconds=backoff)
        self.attempt(token, step.id, StepState.RETRY, error=error, wake=wake)
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=TokenState.RETRY, due_time=wake,
                                attempts=token.attempts, effects=token.effects)

    def fail(self, token: Token, step_id: str, error: str) -> None:
        """The step failed for good: the run fails and goes to the dead-letter queue."""
        self.attempt(token, step_id, StepState.FAILED, error=error)
        token.outcome = Outcome(work=token.work, run_state=RunState.FAILED, node=step_id, attempts=token.attempts, dead_letter=error,
                                effects=token.effects)
        log.warning("run.dead_lettered", run_id=token.work.run_id, step_id=step_id, error=error[:200])

    def end(self, token: Token, step: journey_pb2.Step, outcome: str, *, state: RunState = RunState.COMPLETED) -> None:
        """End the whole run at *step* (its other branches too)."""
        self.attempt(token, step.id, StepState.COMPLETED if state == RunState.COMPLETED else StepState.SKIPPED, outcome=outcome)
        token.effects.cancel_siblings = True
        token.outcome = Outcome(work=token.work, run_state=state, node="", attempts=token.attempts, effects=token.effects)
