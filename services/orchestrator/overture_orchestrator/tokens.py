"""A claimed token while its batch executes, and the ways its step ends.

:class:`Steps` turns what a node did into the token's next state and the
attempt appended to its run's history: completed (along an edge, or the run
ends), waiting on a timer, retrying after a backoff, or failed for good (the
run goes to the dead-letter queue).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import structlog

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock

from .definition import CompiledJourney
from .model import RunState, StepState, TokenState
from .runs import Attempt, Outcome, Work

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
                wake: dt.datetime | None = None) -> Attempt:
        """Append an attempt of *step_id* to the token's history."""
        now = self._clock.now()
        attempt = Attempt(step_id=step_id, state=state, start_time=now, outcome=outcome, error=error, decision_id=token.decision_id,
                          end_time=None if state in (StepState.WAITING, StepState.RETRY) else now, wake_time=wake)
        token.attempts.append(attempt)
        return attempt

    def complete(self, token: Token, step: journey_pb2.Step, state: StepState, next_node: str, outcome: str,
                 *, delivery_id: str = "") -> None:
        """The step is done: the token moves along its edge, or the run ends."""
        self.attempt(token, step.id, state, outcome=outcome).delivery_id = delivery_id
        token.decision_id = ""
        if next_node:
            token.work.node, token.work.attempts, token.work.evaluations, token.work.state = next_node, 0, 0, TokenState.READY
        else:
            token.outcome = Outcome(work=token.work, run_state=RunState.COMPLETED, node="", attempts=token.attempts)

    def wait(self, token: Token, step: journey_pb2.Step, until: dt.datetime, outcome: str) -> None:
        """The token waits at *step* until *until*."""
        self.attempt(token, step.id, StepState.WAITING, outcome=outcome, wake=until)
        token.work.state = TokenState.WAITING
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=TokenState.WAITING,
                                due_time=until, attempts=token.attempts)

    def retry(self, token: Token, step: journey_pb2.Step, error: str) -> None:
        """A transient failure: again after a backoff, or failed for good after the step's attempts."""
        policy = step.retry
        token.work.attempts += 1
        if token.work.attempts >= (policy.max_attempts or 5):
            self.fail(token, step.id, f"gave up after {token.work.attempts} attempts: {error}")
            return
        initial = policy.initial_backoff.ToTimedelta() if policy.HasField("initial_backoff") else dt.timedelta(seconds=1)
        ceiling = policy.max_backoff.ToTimedelta() if policy.HasField("max_backoff") else dt.timedelta(minutes=5)
        wake = self._clock.now() + min(initial * (2 ** (token.work.attempts - 1)), ceiling)
        self.attempt(token, step.id, StepState.RETRY, error=error, wake=wake)
        token.outcome = Outcome(work=token.work, run_state=RunState.WAITING, node=step.id, token_state=TokenState.RETRY, due_time=wake,
                                attempts=token.attempts)

    def fail(self, token: Token, step_id: str, error: str) -> None:
        """The step failed for good: the run fails and goes to the dead-letter queue."""
        self.attempt(token, step_id, StepState.FAILED, error=error)
        token.outcome = Outcome(work=token.work, run_state=RunState.FAILED, node=step_id, attempts=token.attempts, dead_letter=error)
        log.warning("run.dead_lettered", run_id=token.work.run_id, step_id=step_id, error=error[:200])
