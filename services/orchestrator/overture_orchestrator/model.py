"""The states of runs, their tokens and their steps: enums, with their proto
counterparts. Stored as the enum's value (a short word), so that a row reads
plainly in SQL and a new state needs no migration."""

from __future__ import annotations

import enum

from overture.orchestrator.v1 import run_pb2

__all__ = ["ENDED", "LIVE", "RunState", "StepState", "TokenState"]


class RunState(enum.StrEnum):
    """Where a run is in its life."""

    RUNNING = "running"
    """It has a token ready to execute."""
    WAITING = "waiting"
    """Its token waits on a timer: a delay, quiet hours or a retry backoff."""
    COMPLETED = "completed"
    """It reached its end."""
    FAILED = "failed"
    """A step failed for good; the run is in the dead-letter queue."""
    CANCELLED = "cancelled"
    """An operator, or pausing its journey, stopped it."""

    @property
    def proto(self) -> run_pb2.RunState.ValueType:
        """The ``RunState`` of the API."""
        return _RUN_PROTO[self]


class TokenState(enum.StrEnum):
    """What a run's token is doing at its node."""

    READY = "ready"
    """Execute the node when due (now, for a new run)."""
    WAITING = "waiting"
    """The node started and waits until its due time (a delay)."""
    RETRY = "retry"
    """The node failed transiently; execute it again when due."""
    RESUMED = "resumed"
    """The wait at the node ended early: its event came, its approval was
    decided, or its subject's profile changed (re-check the condition)."""
    JOINED = "joined"
    """At a join, waiting for the run's other branches; never due by itself."""


class StepState(enum.StrEnum):
    """The outcome of one attempt of a step."""

    COMPLETED = "completed"
    """It did its work; the run went on along its edge."""
    SKIPPED = "skipped"
    """It had nothing to do (a send the rules denied, no address)."""
    WAITING = "waiting"
    """It waits on a timer."""
    RETRY = "retry"
    """It failed transiently and is tried again."""
    FAILED = "failed"
    """It failed for good."""

    @property
    def proto(self) -> run_pb2.StepRunState.ValueType:
        """The ``StepRunState`` of the API."""
        return _STEP_PROTO[self]


ENDED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
"""Run states that never change again (but for a retry of a failed run)."""
LIVE = frozenset({RunState.RUNNING, RunState.WAITING})
"""Run states with a token."""

_RUN_PROTO = {
    RunState.RUNNING: run_pb2.RUN_STATE_RUNNING, RunState.WAITING: run_pb2.RUN_STATE_WAITING,
    RunState.COMPLETED: run_pb2.RUN_STATE_COMPLETED, RunState.FAILED: run_pb2.RUN_STATE_FAILED,
    RunState.CANCELLED: run_pb2.RUN_STATE_CANCELLED,
}
_STEP_PROTO = {
    StepState.COMPLETED: run_pb2.STEP_RUN_STATE_COMPLETED, StepState.SKIPPED: run_pb2.STEP_RUN_STATE_SKIPPED,
    StepState.WAITING: run_pb2.STEP_RUN_STATE_WAITING, StepState.RETRY: run_pb2.STEP_RUN_STATE_RUNNING,
    StepState.FAILED: run_pb2.STEP_RUN_STATE_FAILED,
}
