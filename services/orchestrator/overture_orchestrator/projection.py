"""What one journey version would have done with a window of stored events:
the pure part of a journey backtest (:mod:`.backtests` reads the events,
the profiles and the decisions).

For each trigger event, in commit order, entry is decided as the engine
decides it: the trigger's filter, the profile condition on the subject's
profile (as stored now; an erased subject is skipped), the entry policy
(once, or once per window, counted within the backtest's window), and no
second run while the subject's simulated run is live when the journey does
not allow concurrent runs. Each run is then walked (:mod:`.walk`) from the
event's commit time: a wait for an event takes its ``event`` edge when the
subject's awaited event passing the step's filter is in the window before
the timeout, else ``timeout``; delays move simulated time on; an approval
leaves the run pending; the journey's goal event ends the run, converted.
The walks' sends are returned to be decided in dry-run mode, and
:meth:`Projection.settle` counts what the guardrails allowed and denied.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rule_engine

from overture.common.v1 import event_pb2, messaging_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
from overture.rules.v1 import decision_pb2
from overture_runtime.templates import event_scope, profile_scope

from .definition import SEGMENT_ENTERED, CompiledJourney, evaluate_expression, event_matches
from .dryrun import DrySend
from .walk import Walk

__all__ = ["UNSUPPORTED", "Projection", "Window", "WindowEvent", "awaited_types", "project", "trigger_type"]

J = journey_pb2
D = decision_pb2
_FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)
UNSUPPORTED = "a backtest replays events: only event and segment-entered triggers can be backtested"
"""Why a journey with another trigger cannot be backtested."""
_DENIAL_LABELS = {D.VERDICT_KIND_CONSENT: "consent", D.VERDICT_KIND_FREQUENCY_CAP: "frequency_cap",
                  D.VERDICT_KIND_SUPPRESSION: "suppression", D.VERDICT_KIND_ERASURE: "erasure", D.VERDICT_KIND_SYSTEM: "system"}


@dataclass(frozen=True)
class WindowEvent:
    """One stored event of the window."""

    event: event_pb2.Event
    """The event."""
    at: dt.datetime
    """When it was committed (when the engine would have seen it)."""


@dataclass
class Window:
    """A window's events, as a backtest needs them: the trigger candidates in
    order, and each subject's other events by type, for waits and goals."""

    events: list[WindowEvent] = field(default_factory=list)
    """Every event read, in commit order."""
    by_subject: dict[tuple[str, str], list[WindowEvent]] = field(default_factory=dict)
    """(subject, event type) -> its events, in commit order."""

    def add(self, item: WindowEvent) -> None:
        """Take the next event (in commit order)."""
        self.events.append(item)
        self.by_subject.setdefault((item.event.subject_id, item.event.event_type), []).append(item)

    def first(self, subject_id: str, event_type: str, after: dt.datetime, until: dt.datetime, rule: rule_engine.Rule | None) -> WindowEvent | None:
        """The subject's first *event_type* event committed in (*after*, *until*] that passes *rule*."""
        found = self.by_subject.get((subject_id, event_type), [])
        for item in found[bisect.bisect_right([x.at for x in found], after):]:
            if item.at > until:
                return None
            if event_matches(rule, item.event):
                return item
        return None


def trigger_type(journey: CompiledJourney) -> str | None:
    """The event type whose events start runs, or None when events do not start them."""
    kind = journey.spec.trigger.WhichOneof("kind")
    if kind == "event":
        return journey.spec.trigger.event.event_type
    if kind == "segment_entered":
        return SEGMENT_ENTERED
    return None


def awaited_types(journey: CompiledJourney) -> set[str]:
    """Every event type a backtest of *journey* reads: its trigger's, its waits', its goal's."""
    types = {s.wait_for_event.event_type for s in journey.spec.steps if s.WhichOneof("kind") == "wait_for_event"}
    if journey.spec.HasField("goal"):
        types.add(journey.spec.goal.event_type)
    trigger = trigger_type(journey)
    if trigger:
        types.add(trigger)
    return types


