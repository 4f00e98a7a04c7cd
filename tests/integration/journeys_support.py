"""What the journey feature tests share: one cluster per test module, with
the orchestrator and ingest on one manual clock (timers fire when a test
moves it, never by waiting), the tour's rule set, journeys read from the
YAML files of ``tests/integration/journeys/``, and helpers for subjects,
events, runs, mail and statistics.

A test module takes the fixture :func:`world` (``world = journeys_support.world``),
one cluster for the module. Its tests share it, so each uses its own
journeys and subjects (and so its own addresses), and moves the clock only
forward: they pass in any order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import audit_event_pb2 as A
from overture.rules.v1 import rules_service_pb2 as R
from overture_cli.specfile import load_spec
from overture_orchestrator.consumer import GROUP, STREAM
from overture_orchestrator.tables import tokens
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from overture_runtime.testing import temporary_database
from tests.conftest import PG_ADMIN, TENANT, TOKENS, admin_metadata, scratch_namespace, settings_for
from tests.thinpath import eventually, example_rule_set

from .cluster import Cluster, running_cluster
from .test_thin_path import _event as event

__all__ = ["DECIDER", "MD", "START", "VIP_APPROVER", "World", "event", "journey_world", "world"]

MD = admin_metadata()
START = dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.UTC)
"""Where each module's clock starts: a Monday morning."""
JOURNEYS = Path(__file__).resolve().parent / "journeys"
DECIDER = admin_metadata("test-decider-token")
"""A caller with the approvals.decide role only."""
VIP_APPROVER = admin_metadata("test-vip-approver-token")
"""A caller with approvals.decide and the vip-approvers role an approval step can ask for."""
_TOKENS = [*TOKENS,
           {"token": "test-decider-token", "tenant": TENANT, "roles": ["approvals.decide"], "principal": "dave@acme"},
           {"token": "test-vip-approver-token", "tenant": TENANT, "roles": ["approvals.decide", "vip-approvers"],
            "principal": "vera@acme"}]
Run = run_pb2.Run
RUN_ENDED = (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED)


