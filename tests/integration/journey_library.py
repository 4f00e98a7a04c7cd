"""What the journey library's tests share: one cluster for a module, with
the orchestrator on a manual clock, and a tenant per test, each with its
own token, so that journeys listening to the same events never meet.

A test module takes the fixtures :func:`library` (one :func:`library_cluster`
for the module) and :func:`journey`, which opens a journey of
``examples/journeys`` with :func:`opened_journeys` (validated first as
``overture journeys validate`` does, then published in its own tenant with
the clock set), feeds it events through ingest, moves the clock, and reads
the runs and the mail the SMTP sink received. A journey is paused when its
test ends, so its live runs never fire during another test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2, run_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.rules.v1 import rules_service_pb2 as R
from overture_cli.specfile import read_spec
from overture_orchestrator.definition import compile_journey
from overture_runtime.clock import ManualClock
from overture_runtime.testing import temporary_database
from tests.conftest import PG_ADMIN, TOKENS, scratch_namespace, settings_for
from tests.thinpath import EXAMPLES, eventually, example_rule_set

from .cluster import Cluster, running_cluster

__all__ = ["JOURNEYS", "Library", "Open", "Tenant", "event", "html_of", "journey", "library", "library_cluster", "load_journey",
           "opened_journeys", "path", "text_of"]

JOURNEYS = EXAMPLES / "journeys"
"""The library: one journey per file."""
_NAMES = sorted(p.stem for p in JOURNEYS.glob("*.yaml"))
SIGNING_KEY = "journey-library-signing-key-0001"
"""Seals the unsubscribe and tracking links the templates carry."""


def load_journey(name: str) -> journey_pb2.JourneySpec:
    """``examples/journeys/<name>.yaml``, checked as ``overture journeys validate`` checks it: it loads, its
    name is its file's, and it compiles without a problem or a warning."""
    spec = read_spec(JOURNEYS / f"{name}.yaml", journey_pb2.JourneySpec)
    compiled, problems = compile_journey(spec.message)
    assert not problems, [spec.locate(p.field, p.description).text() for p in problems]
    assert compiled is not None and not compiled.warnings, compiled and compiled.warnings
    assert spec.name == name
    return spec.message


@dataclass
class Library:
    """The module's cluster and the orchestrator's clock."""

    cluster: Cluster
    clock: ManualClock


@contextlib.asynccontextmanager
async def library_cluster(mail_dir: Path) -> AsyncIterator[Library]:
    """One cluster on its own database and Redis namespace, a tenant (and a token) per library journey, and a
    link signing key (the marketing templates show ``{{ unsubscribe_url }}``)."""
    tokens = [*TOKENS, *({"token": f"library-{n}", "tenant": n, "roles": ["*"], "principal": f"marketer@{n}"} for n in _NAMES)]
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    async with temporary_database(PG_ADMIN) as url, scratch_namespace("library") as namespace:

        def make_settings(**overrides: object) -> Any:
            return settings_for(url, namespace, **{"auth_tokens": json.dumps(tokens), "signing_keys": SIGNING_KEY, **overrides})

        async with running_cluster(make_settings, mail_dir, orchestrator_clock=clock) as cluster:
            yield Library(cluster, clock)


def event(event_type: str, subject: str, event_id: str = "", **attributes: Any) -> event_pb2.Event:
    """An event with *attributes*."""
    e = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    e.attributes.update(attributes)
    return e


