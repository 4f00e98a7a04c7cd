"""Unit tests of :mod:`overture_connectors.breaker` on the injected clock."""

from __future__ import annotations

import datetime as dt

from prometheus_client import REGISTRY

from overture_connectors.breaker import CircuitBreaker, CircuitState
from overture_runtime.clock import ManualClock
from overture_runtime.config import BreakerConfig


def gauge(name: str) -> float | None:
    """The circuit-state gauge of provider *name*."""
    return REGISTRY.get_sample_value("overture_connector_circuit_state", {"connector": name})


def test_failures_in_a_row_open_the_circuit_and_a_success_resets_the_count() -> None:
    """Two failures, a success, then two failures leave it closed at threshold 3; the third in a row opens it."""
    clock = ManualClock()
    breaker = CircuitBreaker("unit-a", BreakerConfig(failure_threshold=3, open_seconds=10), clock)
    for outcome in ("f", "f", "s", "f", "f"):
        assert breaker.allow()
        breaker.failure() if outcome == "f" else breaker.success()
    assert breaker.state is CircuitState.CLOSED and gauge("unit-a") == 0
    breaker.failure()
    assert breaker.state is CircuitState.OPEN and gauge("unit-a") == 1
    assert not breaker.allow()
    assert breaker.retry_after() == dt.timedelta(seconds=10)


def test_an_open_circuit_turns_half_open_after_its_time_and_a_trial_success_closes_it() -> None:
    """After open_seconds one trial call is let through (others refused); its success closes the circuit."""
    clock = ManualClock()
    breaker = CircuitBreaker("unit-b", BreakerConfig(failure_threshold=1, open_seconds=30, half_open_calls=1), clock)
    breaker.failure()
    clock.advance(dt.timedelta(seconds=29))
    assert breaker.state is CircuitState.OPEN
    clock.advance(dt.timedelta(seconds=1))
    assert breaker.state is CircuitState.HALF_OPEN and gauge("unit-b") == 2
    assert breaker.allow()
    assert not breaker.allow()
    breaker.success()
    assert breaker.state is CircuitState.CLOSED and gauge("unit-b") == 0
    assert breaker.allow()


def test_a_trial_failure_opens_the_circuit_again_for_a_full_period() -> None:
    """A failed trial call reopens the circuit, counted from the failure."""
    clock = ManualClock()
    breaker = CircuitBreaker("unit-c", BreakerConfig(failure_threshold=2, open_seconds=5), clock)
    breaker.failure()
    breaker.failure()
    clock.advance(dt.timedelta(seconds=6))
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after() == dt.timedelta(seconds=5)


def test_a_trial_slot_given_back_unused_lets_another_call_try() -> None:
    """A half-open slot released without a call (the send was rate limited) is available to the next send."""
    clock = ManualClock()
    breaker = CircuitBreaker("unit-d", BreakerConfig(failure_threshold=1, open_seconds=1, half_open_calls=1), clock)
    breaker.failure()
    clock.advance(dt.timedelta(seconds=1))
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_several_trial_calls_must_all_succeed_to_close() -> None:
    """With half_open_calls=2 one success keeps it half-open; the second closes it."""
    clock = ManualClock()
    breaker = CircuitBreaker("unit-e", BreakerConfig(failure_threshold=1, open_seconds=1, half_open_calls=2), clock)
    breaker.failure()
    clock.advance(dt.timedelta(seconds=1))
    assert breaker.allow() and breaker.allow() and not breaker.allow()
    breaker.success()
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
