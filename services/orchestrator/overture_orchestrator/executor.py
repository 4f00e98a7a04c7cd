"""Executing a claimed batch of tokens, node by node, with batched I/O.

A batch moves every token as far as it can go now. Each round: the
profiles of the batch's subjects come in one call per tenant (:mod:`.profiles`);
steps that need no other service run inline (:mod:`.flow`); update-profile
steps call the rules service side by side; the round's sends and
notifications are rendered, decided and delivered together (:mod:`.sends`).
Then the next round, for the tokens that moved on, with the profiles that
an update-profile step changed read again. The outcomes come back
to the worker, which records them in one transaction.

Before its step, a token checks what bounds its run: a loop head counts its
visits (``max_visits``), an action step counts against ``max_actions``, a
run in a holdout branch skips its sends, and the run of an erased subject
ends, skipped, without sending anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.clock import Clock
from overture_runtime.errors import OvertureError
from overture_runtime.protojson import from_json, struct_to_dict
from overture_runtime.templates import event_scope, run_scope, template_scope

from .calls import Transient
from .contexts import effect_key, steps_of
from .definition import compile_journey
from .flow import Flow
from .graph import ACTION_KINDS
from .journeys import JourneyStore
from .model import RunState, StepState, TokenState
from .profiles import ERASED, ProfileReader, Profiles
from .rendering import RenderError, render_value
from .sends import Sender
from .tokens import Steps, Token
from .work import Outcome, Work

__all__ = ["Executor"]

log = structlog.get_logger("overture.orchestrator")
_PROFILE_KINDS = frozenset({"send", "notify", "webhook", "condition", "multi_split", "wait_until", "approval", "update_profile"})
"""Step kinds that read the subject's profile (delays only when they wait until a local time or a trait date)."""
_NO_PROFILE: dict[str, Any] = {"traits": {}, "segments": [], "timezone": "", "tags": [], "subject_id": ""}


def _reads_profile(token: Token) -> bool:
    step = token.journey.steps.get(token.work.node) if token.journey is not None else None
    if step is None:
        return False
    kind = step.WhichOneof("kind")
    return kind in _PROFILE_KINDS or (kind == "delay" and token.work.state != TokenState.WAITING
                                      and (step.delay.HasField("until_local_time") or step.delay.HasField("until_trait")))


