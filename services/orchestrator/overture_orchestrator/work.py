"""What the engine passes between its parts: runs to start, claimed tokens
(work), the attempts of steps, and the outcomes a claim records. Plain
values; the stores and the executor share them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from overture.common.v1 import event_pb2

from .model import RunState, StepState, TokenState

__all__ = ["Attempt", "Effects", "NewRun", "Outcome", "Work"]


@dataclass(frozen=True)
class NewRun:
    """A run to start."""

    tenant: str
    journey: str
    version: int
    subject_id: str
    event: event_pb2.Event
    first_step: str
    inline_spec: str | None = None


@dataclass
class Work:
    """A claimed token with what executing it needs. Mutable while it runs."""

    tenant: str
    run_id: str
    token: int
    journey: str
    journey_version: int
    subject_id: str
    trigger_event: event_pb2.Event
    inline_spec: str | None
    node: str
    state: TokenState
    attempts: int
    evaluations: int
    deadline: dt.datetime | None = None
    """A wait's timeout."""
    node_since: dt.datetime | None = None
    """When the token reached its node."""
    holdout: bool = False
    """The run is in a holdout branch: it sends nothing."""
    actions: int = 0
    """Actions the run took before this claim."""
    arms: tuple[str, ...] = ()
    """The split branches the run took, ``<step>:<branch>``."""
    context: dict[str, Any] = field(default_factory=dict)
    """The run's context: ``<step id>.<key>`` -> value (kept responses, matched events, approvals, visits)."""


@dataclass
class Attempt:
    """One attempt of one step, to append."""

    step_id: str
    state: StepState
    start_time: dt.datetime
    outcome: str = ""
    error: str = ""
    decision_id: str = ""
    delivery_id: str = ""
    end_time: dt.datetime | None = None
    wake_time: dt.datetime | None = None
    edge: str = ""
    """The edge the token left by (completed or skipped attempts)."""
    arrival: bool = False
    """The first attempt after the token reached the step (counts the step as entered)."""
    waited: bool = False
    """The token had been waiting at the step (it leaves a wait)."""
    latency: float | None = None
    """Seconds from reaching the step to leaving it, for an attempt that leaves it."""
    detail: dict[str, Any] | None = None
    """What the step read and produced, masked: ``{"input": {...}, "output": {...}}``."""


@dataclass
class Outcome:
    """Where a claimed token went: its attempts, and its run's new state."""

    work: Work
    run_state: RunState
    node: str
    token_state: TokenState = TokenState.READY
    due_time: dt.datetime | None = None
    attempts: list[Attempt] = field(default_factory=list)
    dead_letter: str = ""
    """The last error, when the run failed and goes to the dead-letter queue."""
    effects: Effects | None = None
    """What else the batch changes for the token's run (waits, forks, context, flags)."""


@dataclass
class Effects:
    """The changes besides the token's move that a claim's outcome records."""

    wait: tuple[str, str] | None = None
    """(event type, step id) the token now waits for; event type "" for any profile change."""
    approval: tuple[str, str, dt.datetime] | None = None
    """(approver role, message, expire time) of an approval the token now waits at."""
    expired_approval: str = ""
    """The approval step whose request expired unanswered (rejected automatically)."""
    forks: list[str] = field(default_factory=list)
    """Nodes of new tokens (parallel branches beside this one)."""
    joined: bool = False
    """The token arrived at a join that waits for every branch: it waits there for the others."""
    join_next: str = ""
    """The step after that join (empty: the run ends once every branch is in)."""
    cancel_siblings: bool = False
    """End the run's other tokens (an exit, a join that waits for the first branch only)."""
    context: dict[str, Any] = field(default_factory=dict)
    """Context keys to set."""
    arms: list[str] = field(default_factory=list)
    """Split branches taken, ``<step>:<branch>``."""
    holdout: bool = False
    """The run entered a holdout branch."""
    goal: str = ""
    """The goal the run reached (it converted)."""
    actions: int = 0
    """Actions taken in this batch."""
    skipped: bool = False
    """The run ended without doing anything for its subject (erased): counted as a skipped entry."""
