"""Walking a journey for one subject and one trigger event without any
effect, for PreviewJourney and journey backtests.

The walk takes the path a run would take, with the engine's own pure parts:
conditions and cases compiled by :mod:`.definition`, split branches and
delay ends from :mod:`.nodes`, templates rendered by :mod:`.rendering` in
the same scope (``profile``, ``event``, ``run``, ``steps``), recipients as
:func:`.sends.default_address` finds them, loop bounds and the action
limit. Time is simulated: it starts at the trigger, and each delay or wait
moves it on instead of waiting. What the walk cannot know is given to it:

- a wait for an event asks *arrival* for the subject's first matching event
  before the timeout (a preview has none, so it times out; a backtest looks
  in the window's events);
- an approval is taken as approved (a preview, to show the path after it)
  or left pending (a backtest: the run stops there, counted as pending);
- a goal event (*goal_at*) ends the run as converted once time reaches it.

Sends and notifications are rendered, not decided: the walk returns them
(:class:`Outgoing`) for the caller to decide together, in dry-run mode.
Update-profile steps change nothing stored: the walk applies their change
to its own copy of the profile, so the steps after one see it, as a run's
steps after an update do (a trait that is not a number cannot be added to:
the walk fails there, as the rules service would refuse the change).
Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import rule_engine
from google.protobuf import timestamp_pb2

from overture.common.v1 import event_pb2, messaging_pb2
from overture.orchestrator.v1 import journey_pb2, run_pb2
from overture_runtime.privacy import mask
from overture_runtime.protojson import struct_from_dict, struct_to_dict
from overture_runtime.templates import event_scope, run_scope, template_scope

from .contexts import steps_of
from .definition import CompiledJourney, evaluate_expression
from .graph import ACTION_KINDS
from .nodes import DEFAULT_APPROVAL_TIMEOUT, delay_until, split_branch
from .rendering import RenderError, message_of, render_message, render_text, render_value
from .sends import default_address, mask_url

__all__ = ["Arrival", "Outgoing", "Walk", "WalkResult"]

S = run_pb2
Arrival = Callable[[journey_pb2.Step, dt.datetime, dt.datetime], tuple[event_pb2.Event, dt.datetime] | None]
"""For a wait-for-event step: the subject's first event that passes the step's filter in [from, until), and when it came."""
_MAX_VISITS = 200
"""Steps a walk visits at most (a bounded loop's visits each count)."""


@dataclass
class Outgoing:
    """A message a send, notify or webhook step would send."""

    step: journey_pb2.Step
    """The step."""
    channel: messaging_pb2.Channel.ValueType
    """The channel."""
    rendered: dict[str, str]
    """``to``, ``subject``, ``text_body``, ``html_body`` as rendered."""
    address: str
    """The recipient (unmasked: callers mask it)."""
    at: dt.datetime
    """When it would be sent (simulated time)."""
    record: run_pb2.StepRun
    """The step's record in the walk, for the caller to complete with the decision."""


@dataclass
class WalkResult:
    """Where a walk went."""

    steps: list[run_pb2.StepRun] = field(default_factory=list)
    """Each step reached, in order, with its edge."""
    messages: list[Outgoing] = field(default_factory=list)
    """What it would send."""
    end: str = "completed"
    """How it ended: ``completed``, ``failed``, ``pending`` (an approval), ``converted`` (the goal), ``stopped`` (a loop bound)."""
    at: dt.datetime | None = None
    """When it ended (simulated time)."""


class _Stop(Exception):
    """The walk ends where it is."""


class Walk:
    """One walk; :meth:`run` once."""

    def __init__(
        self, journey: CompiledJourney, *, name: str, subject_id: str, event: event_pb2.Event, profile: Mapping[str, Any],
        now: dt.datetime, arrival: Arrival | None = None, approve: bool = True, goal_at: dt.datetime | None = None,
    ) -> None:
        self._journey = journey
        self._name = name
        self._subject_id = subject_id
        self._event = event_scope(event)
        self._profile = profile
        self._now = now
        self._arrival = arrival
        self._approve = approve
        self._goal_at = goal_at
        self._context: dict[str, Any] = {}
        self._visits: dict[str, int] = {}
        self._actions = 0
        self._holdout = False
        self.result = WalkResult()
        self._kinds: dict[str, Callable[[journey_pb2.Step, run_pb2.StepRun], tuple[str, str]]] = {
            "send": self._send, "notify": self._notify, "webhook": self._webhook, "update_profile": self._update_profile,
            "condition": self._condition, "multi_split": self._multi_split, "split": self._split, "delay": self._delay,
            "wait_for_event": self._wait_for_event, "wait_until": self._wait_until, "approval": self._approval,
            "parallel": self._parallel, "join": self._join, "exit": self._exit,
        }

    def run(self) -> WalkResult:
        """Walk from the first step to the end."""
        try:
            self._path(self._journey.first_step, join="")
        except _Stop:
            pass
        self.result.at = self._now
        return self.result

    # -- the path ------------------------------------------------------------

    def _path(self, current: str, *, join: str) -> str:
        """Walk from *current* until the run ends (``""``) or reaches *join*
        (a parallel branch; returns it)."""
        while current:
            if current == join:
                return join
            step = self._journey.steps[current]
            self._reach_goal()
            if len(self.result.steps) >= _MAX_VISITS:
                self._end(step, "stopped", "the walk visited too many steps")
            current = self._step(step)
        return ""

    def _step(self, step: journey_pb2.Step) -> str:
        """Take one step; the next step's id, or empty when the run ends."""
        if step.max_visits:
            self._visits[step.id] = self._visits.get(step.id, 0) + 1
            if self._visits[step.id] > step.max_visits:
                self._end(step, "stopped", f"loop bound reached: step {step.id!r} visited {step.max_visits} times")
        kind = step.WhichOneof("kind") or ""
        if kind in ACTION_KINDS:
            if self._actions >= self._journey.max_actions:
                self._fail(step, f"the run reached its limit of {self._journey.max_actions} actions (settings.max_actions)")
            self._actions += 1
        record = S.StepRun(step_id=step.id, state=S.STEP_RUN_STATE_COMPLETED, attempts=1)
        record.start_time.CopyFrom(_ts(self._now))
        self.result.steps.append(record)
        handler = self._kinds.get(kind)
        if handler is None:
            self._fail(step, f"unsupported step kind {kind!r}")
        target, edge = handler(step, record)
        record.edge = edge
        record.end_time.CopyFrom(_ts(self._now))
        return target

    def _scope(self, step: journey_pb2.Step) -> dict[str, Any]:
        return template_scope(profile=self._profile, event=self._event, run=run_scope(run_id="preview", journey=self._name, step_id=step.id),
                              steps=steps_of(self._context))

    def _holds(self, step: journey_pb2.Step, rule: rule_engine.Rule) -> bool:
        try:
            return evaluate_expression(rule, self._scope(step))
        except rule_engine.EngineError as error:
            self._fail(step, f"condition failed to evaluate: {error.message}")

    def _reach_goal(self) -> None:
        if self._goal_at is not None and self._goal_at <= self._now and self.result.steps:
            self.result.steps[-1].edge = self.result.steps[-1].edge or "goal"
            self.result.end = "converted"
            raise _Stop

    def _end(self, step: journey_pb2.Step, end: str, why: str) -> NoReturn:
        record = S.StepRun(step_id=step.id, state=S.STEP_RUN_STATE_COMPLETED, attempts=1, outcome=why)
        record.start_time.CopyFrom(_ts(self._now))
        self.result.steps.append(record)
        self.result.end = end
        raise _Stop

    def _fail(self, step: journey_pb2.Step, error: str) -> NoReturn:
        record = self.result.steps[-1] if self.result.steps and self.result.steps[-1].step_id == step.id else None
        if record is None:
            record = S.StepRun(step_id=step.id, attempts=1)
            record.start_time.CopyFrom(_ts(self._now))
            self.result.steps.append(record)
        record.state, record.error = S.STEP_RUN_STATE_FAILED, error
        self.result.end = "failed"
        raise _Stop

    def _wait_until_time(self, record: run_pb2.StepRun, until: dt.datetime) -> None:
        """Move time to *until* (the goal may come first and end the run there)."""
        record.wake_time.CopyFrom(_ts(until))
        if self._goal_at is not None and self._now < self._goal_at <= until:
            self._now = self._goal_at
            record.state, record.edge = S.STEP_RUN_STATE_WAITING, "goal"
            self.result.end = "converted"
            raise _Stop
        self._now = max(self._now, until)

    # -- step kinds ----------------------------------------------------------

    def _send(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        if self._holdout:
            record.state, record.outcome = S.STEP_RUN_STATE_SKIPPED, "holdout: not sent"
            return step.next, "next"
        return self._message(step, record, step.send.channel)

    def _notify(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        return self._message(step, record, step.notify.channel)

    def _message(self, step: journey_pb2.Step, record: run_pb2.StepRun, channel: messaging_pb2.Channel.ValueType) -> tuple[str, str]:
        scope = self._scope(step)
        template, to = message_of(step)
        try:
            rendered = render_message(self._journey.templates, template, to, scope, step_id=step.id)
        except RenderError as error:
            self._fail(step, str(error))
        address = rendered["to"] or (default_address(step.send, self._profile, self._event) if step.WhichOneof("kind") == "send" else "")
        name = messaging_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()
        record.input.CopyFrom(struct_from_dict({"channel": name, "template": template, "to": mask(address)}))
        if not address:
            record.state, record.outcome = S.STEP_RUN_STATE_SKIPPED, "the subject has no address for this channel"
            return step.next, "next"
        record.outcome = f"would send template {template!r} by {name}"
        self.result.messages.append(Outgoing(step, channel, rendered, address, self._now, record))
        return step.next, "next"

    def _webhook(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        scope = self._scope(step)
        try:
            url = render_text(step.webhook.url, scope, where=f"the URL of step {step.id!r}")
            body = render_value(struct_to_dict(step.webhook.body), scope, where=f"the body of step {step.id!r}")
        except RenderError as error:
            self._fail(step, str(error))
        record.input.CopyFrom(struct_from_dict({"channel": "webhook", "url": mask_url(url)}))
        record.outcome = f"would call {mask_url(url)}" + ("; its response is not known to a walk" if step.webhook.keep_response else "")
        rendered = {"to": url, "subject": "", "text_body": json.dumps(body, sort_keys=True), "html_body": ""}
        self.result.messages.append(Outgoing(step, messaging_pb2.CHANNEL_WEBHOOK, rendered, url, self._now, record))
        return step.next, "next"

    def _update_profile(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        update = step.update_profile
        try:
            traits = render_value(struct_to_dict(update.traits), self._scope(step), where=f"the traits of step {step.id!r}")
        except RenderError as error:
            self._fail(step, str(error))
        change = {"set_traits": sorted(traits), "unset_traits": list(update.unset_traits), "increment": sorted(update.increment),
                  "add_tags": list(update.add_tags), "remove_tags": list(update.remove_tags),
                  "enter_segments": list(update.enter_segments), "exit_segments": list(update.exit_segments)}
        record.input.CopyFrom(struct_from_dict({k: v for k, v in change.items() if v}))
        changed = dict(self._profile.get("traits", {}))
        for name, value in traits.items():
            if value is None:
                changed.pop(name, None)
            else:
                changed[name] = value
        for name in update.unset_traits:
            changed.pop(name, None)
        for name, amount in update.increment.items():
            current = changed.get(name, 0)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                self._fail(step, f"rules would refuse the change: trait {name!r} is not a number, so it cannot be added to")
            total = current + amount
            changed[name] = int(total) if float(total).is_integer() else total
        self._profile = {**self._profile, "traits": changed,
                         "tags": _edited(self._profile.get("tags", []), update.add_tags, update.remove_tags),
                         "segments": _edited(self._profile.get("segments", []), update.enter_segments, update.exit_segments)}
        record.outcome = "would update the profile (the later steps of the walk see the change; nothing is stored)"
        return step.next, "next"

    def _condition(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        matched = self._holds(step, self._journey.conditions[step.id])
        record.outcome = f"condition was {str(matched).lower()}"
        return (step.condition.then_step, "true") if matched else (step.condition.else_step, "false")

    def _multi_split(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        for name, rule, target in self._journey.cases[step.id]:
            if self._holds(step, rule):
                record.outcome = f"case {name!r} holds"
                return target, name
        record.outcome = "no case holds"
        return step.multi_split.default_step, "default"

    def _split(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        branch = split_branch(step, journey=self._name, subject_id=self._subject_id)
        if branch.holdout:
            self._holdout = True
        record.outcome = f"branch {branch.name!r}{' (holdout: sends nothing)' if branch.holdout else ''}"
        return branch.step, branch.name

    def _delay(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        until = delay_until(step, now=self._now, profile=self._profile)
        if until is None:
            record.state = S.STEP_RUN_STATE_SKIPPED
            record.outcome = f"the profile has no date in trait {step.delay.until_trait.trait!r}"
            return step.delay.until_trait.on_missing_step, "missing"
        record.outcome = f"would wait until {until.isoformat()}" if until > self._now else "the time had already come"
        self._wait_until_time(record, until)
        return step.next, "next"

    def _wait_for_event(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        wait = step.wait_for_event
        deadline = self._now + wait.timeout.ToTimedelta()
        arrived = self._arrival(step, self._now, deadline) if self._arrival is not None else None
        if arrived is not None:
            event, when = arrived
            self._wait_until_time(record, when)
            self._context[f"{step.id}.event"] = event_scope(event)
            record.output.CopyFrom(struct_from_dict({"event_id": event.event_id}))
            record.outcome = f"event {wait.event_type} arrived ({event.event_id})"
            return wait.on_event_step, "event"
        self._wait_until_time(record, deadline)
        record.outcome = f"no {wait.event_type} event by {deadline.isoformat()}"
        return wait.on_timeout_step, "timeout"

    def _wait_until(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        wait = step.wait_until
        if self._holds(step, self._journey.conditions[step.id]):
            record.outcome = "the condition holds"
            return wait.on_true_step, "true"
        deadline = self._now + wait.timeout.ToTimedelta()
        self._wait_until_time(record, deadline)
        record.outcome = f"the condition did not hold by {deadline.isoformat()} (profile changes are not simulated)"
        return wait.on_timeout_step, "timeout"

    def _approval(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        approval = step.approval
        try:
            question = render_text(approval.message, self._scope(step), where=f"the approval message of step {step.id!r}")
        except RenderError as error:
            self._fail(step, str(error))
        expires = self._now + (approval.timeout.ToTimedelta() or DEFAULT_APPROVAL_TIMEOUT)
        record.input.CopyFrom(struct_from_dict({"approver_role": approval.approver_role, "message": question}))
        record.wake_time.CopyFrom(_ts(expires))
        if not self._approve:
            record.state, record.outcome = S.STEP_RUN_STATE_WAITING, f"would wait for approval until {expires.isoformat()}"
            self.result.end = "pending"
            raise _Stop
        record.outcome = f"would wait for approval by {approval.approver_role or 'anyone'}; shown as approved"
        return step.next, "approved"

    def _parallel(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        parallel = step.parallel
        start, ends = self._now, []
        join = self._journey.steps[parallel.join]
        record.outcome = f"{len(parallel.branches)} branches started"
        for branch in parallel.branches:
            self._now = start
            if self._path(branch, join=parallel.join) != parallel.join:
                raise _Stop  # a branch ended the whole run (an exit)
            ends.append(self._now)
        self._now = min(ends) if join.join.mode == journey_pb2.JOIN_MODE_ANY else max(ends)
        return parallel.join, "branch:0"

    def _join(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        any_ = step.join.mode == journey_pb2.JOIN_MODE_ANY
        record.outcome = "the first branch arrived; the others are cancelled" if any_ else "every branch arrived"
        return step.next, "next"

    def _exit(self, step: journey_pb2.Step, record: run_pb2.StepRun) -> tuple[str, str]:
        record.outcome = f"exited{': goal ' + step.exit.goal if step.exit.goal else ''}"
        if step.exit.goal:
            self.result.end = "converted"
        return "", "next"


def _edited(current: Any, add: Any, remove: Any) -> list[str]:
    """A tag or segment list with *add* appended (once each) and *remove* taken out, as UpdateProfile edits it."""
    gone = set(remove)
    kept = [x for x in current if x not in gone]
    return kept + [x for x in dict.fromkeys(add) if x not in kept and x not in gone]


def _ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts
