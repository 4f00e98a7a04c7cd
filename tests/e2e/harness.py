"""The exactly-once harness: a ledger of the events sent, an SMTP server that
records every message it is given, and a report of expected, sent,
duplicated and missing messages.

Each subject signs up once, so exactly one welcome email per subject is
expected; the SMTP server (aiosmtpd, a real one) records each message by its
recipient and its Message-ID, which the email connector derives from the
idempotency key ``run_id:step_id``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import grpc
from aiosmtpd.controller import Controller

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.orchestrator.v1 import orchestrator_service_pb2_grpc
from overture.rules.v1 import rules_service_pb2 as rules
from overture.rules.v1 import rules_service_pb2_grpc
from overture_runtime.clients import wait_until_serving
from overture_runtime.testing import Processes, free_port
from tests.conftest import admin_metadata
from tests.thinpath import example_journey, example_rule_set

from .processes import service_processes

MD = admin_metadata()


class RecordingSMTP:
    """An SMTP handler that records every accepted message; it can refuse
    all mail for a while (421, a transient failure) to make sends fail."""

    def __init__(self, *, refused: frozenset[str] = frozenset()) -> None:
        self.by_recipient: collections.Counter[str] = collections.Counter()
        self.by_message_id: collections.Counter[str] = collections.Counter()
        self.refusing = False
        self.refused = refused
        """Addresses refused for good (550)."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refusing:
            return "421 4.3.2 try again later"
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        self.by_message_id[str(message.get("Message-ID", ""))] += 1
        for address in envelope.rcpt_tos:
            self.by_recipient[address] += 1
        return "250 Message accepted"


@contextlib.contextmanager
def recording_smtp(*, refused: frozenset[str] = frozenset()) -> Any:
    """A real SMTP server on a free port: yields (handler, port)."""
    handler = RecordingSMTP(refused=refused)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@dataclass
class Report:
    """What the harness found after draining."""

    expected: int
    sent: int
    duplicated: int
    missing: int
    duplicated_recipients: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"expected={self.expected} sent={self.sent} duplicated={self.duplicated} missing={self.missing}"


def report(subjects: Iterable[str], smtp: RecordingSMTP) -> Report:
    """Compare one expected email per subject with what the SMTP server received."""
    wanted = {f"{s}@example.com" for s in subjects}
    dups = sorted(a for a, n in smtp.by_recipient.items() if n > 1)
    duplicated = sum(n - 1 for n in smtp.by_recipient.values() if n > 1) + sum(n - 1 for n in smtp.by_message_id.values() if n > 1)
    return Report(expected=len(wanted), sent=sum(smtp.by_recipient.values()), duplicated=duplicated,
                  missing=len(wanted - set(smtp.by_recipient)), duplicated_recipients=dups[:10])


class Cluster:
    """The four services as processes; the orchestrator can be killed and restarted."""

    def __init__(self, running: Processes, log_dir: Path) -> None:
        self.running = running
        self._log_dir = log_dir
        self.orchestrator: subprocess.Popen[bytes] | None = None
        self.kills = 0

    async def start_orchestrator(self) -> None:
        log = (self._log_dir / "orchestrator.log").open("ab")
        self.orchestrator = subprocess.Popen(
            [sys.executable, "-m", "overture_cli.main", "serve", "orchestrator"], env=self.running.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not await wait_until_serving(self.running["orchestrator"]):
            raise RuntimeError(f"the orchestrator did not start; see {self._log_dir}/orchestrator.log")

    async def kill_orchestrator(self) -> None:
        """kill -9: no drain, no goodbye."""
        assert self.orchestrator is not None
        self.orchestrator.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.orchestrator.wait)
        self.kills += 1

    async def stop_orchestrator(self) -> None:
        if self.orchestrator is not None and self.orchestrator.poll() is None:
            self.orchestrator.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.orchestrator.wait, 30)


@contextlib.asynccontextmanager
async def cluster(*, database_url: str, redis_namespace: str, smtp_port: int, log_dir: Path,
                  extra_env: dict[str, str] | None = None) -> AsyncIterator[Cluster]:
    """Rules, connectors and ingest under service_processes; the orchestrator on its own, so a test can kill it."""
    async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=smtp_port,
                                 log_dir=log_dir, extra_env=extra_env, services=("rules", "connectors", "ingest")) as running:
        handle = Cluster(running, log_dir)
        await handle.start_orchestrator()
        try:
            yield handle
        finally:
            await handle.stop_orchestrator()


async def publish_tour(running: Processes, *, max_attempts: int = 0, journey_description: str = "") -> None:
    """Publish the tour's rule set and its welcome journey (with the send's retry attempts, when given)."""
    async with grpc.aio.insecure_channel(running["rules"]) as rc, grpc.aio.insecure_channel(running["orchestrator"]) as oc:
        rules_stub = rules_service_pb2_grpc.RulesServiceStub(rc)
        name, spec = example_rule_set()
        created = await rules_stub.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="harness"),
                                                        metadata=MD)
        if not created.unchanged:
            await rules_stub.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
                rule_set=name, version=created.rule_set_version.version, reason="harness"), metadata=MD)
        await publish_journey(oc, max_attempts=max_attempts, description=journey_description)


async def publish_journey(channel: grpc.aio.Channel, *, max_attempts: int = 0, description: str = "", reason: str = "harness") -> int:
    """Publish the welcome journey; returns its version."""
    name, journey = example_journey()
    if description:
        journey.description = description
    for step in journey.steps:
        if step.HasField("send") and max_attempts:
            step.retry.max_attempts = max_attempts
            step.retry.initial_backoff.FromMilliseconds(100)
            step.retry.max_backoff.FromMilliseconds(200)
    stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    published = await stub.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey, reason=reason), metadata=MD)
    return int(published.journey.version)


def _event(event_type: str, subject: str, event_id: str = "", **attributes: object) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def ingest_all(running: Processes, events: list[event_pb2.Event], *, batch: int = 500) -> None:
    """Ingest *events* in batches; every one must be accepted (or be a duplicate)."""
    async with grpc.aio.insecure_channel(running["ingest"]) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        for start in range(0, len(events), batch):
            reply = await stub.IngestEvents(ingest.IngestEventsRequest(events=events[start:start + batch]), metadata=MD, timeout=60)
            bad = [r for r in reply.results if r.status == ingest.EVENT_RESULT_STATUS_REJECTED]
            assert not bad, bad[:3]


def people(subjects: Iterable[str]) -> list[event_pb2.Event]:
    """An identify (with an email) and a marketing-email consent per subject."""
    found = []
    for s in subjects:
        found += [_event("identify", s, traits={"email": f"{s}@example.com", "first_name": s}),
                  _event("consent.granted", s, channel="email", purpose="marketing")]
    return found


def signups(subjects: Iterable[str], prefix: str) -> list[event_pb2.Event]:
    """One user.signed_up per subject, with an id in the ledger."""
    return [_event("user.signed_up", s, f"{prefix}-{s}") for s in subjects]


async def drained(smtp: RecordingSMTP, expected: int, *, settle: float = 3.0, within: float = 600.0) -> None:
    """Wait until the SMTP server holds *expected* messages, then a little
    longer, so that a duplicate still on its way is counted too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while sum(smtp.by_recipient.values()) < expected and loop.time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(settle)
