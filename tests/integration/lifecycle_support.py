"""What the journey lifecycle tests share: a cluster on a manual clock,
journeys of delays and exits (they need no rule set), runs waiting on them,
and the audit log's entries of one action."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture.rules.v1 import rules_service_pb2 as R
from overture_orchestrator import OrchestratorApp
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import Cluster, running_cluster

__all__ = ["MD", "START", "World", "audit_entries", "delay_journey", "lifecycle_cluster", "orchestrator_app", "publish", "waiting_runs"]

MD = admin_metadata()
START = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
World = tuple[Cluster, ManualClock]
"""The cluster and the orchestrator's clock."""


@contextlib.asynccontextmanager
async def lifecycle_cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[tuple[Cluster, ManualClock]]:
    """The four services, the orchestrator on a manual clock at :data:`START`."""
    clock = ManualClock(START)
    async with running_cluster(make_settings, tmp_path / "mail", orchestrator_clock=clock) as cluster:
        yield cluster, clock


def orchestrator_app(c: Cluster) -> OrchestratorApp:
    """The cluster's orchestrator, for tests that look inside."""
    app = c.apps["orchestrator"]
    assert isinstance(app, OrchestratorApp)
    return app


def delay_journey(*steps: tuple[str, str], event_type: str = "trial.started", description: str = "") -> J.JourneySpec:
    """A journey of *steps* in order, each ``(id, kind)`` with kind ``delay``
    (one day, then the next step) or ``exit``."""
    spec = J.JourneySpec(description=description)
    spec.trigger.event.event_type = event_type
    for i, (step_id, kind) in enumerate(steps):
        step = spec.steps.add(id=step_id)
        if kind == "delay":
            step.delay.duration.FromTimedelta(dt.timedelta(days=1))
            step.next = steps[i + 1][0] if i + 1 < len(steps) else ""
        else:
            step.exit.SetInParent()
    return spec


async def publish(c: Cluster, name: str, spec: J.JourneySpec, reason: str = "test") -> J.Journey:
    """Publish *spec* as *name*; its version."""
    return (await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name=name, spec=spec, reason=reason), metadata=MD)).journey


async def waiting_runs(c: Cluster, journey: str, subjects: list[str]) -> list[run_pb2.Run]:
    """Trigger *journey* for each subject and wait until every run waits on a timer."""
    ids = [(await c.orchestrator.Trigger(O.TriggerRequest(journey=journey, subject_id=s, request_id=f"{journey}-{s}"),
                                         metadata=MD)).run.run_id for s in subjects]

    async def all_waiting() -> list[run_pb2.Run] | None:
        found = [(await c.orchestrator.GetRun(O.GetRunRequest(run_id=i), metadata=MD)).run for i in ids]
        return found if all(r.state == run_pb2.RUN_STATE_WAITING for r in found) else None

    return await eventually(all_waiting, what=f"the runs of {journey} to wait on their timers")


async def audit_entries(c: Cluster, action: A.AuditAction.ValueType) -> list[A.AuditEvent]:
    """The tenant's audit entries of *action*, oldest first."""
    events = (await c.rules.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000), metadata=MD)).audit_events
    return [e for e in events if e.action == action]