class Executor:
    """Runs journeys' nodes against the rules and connectors services."""

    def __init__(self, *, journeys: JourneyStore, clock: Clock, profiles: ProfileReader, sender: Sender, steps: Steps,
                 max_steps: int = 50) -> None:
        self._journeys = journeys
        self._clock = clock
        self._profiles = profiles
        self._sender = sender
        self._steps = steps
        self._flow = Flow(steps=steps, clock=clock)
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
            await self._profiles.load([(t.work.tenant, t.work.subject_id) for t in ready if _reads_profile(t)], profiles)
            messages: list[Token] = []
            updates: list[tuple[Token, dict[str, Any]]] = []
            for token in ready:
                step = token.journey.steps.get(token.work.node) if token.journey is not None else None
                if step is None:
                    self._steps.fail(token, token.work.node, f"step {token.work.node!r} is not in version {token.work.journey_version}")
                    continue
                profile = profiles.get((token.work.tenant, token.work.subject_id), _NO_PROFILE)
                if profile is ERASED:
                    token.effects.skipped = True
                    log.info("run.skipped", run_id=token.work.run_id, journey=token.work.journey, reason="the subject was erased")
                    self._steps.end(token, step, "skipped: the subject's profile was erased")
                    continue
                if not self._bounds(token, step):
                    continue
                kind = step.WhichOneof("kind")
                if kind in ("send", "notify", "webhook"):
                    if kind == "send" and token.work.holdout:
                        self._steps.complete(token, step, StepState.SKIPPED, step.next, "holdout: not sent")
                    else:
                        messages.append(token)
                    continue
                if isinstance(profile, Transient):
                    self._steps.retry(token, step, str(profile))
                    continue
                assert isinstance(profile, dict)
                scope = self._scope(token, step, profile)
                if kind == "update_profile":
                    updates.append((token, scope))
                else:
                    self._flow_step(kind, token, step, scope, profile)
            if updates:
                await asyncio.gather(*(self._update_profile(token, scope, profiles) for token, scope in updates))
            if messages:
                await self._sender.send(messages, profiles)
            for token, _ in updates:  # read again next round: the steps after an update see what it changed
                profiles.pop((token.work.tenant, token.work.subject_id), None)
        for token in tokens:
            if token.outcome is None:  # took max_steps: due again at once, so one run cannot hold a worker
                token.outcome = Outcome(work=token.work, run_state=RunState.RUNNING, node=token.work.node, attempts=token.attempts,
                                        effects=token.effects)
        return [t.outcome for t in tokens if t.outcome is not None]

    def _flow_step(self, kind: str | None, token: Token, step: journey_pb2.Step, scope: Mapping[str, Any], profile: Mapping[str, Any]) -> None:
        flow = self._flow
        if kind == "condition":
            flow.condition(token, step, scope)
        elif kind == "multi_split":
            flow.multi_split(token, step, scope)
        elif kind == "split":
            flow.split(token, step)
        elif kind == "delay":
            flow.delay(token, step, profile)
        elif kind == "wait_for_event":
            flow.wait_for_event(token, step)
        elif kind == "wait_until":
            flow.wait_until(token, step, scope)
        elif kind == "approval":
            flow.approval(token, step, scope)
        elif kind == "parallel":
            flow.parallel(token, step)
        elif kind == "join":
            flow.join(token, step)
        elif kind == "exit":
            flow.exit(token, step)
        else:
            self._steps.fail(token, step.id, f"unsupported step kind {kind!r}")

    def _bounds(self, token: Token, step: journey_pb2.Step) -> bool:
        """Whether the token may execute *step*: a loop head has visits left,
        an action step is within the run's action limit."""
        arriving = not token.attempts or token.attempts[-1].step_id != step.id
        if step.max_visits and arriving and token.work.attempts == 0 and not self._flow.visit(token, step):
            return False
        if step.WhichOneof("kind") in ACTION_KINDS and token.journey is not None:
            taken = token.work.actions + token.effects.actions
            if taken >= token.journey.max_actions:
                self._steps.fail(token, step.id, f"the run reached its limit of {token.journey.max_actions} actions (settings.max_actions)")
                return False
        return True

    @staticmethod
    def _scope(token: Token, step: journey_pb2.Step, profile: Mapping[str, Any]) -> dict[str, Any]:
        work = token.work
        return template_scope(profile=profile, event=event_scope(work.trigger_event),
                              run=run_scope(run_id=work.run_id, journey=work.journey, step_id=step.id), steps=steps_of(work.context))

    async def _update_profile(self, token: Token, scope: Mapping[str, Any], profiles: Profiles) -> None:
        """Change the profile; the steps after it in this batch read the changed one."""
        step, work = token.step, token.work
        update = step.update_profile
        try:
            traits = render_value(struct_to_dict(update.traits), scope, where=f"the traits of step {step.id!r}")
            profiles[(work.tenant, work.subject_id)] = await self._profiles.update(work.tenant, work.subject_id, request_id=effect_key(work.run_id, step.id, work.context), set_traits=traits,
                                        unset_traits=update.unset_traits, increment=update.increment, add_tags=update.add_tags,
                                        remove_tags=update.remove_tags, enter_segments=update.enter_segments,
                                        exit_segments=update.exit_segments)
        except RenderError as error:
            self._steps.fail(token, step.id, str(error))
            return
        except Transient as error:
            self._steps.retry(token, step, str(error))
            return
        except grpc.aio.AioRpcError as error:
            self._steps.fail(token, step.id, f"rules refused the change: {error.code().name}: {error.details()}")
            return
        token.effects.actions += 1
        self._steps.complete(token, step, StepState.COMPLETED, step.next, "profile updated")

    async def _prepare(self, work: Work) -> Token:
        token = Token(work=work, journey=None)
        try:
            if work.inline_spec is not None:
                compiled, _ = compile_journey(from_json(work.inline_spec, journey_pb2.JourneySpec))
                token.journey = compiled
            else:
                if work.journey in await self._journeys.paused(work.tenant):
                    token.outcome = Outcome(work=work, run_state=RunState.CANCELLED, node="", effects=token.effects)
                    log.info("run.cancelled", run_id=work.run_id, reason="journey paused")
                    return token
                token.journey = await self._journeys.compiled(work.tenant, work.journey, work.journey_version)
        except OvertureError as error:
            self._steps.fail(token, work.node, f"the journey cannot run: {error.message}")
        if token.journey is None and token.outcome is None:
            self._steps.fail(token, work.node, "the journey does not compile")
        return token