@dataclass
class World:
    """The running cluster, its clock, and what journey tests do with them."""

    c: Cluster
    clock: ManualClock
    timers: int = 0
    """Hour timers started so far (see :meth:`hour_timer`)."""

    # -- journeys --------------------------------------------------------------

    @staticmethod
    def spec(name: str) -> J.JourneySpec:
        """The journey of ``journeys/<name>.yaml`` (whose ``name`` is *name*)."""
        found, spec = load_spec(JOURNEYS / f"{name}.yaml", J.JourneySpec)
        assert found == name, f"journeys/{name}.yaml is named {found!r}"
        return spec

    async def publish(self, name: str, spec: J.JourneySpec | None = None) -> J.Journey:
        """Publish *spec*, or the YAML journey *name*; returns the version."""
        request = O.PublishJourneyRequest(name=name, spec=spec if spec is not None else self.spec(name), reason="test")
        return (await self.c.orchestrator.PublishJourney(request, metadata=MD)).journey

    async def stats(self, journey: str) -> O.JourneyStats:
        """A journey's statistics over every version."""
        return (await self.c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name=journey), metadata=MD)).stats

    # -- subjects and events -----------------------------------------------------

    async def ingest(self, *events: event_pb2.Event) -> None:
        """Send *events* through ingest; each must be accepted."""
        results = (await self.c.ingest.IngestEvents(I.IngestEventsRequest(events=events), metadata=MD)).results
        assert [r.status for r in results] == [I.EVENT_RESULT_STATUS_ACCEPTED] * len(events), results

    async def person(self, subject: str, *, consent: bool = True, timezone: str = "", **traits: Any) -> str:
        """Identify *subject* (email ``<subject>@example.com`` unless a trait
        says otherwise), with marketing email consent unless told not to;
        returns the address."""
        traits.setdefault("email", f"{subject}@example.com")
        events = [event("identify", subject, traits=traits, **({"timezone": timezone} if timezone else {}))]
        if consent:
            events.append(event("consent.granted", subject, channel="email", purpose="marketing"))
        await self.ingest(*events)
        return str(traits["email"])

    # -- runs ------------------------------------------------------------------------

    async def trigger(self, journey: str, subject: str, *, request_id: str = "", **context: Any) -> str:
        """Start a run of *journey* for *subject* with Trigger; returns its id."""
        request = O.TriggerRequest(journey=journey, subject_id=subject, request_id=request_id or f"{journey}:{subject}")
        request.context.update(context)
        return (await self.c.orchestrator.Trigger(request, metadata=MD)).run.run_id

    async def run(self, run_id: str) -> Run:
        """One run as GetRun shows it."""
        return (await self.c.orchestrator.GetRun(O.GetRunRequest(run_id=run_id), metadata=MD)).run

    async def runs(self, journey: str, subject: str = "") -> list[Run]:
        """Every run of *journey* (for *subject*), newest first."""
        found: list[Run] = []
        token = ""
        while True:
            request = O.ListRunsRequest(journey=journey, subject_id=subject, page_size=100, page_token=token)
            page = await self.c.orchestrator.ListRuns(request, metadata=MD)
            found += page.runs
            if not page.next_page_token:
                return found
            token = page.next_page_token

    async def run_of(self, journey: str, subject: str) -> Run:
        """The one run of *journey* for *subject*, once it has started."""

        async def started() -> Run | None:
            found = await self.runs(journey, subject)
            assert len(found) <= 1, f"{subject} has {len(found)} runs of {journey}"
            return found[0] if found else None

        return await eventually(started, what=f"a run of {journey} for {subject}")

    async def until(self, run_id: str, test: Callable[[Run], bool], what: str) -> Run:
        """The run once *test* holds for it."""

        async def probe() -> Run | None:
            run = await self.run(run_id)
            return run if test(run) else None

        return await eventually(probe, what=what)

    async def ended(self, run_id: str) -> Run:
        """The run once it has ended, whichever way."""
        return await self.until(run_id, lambda r: r.state in RUN_ENDED, f"run {run_id} to end")

    async def waiting_at(self, run_id: str, *steps: str) -> Run:
        """The run once its tokens wait at exactly *steps*."""
        return await self.until(run_id, lambda r: r.state == run_pb2.RUN_STATE_WAITING and sorted(r.waiting_steps) == sorted(steps),
                                f"run {run_id} to wait at {', '.join(steps)}")

    @staticmethod
    def step(run: Run, step_id: str) -> run_pb2.StepRun:
        """The run's step *step_id* (its last attempt)."""
        found = [s for s in run.steps if s.step_id == step_id]
        assert found, f"run {run.run_id} has not reached {step_id}: {[s.step_id for s in run.steps]}"
        return found[0]

    @staticmethod
    def path(run: Run) -> list[tuple[str, str]]:
        """The (step, edge) pairs of the run, in order."""
        return [(s.step_id, s.edge) for s in run.steps]

    # -- time, mail and audit ----------------------------------------------------------

    async def advance(self, delta: dt.timedelta) -> None:
        """Move the clock forward once no batch is in flight; the workers
        claim what came due within their poll. (A token still leased when
        the clock jumped past its lease would be claimed again and its step
        start anew at the new time: a stalled worker, not what a test means.)"""
        orchestrator = self.c.apps["orchestrator"]

        async def idle() -> bool:
            async with orchestrator.db.connect() as conn:
                return not (await conn.execute(sa.select(sa.func.count()).select_from(tokens).where(tokens.c.lease_owner.is_not(None)))).scalar_one()

        await eventually(idle, what="the workers to finish their batches")
        self.clock.advance(delta)
        orchestrator.workers.wake()

    async def advance_to(self, when: dt.datetime) -> None:
        """Move the clock forward to *when*, which must not be in its past."""
        assert when >= self.clock.now(), f"{when} is before the clock's {self.clock.now()}"
        await self.advance(when - self.clock.now())

    async def consumed(self) -> None:
        """Wait until the orchestrator has handled every event ingest has
        accepted so far: each is published to the stream, and each stream
        partition's entries are read and acknowledged by the orchestrator's
        group (acknowledged after their runs started, waits resumed and
        goals converted). A test that expects an event to change nothing
        waits for this."""
        ingest, orchestrator = self.c.apps["ingest"], self.c.apps["orchestrator"]
        streams = [orchestrator.keys.stream(STREAM, p) for p in range(orchestrator.settings.stream_partitions)]

        async def handled() -> bool:
            if await ingest.log.unpublished():
                return False
            for stream in streams:
                if not await orchestrator.redis.exists(stream):
                    continue
                last = (await orchestrator.redis.xinfo_stream(stream))["last-generated-id"]
                group = next(g for g in await orchestrator.redis.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode()))
                if group["pending"] or group["last-delivered-id"] != last:
                    return False
            return True

        await eventually(handled, what="the orchestrator to handle every accepted event")

    async def hour_timer(self) -> str:
        """Start a run that waits an hour and ends (``journeys/hour-timer.yaml``);
        its id. Started beside another run's timer, its end after the clock
        has moved shows that the workers handled what came due with it: a
        test that expects nothing to happen waits for it."""
        await self.publish("hour-timer")
        self.timers += 1
        run_id = await self.trigger("hour-timer", f"timer-{self.timers}")
        # Its hour counts from now: the clock must not move before the delay has started.
        await self.waiting_at(run_id, "hour")
        return run_id

    def mail_to(self, *addresses: str) -> list[EmailMessage]:
        """The emails sent to any of *addresses*, in the order they arrived."""
        return [m for m in self.c.mail.messages if m["To"] in addresses]

    async def mail_settles(self, addresses: Iterable[str], count: int) -> list[EmailMessage]:
        """The emails to *addresses*, once there are *count* of them."""
        wanted = tuple(addresses)

        async def arrived() -> list[EmailMessage] | None:
            found = self.mail_to(*wanted)
            return found if len(found) >= count else None

        found = await eventually(arrived, what=f"{count} emails to {', '.join(wanted)}")
        assert len(found) == count, [m["Subject"] for m in found]
        return found

    async def audit(self, action: A.AuditAction.ValueType, target: str = "") -> list[A.AuditEvent]:
        """The tenant's audit entries of *action* (about *target*), oldest first, once the outbox is forwarded."""
        await self.c.apps["orchestrator"].audit.flush()
        entries = (await self.c.rules.ListAuditEvents(R.ListAuditEventsRequest(page_size=1000), metadata=MD)).audit_events
        return [e for e in entries if e.action == action and (not target or e.target == target)]