@dataclass
class Projection:
    """A version's projection: the report being counted, and its sends to decide."""

    report: orchestrator_service_pb2.BacktestReport
    """The report so far."""
    sends: list[DrySend] = field(default_factory=list)
    """The sends of every walk, to decide in dry-run mode."""
    subjects: set[str] = field(default_factory=set)
    """Subjects that entered."""

    def settle(self, decisions: Sequence[decision_pb2.Decision]) -> orchestrator_service_pb2.BacktestReport:
        """Count each send as sent (per channel) or denied (per guardrail); the finished report."""
        for send, decision in zip(self.sends, decisions, strict=True):
            if decision.allowed:
                channel = messaging_pb2.Channel.Name(send.step.send.channel).removeprefix("CHANNEL_").lower()
                self.report.sends_by_channel[channel] += 1
            else:
                self.report.denials_by_guardrail[_denial(decision)] += 1
        self.report.subjects_entered = len(self.subjects)
        return self.report


def _denial(decision: decision_pb2.Decision) -> str:
    """The guardrail a denial is counted under: its first denying verdict (a rule by its id)."""
    for verdict in decision.verdicts:
        if verdict.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR):
            return verdict.id if verdict.kind == D.VERDICT_KIND_RULE else _DENIAL_LABELS.get(verdict.kind, "other")
    return "not_decided"


def project(
    journey: CompiledJourney, *, name: str, version: int, window: Window, profiles: Mapping[str, Mapping[str, Any] | None],
) -> Projection:
    """Walk every run *journey* would have started on *window*'s events.
    *profiles* maps each trigger subject to its ``profile`` scope, or None when
    it was erased (an unknown subject reads as an empty profile)."""
    projection = Projection(report=orchestrator_service_pb2.BacktestReport(version=version))
    report = projection.report
    trigger = trigger_type(journey)
    entry = journey.spec.entry
    last_entry: dict[str, dt.datetime] = {}
    busy_until: dict[str, dt.datetime] = {}
    goal_type = journey.spec.goal.event_type if journey.spec.HasField("goal") else ""
    for item in window.events:
        event, subject = item.event, item.event.subject_id
        if event.event_type != trigger or not event_matches(journey.filter, event):
            continue
        profile = profiles[subject] if subject in profiles else profile_scope(subject_id=subject, traits={}, segments=[], timezone="")
        if profile is None:
            continue  # an erased subject is skipped, as the engine skips it
        if journey.profile_condition is not None and not _holds(journey.profile_condition, profile, event):
            continue
        if entry.mode in (J.ENTRY_MODE_ONCE, J.ENTRY_MODE_ONCE_PER_WINDOW) and subject in last_entry and (
                entry.mode == J.ENTRY_MODE_ONCE or last_entry[subject] > item.at - entry.window.ToTimedelta()):
            continue
        if not journey.spec.settings.allow_concurrent_runs and busy_until.get(subject, item.at) > item.at:
            continue
        goal = window.first(subject, goal_type, item.at, _FOREVER, journey.goal_filter) if goal_type else None

        def arrival(step: journey_pb2.Step, start: dt.datetime, until: dt.datetime, subject: str = subject) -> tuple[event_pb2.Event, dt.datetime] | None:
            found = window.first(subject, step.wait_for_event.event_type, start, until, journey.conditions.get(step.id))
            return (found.event, found.at) if found is not None else None

        walked = Walk(journey, name=name, subject_id=subject, event=event, profile=profile, now=item.at, arrival=arrival, approve=False,
                      goal_at=goal.at if goal is not None else None).run()
        last_entry[subject] = item.at
        busy_until[subject] = _FOREVER if walked.end == "pending" else (walked.at or item.at)
        projection.subjects.add(subject)
        report.runs_entered += 1
        for step in walked.steps:
            report.step_counts[step.step_id] += 1
            if step.edge:
                report.edge_counts[f"{step.step_id}:{step.edge}"] += 1
        if walked.end == "converted":
            report.runs_converted += 1
        elif walked.end == "pending":
            report.runs_pending += 1
        elif walked.end == "failed":
            report.runs_failed += 1
        projection.sends += [DrySend(rule_set=journey.spec.rule_set, subject_id=subject, step=m.step, context=event.attributes, at=m.at)
                             for m in walked.messages if m.step.WhichOneof("kind") == "send"]
    return projection


def _holds(rule: rule_engine.Rule, profile: Mapping[str, Any], event: event_pb2.Event) -> bool:
    try:
        return evaluate_expression(rule, {"profile": profile, "event": event_scope(event)})
    except rule_engine.EngineError:
        return False
