"""Executing a claimed batch of tokens, node by node, with batched sends.

A batch moves every token as far as it can go now: pure nodes (condition,
delay, exit) run inline; the profiles the batch's conditions and sends read
come in one call per tenant and round (``profiles.py``); the batch's sends
are rendered, decided and delivered together (``sends.py``). The outcomes
come back to the worker, which records them in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import rule_engine
import structlog

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock
from overture_runtime.errors import OvertureError
from overture_runtime.protojson import from_json
from overture_runtime.templates import event_scope

from .calls import Transient
from .definition import compile_journey, evaluate_expression
from .journeys import JourneyStore
from .model import RunState, StepState, TokenState
from .profiles import ProfileReader, Profiles
from .runs import Outcome, Work
from .sends import Sender
from .tokens import Steps, Token

__all__ = ["Executor"]

log = structlog.get_logger("overture.orchestrator")
_READS_PROFILE = frozenset({"send", "condition"})


class Executor:
    """Runs journeys' nodes against the rules and connectors services."""

    def __init__(self, *, journeys: JourneyStore, clock: Clock, profiles: ProfileReader, sender: Sender, steps: Steps,
                 max_steps: int = 50) -> None:
        self._journeys = journeys
        self._clock = clock
        self._profiles = profiles
        self._sender = sender
        self._steps = steps
        self._max_steps = max_steps

    async def execute(self, batch: Sequence[Work]) -> list[Outcome]:
        """Move each token of *batch* until it waits, ends, or has taken
        ``max_steps`` steps (then it is due again at once); one outcome each."""
        tokens = [await self._prepare(work) for work in batch]
        profiles: Profiles = {}
        for _ in range(self._max_steps):
            ready = [t for t in tokens if t.outcome is None]
            if not ready:
                break
            await self._profiles.load([(t.work.tenant, t.work.subject_id) for t in ready if self._kind(t) in _READS_PROFILE], profiles)
            sends: list[Token] = []
            for token in ready:
                kind = self._kind(token)
                if kind is None:
                    self._steps.fail(token, token.work.node, f"step {token.work.node!r} is not in version {token.work.journey_version}")
                elif kind == "send":
                    sends.append(token)
                elif kind == "condition":
                    self._condition(token, token.step, profiles[(token.work.tenant, token.work.subject_id)])
                elif kind == "delay":
                    self._delay(token, token.step)
                elif kind == "exit":
                    goal = token.step.exit.goal
                    self._steps.complete(token, token.step, StepState.COMPLETED, "", f"exited{': goal ' + goal if goal else ''}")
                else:
                    self._steps.fail(token, token.work.node, f"unsupported step kind {kind!r}")
            if sends:
                await self._sender.send(sends, profiles)
        for token in tokens:
            if token.outcome is None:  # took max_steps: due again at once, so one run cannot hold a worker
                token.outcome = Outcome(work=token.work, run_state=RunState.RUNNING, node=token.work.node, attempts=token.attempts)
        return [t.outcome for t in tokens if t.outcome is not None]

    @staticmethod
    def _kind(token: Token) -> str | None:
        """The kind of the token's node; None when its version has no such node."""
        assert token.journey is not None
        step = token.journey.steps.get(token.work.node)
        return step.WhichOneof("kind") if step is not None else None

    async def _prepare(self, work: Work) -> Token:
        token = Token(work=work, journey=None)
        try:
            if work.inline_spec is not None:
                compiled, _ = compile_journey(from_json(work.inline_spec, journey_pb2.JourneySpec))
                token.journey = compiled
            else:
                if work.journey in await self._journeys.paused(work.tenant):
                    token.outcome = Outcome(work=work, run_state=RunState.CANCELLED, node="")
                    log.info("run.cancelled", run_id=work.run_id, reason="journey paused")
                    return token
                token.journey = await self._journeys.compiled(work.tenant, work.journey, work.journey_version)
        except OvertureError as error:
            self._steps.fail(token, work.node, f"the journey cannot run: {error.message}")
        if token.journey is None and token.outcome is None:
            self._steps.fail(token, work.node, "the journey does not compile")
        return token

    # -- pure nodes ----------------------------------------------------------

    def _condition(self, token: Token, step: journey_pb2.Step, profile: Mapping[str, Any] | Transient) -> None:
        if isinstance(profile, Transient):
            self._steps.retry(token, step, str(profile))
            return
        assert token.journey is not None
        scope = {"event": event_scope(token.work.trigger_event), "profile": profile}
        try:
            matched = evaluate_expression(token.journey.conditions[step.id], scope)
        except rule_engine.EngineError as error:
            self._steps.fail(token, step.id, f"condition failed to evaluate: {error.message}")
            return
        self._steps.complete(token, step, StepState.COMPLETED, step.condition.then_step if matched else step.condition.else_step,
                             f"condition was {str(matched).lower()}")

    def _delay(self, token: Token, step: journey_pb2.Step) -> None:
        # A waiting token is claimed only once due, so it never fires early.
        if token.work.state == TokenState.WAITING:
            self._steps.complete(token, step, StepState.COMPLETED, step.next, "delay elapsed")
            return
        wake = self._clock.now() + step.delay.duration.ToTimedelta()
        self._steps.wait(token, step, wake, f"waiting until {wake.isoformat()}")