@dataclass
class Tenant:
    """One test's tenant: its journey, its calls, its runs and its mail."""

    name: str
    """The tenant, named after the journey it runs."""
    library: Library
    md: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.md = (("authorization", f"Bearer library-{self.name}"),)

    @property
    def c(self) -> Cluster:
        return self.library.cluster

    @property
    def clock(self) -> ManualClock:
        return self.library.clock

    async def publish(self) -> journey_pb2.JourneySpec:
        """Publish the rule set ``marketing-email`` and the tenant's journey, validated first; the spec published."""
        rule_set, rules = example_rule_set()
        created = await self.c.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set=rule_set, spec=rules, reason="library"),
                                                          metadata=self.md)
        await self.c.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(
            rule_set=rule_set, version=created.rule_set_version.version, reason="library"), metadata=self.md)
        spec = load_journey(self.name)
        await self.c.orchestrator.PublishJourney(O.PublishJourneyRequest(name=self.name, spec=spec, reason="library"), metadata=self.md)
        return spec

    async def send(self, *events: event_pb2.Event) -> None:
        """Ingest *events* (in one call, in order); each must be accepted."""
        results = (await self.c.ingest.IngestEvents(I.IngestEventsRequest(events=events), metadata=self.md)).results
        assert [r.status for r in results] == [I.EVENT_RESULT_STATUS_ACCEPTED] * len(events), results

    async def person(self, subject: str, *, consent: bool = True, **traits: Any) -> str:
        """Identify *subject* with *traits* and an email address (returned), granting email marketing consent unless told not to."""
        address = f"{subject}@example.com"
        events = [event("identify", subject, traits={"email": address, **traits})]
        if consent:
            events.append(event("consent.granted", subject, channel="email", purpose="marketing"))
        await self.send(*events)
        return address

    def mail(self, address: str) -> list[EmailMessage]:
        """The messages the sink received for *address*, oldest first."""
        return [m for m in self.c.mail.messages if m["To"] == address]

    async def mail_arrives(self, address: str, count: int) -> list[EmailMessage]:
        """Wait until *address* has *count* messages; return them."""

        async def arrived() -> list[EmailMessage] | None:
            found = self.mail(address)
            return found if len(found) >= count else None

        return await eventually(arrived, what=f"{count} message(s) to {address}")

    async def run(self, subject: str) -> run_pb2.Run:
        """The subject's only run of the tenant's journey."""
        runs = (await self.c.orchestrator.ListRuns(O.ListRunsRequest(journey=self.name, subject_id=subject), metadata=self.md)).runs
        assert len(runs) == 1, [r.run_id for r in runs]
        return (await self.c.orchestrator.GetRun(O.GetRunRequest(run_id=runs[0].run_id), metadata=self.md)).run

    async def waiting_at(self, subject: str, step: str) -> run_pb2.Run:
        """Wait until the subject's run waits at *step*."""

        async def probe() -> run_pb2.Run | None:
            runs = (await self.c.orchestrator.ListRuns(O.ListRunsRequest(journey=self.name, subject_id=subject), metadata=self.md)).runs
            if runs and runs[0].state == run_pb2.RUN_STATE_WAITING and step in runs[0].waiting_steps:
                return await self.run(subject)
            return None

        return await eventually(probe, what=f"{subject}'s run to wait at {step}")

    async def ended(self, subject: str) -> run_pb2.Run:
        """Wait until the subject's run has completed."""

        async def probe() -> run_pb2.Run | None:
            runs = (await self.c.orchestrator.ListRuns(O.ListRunsRequest(journey=self.name, subject_id=subject), metadata=self.md)).runs
            return await self.run(subject) if runs and runs[0].state == run_pb2.RUN_STATE_COMPLETED else None

        try:
            return await eventually(probe, what=f"{subject}'s run to complete")
        except AssertionError as error:
            raise AssertionError(f"{error}; the run: {await self.run(subject)}") from None

    async def stop(self) -> None:
        """Pause the journey: its live runs and their timers are cancelled, so they do not fire in later tests."""
        with contextlib.suppress(Exception):
            await self.c.orchestrator.PauseJourney(O.PauseJourneyRequest(name=self.name, reason="test over"), metadata=self.md)


def path(run: run_pb2.Run) -> list[tuple[str, str]]:
    """The steps a run took, each with the edge it left by (empty for ``next`` and for where it is now)."""
    return [(s.step_id, s.edge) for s in run.steps]


def text_of(message: EmailMessage) -> str:
    """The plain-text part of an email."""
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(message: EmailMessage) -> str:
    """The HTML part of an email."""
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


Open = Callable[..., Awaitable[Tenant]]
"""``await open_journey(name, start=...)``: a published library journey in its own tenant, the clock at *start* (default: now)."""


@contextlib.asynccontextmanager
async def opened_journeys(library: Library) -> AsyncIterator[Open]:
    """Open library journeys for one test; each is paused when the test ends."""
    opened: list[Tenant] = []

    async def open_journey(name: str, *, start: dt.datetime | None = None) -> Tenant:
        assert name in _NAMES, f"no examples/journeys/{name}.yaml"
        library.clock.set(start or dt.datetime.now(dt.UTC).replace(microsecond=0))
        tenant = Tenant(name, library)
        opened.append(tenant)
        await tenant.publish()
        return tenant

    try:
        yield open_journey
    finally:
        for tenant in opened:
            await tenant.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def library(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Library]:
    """One cluster for the test module that takes it (``library = journey_library.library``); each test has its own tenant."""
    async with library_cluster(tmp_path_factory.mktemp("mail")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def journey(library: Library) -> AsyncIterator[Open]:
    """Opens library journeys for the test (see :func:`opened_journeys`)."""
    async with opened_journeys(library) as open_journey:
        yield open_journey