@contextlib.asynccontextmanager
async def journey_world(mail_dir: Path, **settings: object) -> AsyncIterator[World]:
    """The cluster a module's journey tests share, its clock at :data:`START`,
    with the tour's rule set (email marketing needs consent) active; *settings*
    override every service's."""
    clock = ManualClock(START)
    async with temporary_database(PG_ADMIN) as url, scratch_namespace("journeys") as namespace:

        def make_settings(**overrides: object) -> Settings:
            return settings_for(url, namespace, **{"auth_tokens": json.dumps(_TOKENS), **settings, **overrides})

        async with running_cluster(make_settings, mail_dir, orchestrator_clock=clock, ingest_clock=clock) as cluster:
            await _activate_rule_set(cluster)
            yield World(cluster, clock)


async def _activate_rule_set(cluster: Cluster) -> None:
    """Publish and activate the tour's rule set."""
    name, rules = example_rule_set()
    created = await cluster.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set=name, spec=rules, reason="journeys"),
                                                       metadata=MD)
    await cluster.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(
        rule_set=name, version=created.rule_set_version.version, reason="journeys"), metadata=MD)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One :func:`journey_world` for the test module that takes it; its tests
    run on the module's event loop (``pytestmark = pytest.mark.asyncio(loop_scope="module")``)."""
    async with journey_world(tmp_path_factory.mktemp("mail")) as running:
        yield running
