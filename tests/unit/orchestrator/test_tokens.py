"""Unit tests of :class:`overture_orchestrator.tokens.Steps`' retries: the
backoff doubles up to its ceiling, and the step's attempts bound it."""

from __future__ import annotations

import datetime as dt

import pytest

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.model import RunState, TokenState
from overture_orchestrator.tokens import Steps, Token
from overture_orchestrator.work import Work
from overture_runtime.clock import ManualClock

from .specs import duration, send


def token(attempts: int) -> Token:
    """A token at step `hello` that has failed *attempts* times already."""
    work = Work(tenant="t", run_id="r-1", token=0, journey="j", journey_version=1, subject_id="s", trigger_event=event_pb2.Event(),
                inline_spec=None, node="hello", state=TokenState.RETRY, attempts=attempts, evaluations=0)
    return Token(work=work, journey=None)


def backoff(step: J.Step, attempts: int) -> dt.timedelta:
    """How long the token waits after failing once more, having failed *attempts* times."""
    clock = ManualClock()
    failing = token(attempts)
    Steps(clock).retry(failing, step, "the provider timed out")
    assert failing.outcome is not None and failing.outcome.run_state == RunState.WAITING
    assert failing.outcome.due_time is not None
    return failing.outcome.due_time - clock.now()


@pytest.mark.parametrize(("attempts", "seconds"), [(0, 1), (1, 2), (2, 4)])
def test_the_default_backoff_doubles_from_a_second(attempts: int, seconds: int) -> None:
    """Without a policy a step is retried after 1, 2, 4 seconds."""
    assert backoff(send("hello"), attempts) == dt.timedelta(seconds=seconds)


def test_the_backoff_stops_at_its_ceiling() -> None:
    """A policy's backoff doubles from its initial delay and stops at its maximum."""
    step = send("hello")
    step.retry.CopyFrom(J.RetryPolicy(max_attempts=10, initial_backoff=duration(seconds=10), max_backoff=duration(minutes=1)))
    assert [backoff(step, n).total_seconds() for n in range(5)] == [10, 20, 40, 60, 60]


@pytest.mark.parametrize("attempts", [47, 60, 1500, 2**31 - 3])
def test_many_attempts_wait_the_ceiling_without_overflowing(attempts: int) -> None:
    """A step allowed many attempts keeps waiting its ceiling however many it has made (2**n seconds would overflow a timedelta)."""
    step = send("hello")
    step.retry.max_attempts = 2**31 - 1
    assert backoff(step, attempts) == dt.timedelta(minutes=5)


def test_the_last_attempt_fails_the_run() -> None:
    """Once the step has used its attempts (5 by default), the run fails with the error."""
    failing = token(4)
    Steps(ManualClock()).retry(failing, send("hello"), "the provider timed out")
    assert failing.outcome is not None and failing.outcome.run_state == RunState.FAILED
    assert "gave up after 5 attempts: the provider timed out" in failing.outcome.dead_letter
