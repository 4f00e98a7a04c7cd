"""Per-provider circuit breakers: closed, open and half-open, on the injected clock.

A breaker counts the provider's failures in a row: a send it could not take
(unavailable, timed out), a send left in doubt, or a connector error. A
refusal of one message (a bad address) is an answer from a healthy provider
and counts as a success. After ``failure_threshold`` failures in a row the
circuit opens: the provider is skipped (the route moves to its next
provider) for ``open_seconds``. Then it is half-open: ``half_open_calls``
trial sends go through; if they all succeed it closes, and one failure
opens it again for another ``open_seconds``.

Breakers live in each replica's memory, like Hystrix's and
resilience4j's: each replica learns a provider's health from its own calls
within ``failure_threshold`` sends, and no shared store sits in the send
path. Each replica's state is what its ``ListConnectors`` answers and its
``overture_connector_circuit_state`` gauge shows.
"""

from __future__ import annotations

import datetime as dt
import enum

from prometheus_client import Counter, Gauge

from overture_runtime.clock import Clock
from overture_runtime.config import BreakerConfig

__all__ = ["CIRCUIT_STATE", "CircuitBreaker", "CircuitState"]

CIRCUIT_STATE = Gauge("overture_connector_circuit_state", "A provider's circuit breaker in this process: 0 closed, 1 open, 2 half-open.",
                      ["connector"])
TRANSITIONS = Counter("overture_connector_circuit_transitions_total", "Circuit breaker state changes, by provider and new state.",
                      ["connector", "state"])


class CircuitState(enum.IntEnum):
    """A breaker's state; the values are the gauge's."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """One provider's breaker. Not thread-safe; one event loop uses it."""

    def __init__(self, name: str, config: BreakerConfig, clock: Clock) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at: dt.datetime | None = None
        self._trials = 0
        self._trial_successes = 0
        CIRCUIT_STATE.labels(connector=name).set(CircuitState.CLOSED)

    @property
    def state(self) -> CircuitState:
        """The state now: an open circuit whose time is up reads half-open."""
        if self._state is CircuitState.OPEN and self._opened_at is not None and self._clock.now() >= self.reopens_at():
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def reopens_at(self) -> dt.datetime:
        """When an open circuit lets a trial call through."""
        assert self._opened_at is not None
        return self._opened_at + dt.timedelta(seconds=self._config.open_seconds)

    def retry_after(self) -> dt.timedelta:
        """How long until the provider may be called again (zero unless open)."""
        if self.state is not CircuitState.OPEN:
            return dt.timedelta(0)
        return max(self.reopens_at() - self._clock.now(), dt.timedelta(0))

    def allow(self) -> bool:
        """Whether a send may call the provider now. While half-open, each
        allowed call takes one of the trial slots until it reports back."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._trials >= self._config.half_open_calls:
            return False
        self._trials += 1
        return True

    def release(self) -> None:
        """Give back a trial slot taken by :meth:`allow` without calling the provider."""
        if self._state is CircuitState.HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def success(self) -> None:
        """The provider answered (a call made while open, as a route's last resort, closes the circuit too)."""
        self._failures = 0
        if self._state is CircuitState.OPEN:
            self._move(CircuitState.CLOSED)
        elif self._state is CircuitState.HALF_OPEN:
            self._trial_successes += 1
            if self._trial_successes >= self._config.half_open_calls:
                self._move(CircuitState.CLOSED)

    def failure(self) -> None:
        """The provider failed a call."""
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        if self._state is CircuitState.OPEN:  # a last-resort call failed: the open period starts again
            self._open()
            return
        self._failures += 1
        if self._state is CircuitState.CLOSED and self._failures >= self._config.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock.now()
        self._move(CircuitState.OPEN)

    def _move(self, state: CircuitState) -> None:
        self._state = state
        self._trials = self._trial_successes = 0
        if state is not CircuitState.OPEN:
            self._failures = 0
        CIRCUIT_STATE.labels(connector=self.name).set(state)
        TRANSITIONS.labels(connector=self.name, state=state.name.lower()).inc()
