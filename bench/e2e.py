"""End-to-end benchmark: events in, emails out, through all four services (issue 8).

    .venv/bin/python bench/e2e.py [--events 2000] [--profiles 5000] [--rates 200,1000] [--latency-seconds 2]
                                  [--timers N] [--waiting N] [--profile DIR] [--rev REV] [--no-celery] [--no-floor]

The four services run as separate processes (``overture serve``; from the
commit ``--rev`` when given, unpacked with ``git archive``) on a scratch
PostgreSQL database and a private Redis namespace, with an SMTP sink in its
own process (``baselines/smtp_sink.py``) that records each message's arrival
time, its ``X-Overture-Key`` (the idempotency key ``run_id:step_id``) and the
event id the benchmark's journey puts in the subject. The rule set is
``examples/marketing-email.yaml`` plus two rules and a daily cap that never
binds (consent, a cap and three rules, as issue 8 measured); the journey is
``examples/welcome-journey.yaml`` with ``[ev:<event id>]`` added to the
subject. 5,000 consenting profiles are preloaded through
``ProfileService.ApplyProfileEvents``; every event is a ``user.signed_up`` of
one of them, so every event must give exactly one email.

Printed, each with the CPU of every process (``/proc/<pid>/stat``, user +
system; the PostgreSQL backends of the scratch database too):

1. Sustained events -> emails per second: ``--events`` events sent closed
   loop (batches of 500, 2 callers: as fast as ingest acks), from the first
   email to the last (from the first send too); degradation = the rate of
   the last 10% of emails against the first 10%.
2. Event-to-email latency p50/p99/max at each open-loop rate of ``--rates``,
   from each event's scheduled send time (ack -> email too). A run stops
   early, marked overloaded, once 1% of its events are ``--overload-after``
   seconds late.
3. Timer lateness (``--timers N``: N runs held on a 30-day delay, then
   probes on a short delay; email - scheduled send - delay, an upper bound
   since the send after the timer is in it) and the waiting-runs figure
   (``--waiting N``: N runs held, then figure 1 again). NOT MEASURED unless
   asked for.
4. Duplicates (per event and per idempotency key) and missing emails over
   every stage; storage per run.
5. The Celery-style peer pipeline (``baselines/celery_pipeline.py``, in
   ``.bench-venv/``) and the raw floor (``baselines/raw_floor.py``) on as
   many events, in the same run, and Overture's throughput and emails per
   CPU-second as ratios to both.
6. The goals of issue 8: met, NOT met, or NOT MEASURED.

Every stage has a deadline (``--stage-timeout``) and every process it starts
is stopped on the way out, Ctrl-C and SIGTERM included. Only 127.0.0.1 is
used. bench/README.md says more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio as aioredis
from baselines import workload  # type: ignore[import-not-found]
from baselines.harness import (  # type: ignore[import-not-found]
    ROOT,
    Cpu,
    Profiler,
    Sink,
    bench_python,
    parent_of,
    process_tree,
    redis_server_pid,
    running,
    summarize_profile,
)
from common import METADATA, PG_ADMIN, REDIS_URL, histogram_figures, scrape_histograms, services  # type: ignore[import-not-found]

from overture.common.v1 import event_pb2, messaging_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc, rule_set_pb2, rules_service_pb2, rules_service_pb2_grpc
from overture_cli.specfile import load_spec
from overture_runtime.testing import temporary_database

BASELINES = Path(__file__).resolve().parent / "baselines"
SERVICES = ("ingest", "rules", "orchestrator", "connectors")
ACCEPTED = (ingest_service_pb2.EVENT_RESULT_STATUS_ACCEPTED, ingest_service_pb2.EVENT_RESULT_STATUS_DUPLICATE)
HOLD_EVENT, PROBE_EVENT = "bench.hold", "bench.timer"


def goal(met: bool) -> str:
    """The goal column: ``met`` or ``NOT met``."""
    return "met" if met else "NOT met"


def show(title: str, figures: dict[str, object]) -> None:
    """Print one stage's figures (bench/common.py's layout, with room for longer names)."""
    print(f"\n{title}")
    for key, value in figures.items():
        print(f"  {key:<38} {value:.3f}" if isinstance(value, float) else f"  {key:<38} {value}")
    sys.stdout.flush()


# --- specs ----------------------------------------------------------------------------


def rule_set(examples: Path) -> tuple[str, rule_set_pb2.RuleSetSpec]:
    """examples/marketing-email.yaml, plus the two rules and the cap of ``workload``."""
    R = rule_set_pb2
    name, spec = load_spec(examples / "marketing-email.yaml", R.RuleSetSpec)
    spec.attributes.extend([R.AttributeDeclaration(name="country", type=R.ATTRIBUTE_TYPE_STRING, source=R.ATTRIBUTE_SOURCE_TRAIT),
                            R.AttributeDeclaration(name="age", type=R.ATTRIBUTE_TYPE_NUMBER, source=R.ATTRIBUTE_SOURCE_TRAIT)])
    known = {rule.id for rule in spec.rules}
    for rule_id, expression, effect in workload.RULES:
        if rule_id not in known:
            spec.rules.append(R.Rule(id=rule_id, expression=expression, reason=rule_id,
                                     effect=R.RULE_EFFECT_DENY if effect == "deny" else R.RULE_EFFECT_REQUIRE))
    spec.frequency_caps.append(R.FrequencyCap(id="bench-daily", scope=R.CAP_SCOPE_CHANNEL, channel=messaging_pb2.CHANNEL_EMAIL,
                                              limit=workload.CAP_LIMIT, window=R.CapWindow(kind=R.CAP_WINDOW_KIND_CALENDAR_DAY)))
    for case in spec.test_cases:  # the example's cases stay true with the added rules
        case.profile.traits.update({"country": "DE", "age": 30})
    return name, spec


def journey(examples: Path, *, event_type: str = workload.EVENT_TYPE, delay: float = 0) -> journey_pb2.JourneySpec:
    """examples/welcome-journey.yaml with the event id in the subject; on *event_type*; after *delay* seconds if given."""
    _, spec = load_spec(examples / "welcome-journey.yaml", journey_pb2.JourneySpec)
    for template in spec.templates.values():
        template.subject += " [ev:{{ event.event_id }}]"
    spec.trigger.event.event_type = event_type
    # Each event is its own occasion (the order.completed): a subject already in the journey gets another
    # run. Without this, the benchmark's 5,000 subjects would cap the runs in flight at 5,000.
    spec.settings.allow_concurrent_runs = True
    if delay:
        first = spec.steps[0].id
        wait = journey_pb2.Step(id="bench-wait", next=first)
        wait.delay.duration.FromMilliseconds(int(delay * 1000))
        spec.steps.insert(0, wait)
    return spec


BRANCH_EVENT, ORDER_EVENT = "bench.branching", "bench.ordered"


def branching_journey() -> journey_pb2.JourneySpec:
    """Issue 9's engine benchmark journey: an A/B split, two sends and a wait for an event between them.

    On ``bench.branching``: split 50/50 into two welcome templates (each a send), then wait up to an hour
    for the subject's ``bench.ordered`` event, and send a thank-you that names the order event."""
    J = journey_pb2
    spec = J.JourneySpec(description="bench: split, send, wait for event, send", rule_set="marketing-email")
    spec.trigger.event.event_type = BRANCH_EVENT
    spec.settings.allow_concurrent_runs = True
    spec.steps.add(id="ab").split.branches.extend([J.SplitBranch(name="a", weight=1, step="send-a"),
                                                   J.SplitBranch(name="b", weight=1, step="send-b")])
    for arm in ("a", "b"):
        spec.steps.add(id=f"send-{arm}", next="wait", send=J.SendStep(channel=messaging_pb2.CHANNEL_EMAIL, template=f"hello-{arm}"))
        spec.templates[f"hello-{arm}"].CopyFrom(J.MessageTemplate(subject=f"Hello ({arm}) [ev:{{{{ event.event_id }}}}]",
                                                                  text_body="Welcome, {{ profile.traits.first_name | default('there') }}."))
    wait = spec.steps.add(id="wait")
    wait.wait_for_event.event_type, wait.wait_for_event.on_event_step = ORDER_EVENT, "thanks"
    wait.wait_for_event.timeout.FromSeconds(3600)
    spec.steps.add(id="thanks", send=J.SendStep(channel=messaging_pb2.CHANNEL_EMAIL, template="thanks"))
    spec.templates["thanks"].CopyFrom(J.MessageTemplate(subject="Thanks [ev:{{ steps.wait.event.event_id }}]", text_body="Thank you."))
    return spec


def event(event_id: str, index: int, *, event_type: str = workload.EVENT_TYPE, profiles: int) -> event_pb2.Event:
    e = event_pb2.Event(event_id=event_id, event_type=event_type, subject_id=workload.subject_id(index % profiles))
    e.attributes.update({"plan": "pro"})
    return e


# --- the Overture side -----------------------------------------------------------------


@dataclass
class Overture:
    """The running services, their stubs, the sink, and every trigger event sent so far."""

    addresses: dict[str, str]
    database_url: str
    sink: Sink
    profiles: int
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    acks: dict[str, float] = field(default_factory=dict)
    """Ack time per trigger event id that should give an email."""
    held: int = 0
    """Runs started on the 30-day delay (no email expected)."""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """Each service's Prometheus port: the open loops print the server-side durations its histograms recorded."""

    def stub(self, service: str, factory: Callable[[grpc.aio.Channel], object]) -> object:
        channel = grpc.aio.insecure_channel(self.addresses[service], options=[("grpc.max_send_message_length", 64 << 20)])
        self.channels.append(channel)
        return factory(channel)

    @property
    def ingest(self) -> ingest_service_pb2_grpc.IngestServiceStub:
        if not hasattr(self, "_ingest"):
            self._ingest = self.stub("ingest", ingest_service_pb2_grpc.IngestServiceStub)
        return self._ingest  # type: ignore[return-value]

    def meter(self) -> Cpu:
        cpu = Cpu()
        for name, pid in self.pids.items():
            cpu.add(name, pid)
        cpu.add("smtp sink", self.sink.pid)
        cpu.add_pids("postgres backends", self.backend_pids)
        if (pid := redis_server_pid(_redis_port())) is not None:
            cpu.add("redis-server (shared)", pid)
        return cpu

    async def backend_pids(self) -> list[int]:
        conn = await asyncpg.connect(self.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await conn.close()
        return [r["pid"] for r in rows]

    async def send(self, events: Sequence[event_pb2.Event], *, expect_email: bool = True) -> float:
        """Ingest *events* in one call (retrying what the rate limit refuses); the ack time."""
        request = ingest_service_pb2.IngestEventsRequest(events=events)
        for _ in range(100):
            try:
                reply = await self.ingest.IngestEvents(request, metadata=METADATA, timeout=60)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError("ingest kept refusing a batch")
        acked = time.monotonic()
        bad = [r for r in reply.results if r.status not in ACCEPTED]
        if bad:
            raise RuntimeError(f"ingest rejected {len(bad)} events, e.g. {bad[0]}")
        if expect_email:
            for e in events:
                self.acks[e.event_id] = acked
        return acked

    async def closed_loop(self, ids: Sequence[str], *, event_type: str = workload.EVENT_TYPE, batch: int = 500, callers: int = 2,
                          expect_email: bool = True) -> None:
        """Send *ids* as fast as ingest takes them: *callers* callers, each waiting for its batch's ack."""
        batches = iter(range(0, len(ids), batch))

        async def caller() -> None:
            for start in batches:
                chunk = [event(i, int(i[-7:]), event_type=event_type, profiles=self.profiles) for i in ids[start:start + batch]]
                await self.send(chunk, expect_email=expect_email)

        await asyncio.gather(*(caller() for _ in range(callers)))


def _redis_port() -> int:
    return int(REDIS_URL.rsplit(":", 1)[1].split("/", 1)[0])


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n)]


async def setup(ov: Overture, *, examples: Path, delays: bool, probe_delay: float) -> None:
    rules = ov.stub("rules", rules_service_pb2_grpc.RulesServiceStub)
    profiles = ov.stub("rules", profile_service_pb2_grpc.ProfileServiceStub)
    orchestrator = ov.stub("orchestrator", orchestrator_service_pb2_grpc.OrchestratorServiceStub)
    name, spec = rule_set(examples)
    created = await rules.CreateRuleSetVersion(rules_service_pb2.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="bench"),  # type: ignore[attr-defined]
                                               metadata=METADATA)
    await rules.ActivateRuleSetVersion(rules_service_pb2.ActivateRuleSetVersionRequest(  # type: ignore[attr-defined]
        rule_set=name, version=created.rule_set_version.version, reason="bench"), metadata=METADATA)
    journeys = {"welcome": journey(examples), "bench-branching": branching_journey()}
    if delays:
        journeys["bench-hold"] = journey(examples, event_type=HOLD_EVENT, delay=30 * 86400)
        journeys["bench-timer"] = journey(examples, event_type=PROBE_EVENT, delay=probe_delay)
    for journey_name, journey_spec in journeys.items():
        await orchestrator.PublishJourney(orchestrator_service_pb2.PublishJourneyRequest(  # type: ignore[attr-defined]
            name=journey_name, spec=journey_spec, reason="bench"), metadata=METADATA)
    batch: list[event_pb2.Event] = []
    for i in range(ov.profiles):
        identify = event_pb2.Event(event_id=f"bench-identify-{i}", event_type="identify", subject_id=workload.subject_id(i))
        identify.attributes.update({"traits": workload.traits(i)})
        consent = event_pb2.Event(event_id=f"bench-consent-{i}", event_type="consent.granted", subject_id=workload.subject_id(i))
        consent.attributes.update({"channel": "email", "purpose": "marketing"})
        batch += [identify, consent]
        if len(batch) >= 1000 or i == ov.profiles - 1:
            await profiles.ApplyProfileEvents(profile_service_pb2.ApplyProfileEventsRequest(events=batch), metadata=METADATA,  # type: ignore[attr-defined]
                                              timeout=60)
            batch = []


def cpu_figures(cpu: Cpu, emails: int) -> dict[str, object]:
    figures: dict[str, object] = {}
    services_total = sum(cpu.seconds.get(s, 0.0) for s in SERVICES)
    for name, seconds in cpu.seconds.items():
        figures[f"CPU {name} (s)"] = seconds
    figures["of which system (kernel), services"] = (f"{100 * sum(cpu.system.get(s, 0.0) for s in SERVICES) / services_total:.0f}%"
                                                     if services_total else "-")
    for name in (*SERVICES, "postgres backends"):
        if cpu.seconds.get(name):
            figures[f"emails per CPU-s, {name}"] = emails / cpu.seconds[name]
    pipeline = services_total + cpu.seconds.get("postgres backends", 0.0)
    figures["CPU per email, services (ms)"] = 1000 * services_total / emails if emails else math.nan
    figures["CPU per email, + postgres (ms)"] = 1000 * pipeline / emails if emails else math.nan
    figures["emails per CPU-s, services+pg"] = emails / pipeline if pipeline else 0.0
    return figures


def rates(arrivals: Sequence[float], start: float) -> tuple[float, float, float, float]:
    """Emails/s from *start* to the last arrival and from the first arrival to the last (the sustained rate, which
    leaves out how the pipeline starts); the rates of the first and of the last tenth of arrivals, each over its span."""
    arr = sorted(arrivals)
    n = len(arr)
    if n < 20:
        return (n / (arr[-1] - start) if n else 0.0), math.nan, math.nan, math.nan
    k = n // 10
    return n / (arr[-1] - start), (n - 1) / (arr[-1] - arr[0]), k / (arr[k] - arr[0]), k / (arr[-1] - arr[-1 - k])


async def throughput(ov: Overture, prefix: str, n: int, *, within: float, profiler: Profiler | None = None) -> dict[str, object]:
    tags = ids(prefix, n)
    cpu = ov.meter()
    if profiler:
        profiler.start(ov.pids)
    await cpu.start()
    started = time.monotonic()
    await ov.closed_loop(tags)
    ingested = time.monotonic()
    complete = await ov.sink.wait_for(tags, deadline=started + within)
    await cpu.stop()
    arrivals = list(ov.sink.first_arrivals(tags).values())
    overall, sustained, first, last = rates(arrivals, started)
    figures: dict[str, object] = {
        "events": n, "ingest events/s (acked)": n / (ingested - started), "emails": len(arrivals),
        "complete within the deadline": "yes" if complete else f"NO: {n - len(arrivals)} not yet delivered after {within:.0f} s",
        "seconds, first send -> last email": (max(arrivals) - started) if arrivals else math.nan,
        "first email after (s)": (min(arrivals) - started) if arrivals else math.nan,
        "emails/s, first send -> last email": overall,
        "emails/s (sustained)": sustained, "emails/s, first 10%": first, "emails/s, last 10%": last,
        "degradation (last / first)": last / first if first else math.nan,
        **cpu_figures(cpu, len(arrivals)),
    }
    return figures


def _tail(latencies: list[float]) -> dict[str, object]:
    """p50, p99, max in ms, with undelivered events (inf) counted: a percentile that falls on one is a lower bound."""
    ordered = sorted(latencies)
    if not ordered:
        return {}

    def at(q: float) -> object:
        value = ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
        return "undelivered" if math.isinf(value) else value * 1000

    return {"p50 (ms)": at(0.50), "p99 (ms)": at(0.99), "max (ms)": at(1.0)}


async def open_loop(ov: Overture, prefix: str, *, rate: float, seconds: float, within: float, event_type: str = workload.EVENT_TYPE,
                    extra: float = 0.0, overload_after: float = 0.0) -> tuple[dict[str, object], list[float]]:
    """Send ``rate * seconds`` events on a fixed schedule, whatever the answers (batches of 10 ms); latency from
    each event's scheduled time (and from its ack) to its email, *extra* seconds (a delay) subtracted.

    With *overload_after*, sending stops once more than 1% of the planned events are that many seconds late
    and undelivered: the run's p99 is then known to be worse than that, and sending on would only leave a
    backlog for the next stage. The percentiles are then those of the events sent, and the goal is not met."""
    total = max(1, int(rate * seconds))
    tags = ids(prefix, total)
    scheduled: dict[str, float] = {}
    acked: dict[str, float] = {}
    pending: list[asyncio.Task[None]] = []

    async def send(batch: list[str]) -> None:
        at = await ov.send([event(t, int(t[-7:]), event_type=event_type, profiles=ov.profiles) for t in batch])
        for t in batch:
            acked[t] = at

    cpu = ov.meter()
    await cpu.start()
    durations = await scrape_histograms(ov.metrics_ports)
    start = time.monotonic() + 0.05
    sent = 0
    overloaded = ""
    allowed_late = max(1, total // 100)
    next_check = start + overload_after
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        if due > sent:
            batch = tags[sent:due]
            for j, t in enumerate(batch, start=sent):
                scheduled[t] = start + j / rate
            pending.append(asyncio.create_task(send(batch)))
            sent = due
        if overload_after and now >= next_check:
            next_check = now + 0.05
            ov.sink.poll()
            late = sum(1 for t in tags[:sent] if t not in ov.sink.arrivals and now - scheduled[t] > extra + overload_after)
            if late > allowed_late:
                # More than 1% of this run's events are that late: its p99 is known to be worse, and
                # sending on would only grow a backlog that the next stage would inherit.
                overloaded = f"yes: stopped after {now - start:.1f} s, {late} events over {overload_after:g} s late"
                break
        await asyncio.sleep(0.01)
    dispatched_by = time.monotonic()
    await asyncio.gather(*pending)
    sent_by = time.monotonic()
    tags = tags[:sent]
    complete = await ov.sink.wait_for(tags, deadline=sent_by + within)
    await cpu.stop()
    arrived = ov.sink.first_arrivals(tags)
    from_schedule = [arrived[t] - scheduled[t] - extra if t in arrived else math.inf for t in tags]
    from_ack = [arrived[t] - acked[t] - extra if t in arrived else math.inf for t in tags]
    figures: dict[str, object] = {
        "events planned": total, "events sent": sent, "overloaded": overloaded or "no",
        "achieved send rate (events/s)": sent / max(dispatched_by - start, 1e-9), "emails": len(arrived),
        "complete within the deadline": "yes" if complete else f"NO: {total - len(arrived)} undelivered {within:.0f} s after the last send",
        **_tail(from_schedule), **{f"ack -> email {k}": v for k, v in _tail(from_ack).items()},
        **cpu_figures(cpu, len(arrived)),
        **histogram_figures(durations, await scrape_histograms(ov.metrics_ports)),
    }
    return figures, from_schedule


async def hold(ov: Overture, n: int, *, prefix: str, within: float) -> bool:
    """Start *n* runs that wait 30 days, then make sure the orchestrator has taken them all: 64 ordinary
    events sent after them must come out as emails (every partition sees at least one, almost surely)."""
    if n:
        started = time.monotonic()
        await ov.closed_loop(ids(prefix, n), event_type=HOLD_EVENT, batch=1000, expect_email=False)
        print(f"  ... {n} held runs ingested in {time.monotonic() - started:.1f} s", flush=True)
    sync = ids(f"{prefix}sync-", 64)
    await ov.closed_loop(sync, batch=64, callers=1)
    ok = await ov.sink.wait_for(sync, deadline=time.monotonic() + within)
    if ok:
        ov.held += n
        counted = await waiting_runs(ov)
        print(f"  ... runs waiting on the delay: {counted if counted is not None else 'not counted'} (held events sent: {ov.held})",
              flush=True)
    return ok


async def waiting_runs(ov: Overture) -> int | None:
    """Runs of the hold journey in state waiting, counted in the orchestrator's own table (a check on the engine, best
    effort: None when the table is not shaped so)."""
    conn = await asyncpg.connect(ov.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orchestrator_runs WHERE journey = 'bench-hold' AND state = 'waiting'"))
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


async def table_sizes(ov: Overture) -> dict[str, int]:
    """Bytes per service (table name prefix) in the scratch database: pg_total_relation_size, indexes and TOAST included."""
    conn = await asyncpg.connect(ov.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'")
    finally:
        await conn.close()
    sizes: dict[str, int] = {}
    for row in rows:
        owner = row["relname"].split("_", 1)[0]
        sizes[owner] = sizes.get(owner, 0) + row["size"]
    return sizes


def storage(ov: Overture, before: dict[str, int], after: dict[str, int]) -> dict[str, object]:
    runs = len(ov.acks) + ov.held
    figures: dict[str, object] = {"runs (trigger events sent)": runs}
    for service in SERVICES:
        figures[f"{service} tables (MB)"] = after.get(service, 0) / 1e6
    grown = sum(after.values()) - sum(before.values())
    figures["bytes per run, orchestrator tables"] = after.get("orchestrator", 0) / runs if runs else math.nan
    figures["bytes per run, all tables (growth)"] = grown / runs if runs else math.nan
    return figures


def service_pids() -> dict[str, int]:
    found: dict[str, int] = {}
    for pid in process_tree(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The services are this process's own children; their worker processes (OVERTURE_WORKERS) count under them.
        if b"serve" in argv and parent_of(pid) == os.getpid():
            for name in SERVICES:
                if name.encode() in argv:
                    found[name] = pid
    return found


@dataclass
class Results:
    overture: dict[str, dict[str, object]] = field(default_factory=dict)
    latency: dict[float, list[float]] = field(default_factory=dict)
    timers: list[float] | None = None
    waiting: float | None = None
    celery: dict[str, object] | None = None
    floor: dict[str, object] | None = None
    profiles: dict[str, Path] = field(default_factory=dict)


async def run_overture(args: argparse.Namespace, sink: Sink, logs: Path, results: Results, *, source: Path) -> None:
    delays = bool(args.timers or args.waiting)
    env = {"OVERTURE_SMTP_HOST": "127.0.0.1", "OVERTURE_SMTP_PORT": str(sink.port),
           "OVERTURE_INGEST_RATE_PER_SECOND": "1000000", "OVERTURE_INGEST_BURST": "2000000", **dict(args.service_env)}
    if source != ROOT:
        # The services import the snapshot's code ahead of the editable install (which Python searches last).
        env["PYTHONPATH"] = os.pathsep.join(str(source / part) for part in ("gen", "src", *(f"services/{s}" for s in SERVICES)))
    print(f"starting the four services (logs in {logs}) ...", flush=True)
    async with services(SERVICES, log_dir=logs, **env) as running_services:
        ov = Overture(addresses=dict(running_services.addresses), database_url=running_services.env["DATABASE_URL"], sink=sink,
                      profiles=args.profiles, pids=service_pids(), metrics_ports=dict(running_services.metrics_ports))
        try:
            started = time.monotonic()
            await setup(ov, examples=source / "examples", delays=delays, probe_delay=args.timer_delay)
            print(f"published the rule set and journeys, preloaded {args.profiles} profiles in {time.monotonic() - started:.1f} s", flush=True)
            sizes_before = await table_sizes(ov)
            warm = ids("ovt-warm-", 50)
            await ov.closed_loop(warm, batch=10, callers=1)
            if not await sink.wait_for(warm, deadline=time.monotonic() + args.stage_timeout):
                raise RuntimeError(f"no email for the warm-up events within {args.stage_timeout:.0f} s; see {logs}")
            profiler = None
            if args.profile:
                profiler = Profiler(await py_spy(), Path(args.profile))
            within = throughput_deadline(args)
            try:
                figures = await asyncio.wait_for(throughput(ov, "ovt-thr-", args.events, within=within, profiler=profiler), within + 60)
            finally:
                if profiler:
                    results.profiles = await profiler.stop()
            results.overture["throughput"] = figures
            show(f"Overture: {args.events} events, closed loop, events -> emails", figures)
            for rate in args.rates:
                figures, latencies = await asyncio.wait_for(open_loop(
                    ov, f"ovt-lat{rate:g}-", rate=rate, seconds=args.latency_seconds, within=args.stage_timeout,
                    overload_after=args.overload_after), args.stage_timeout + 120)
                results.overture[f"latency {rate:g}"] = figures
                results.latency[rate] = latencies
                show(f"Overture: event -> email latency, open loop at {rate:g} events/s for {args.latency_seconds:g} s", figures)
            if args.branching:
                await branching(ov, args, results)
            if args.timers:
                await timers(ov, args, results)
            if args.waiting:
                await waiting(ov, args, results)
            everything = list(ov.acks)
            complete = await sink.wait_for(everything, deadline=time.monotonic() + args.stage_timeout)
            sink.poll()
            by_tag, by_key = sink.duplicates("ovt-")
            missing = sum(1 for t in everything if t not in sink.arrivals)
            stray = sum(1 for t in sink.arrivals if t.startswith("ovt-") and t not in ov.acks)
            results.overture["exactly once"] = {
                "emails expected": len(everything), "emails received": sum(len(sink.arrivals[t]) for t in everything if t in sink.arrivals),
                "duplicates (same event)": by_tag, "duplicates (same idempotency key)": by_key,
                "missing": missing if complete else f"{missing} (not delivered {args.stage_timeout:.0f} s after the last stage)",
                "unexpected (held runs that sent)": stray,
            }
            show("Overture: exactly once, every event of every stage", results.overture["exactly once"])
            results.overture["storage"] = storage(ov, sizes_before, await table_sizes(ov))
            show("Overture: storage in PostgreSQL after the run (autovacuum off here)", results.overture["storage"])
        finally:
            for channel in ov.channels:
                await channel.close()


def throughput_deadline(args: argparse.Namespace) -> float:
    """Seconds the throughput run may take: the stage timeout, plus what --events needs at 50 emails/s."""
    return float(args.stage_timeout + args.events / 50)


async def branching(ov: Overture, args: argparse.Namespace, results: Results) -> None:
    """Issue 9's engine figure: N subjects through a split, a send, a wait for their order event and a second send."""
    n = min(args.branching, ov.profiles)
    signups, orders = ids("ovt-brs-", n), ids("ovt-bro-", n)
    cpu = ov.meter()
    await cpu.start()
    started = time.monotonic()
    await ov.closed_loop(signups, event_type=BRANCH_EVENT)
    first_done = await ov.sink.wait_for(signups, deadline=started + args.stage_timeout)
    first = time.monotonic()
    # The orders must come after the waits are in (a wait counts only events that arrive while it waits).
    conn = await asyncpg.connect(ov.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        while await conn.fetchval("SELECT count(*) FROM orchestrator_waits WHERE journey = 'bench-branching'") < n:
            if time.monotonic() > first + args.stage_timeout:
                raise RuntimeError("the branching runs did not all reach their wait")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    registered = time.monotonic()
    await ov.closed_loop(orders, event_type=ORDER_EVENT)
    second_done = await ov.sink.wait_for(orders, deadline=registered + args.stage_timeout)
    ended = time.monotonic()
    await cpu.stop()
    arrivals = list(ov.sink.first_arrivals([*signups, *orders]).values())
    orchestrator = ov.stub("orchestrator", orchestrator_service_pb2_grpc.OrchestratorServiceStub)
    stats = (await orchestrator.GetJourneyStats(orchestrator_service_pb2.GetJourneyStatsRequest(name="bench-branching"),  # type: ignore[attr-defined]
                                                metadata=METADATA)).stats
    arms = {a.arm: a.entered for a in stats.arms}
    figures: dict[str, object] = {
        "subjects": n, "emails": len(arrivals), "complete": "yes" if first_done and second_done else "NO",
        "first sends: emails/s": n / (first - started), "wait registration (s)": registered - first,
        "second sends (order -> thanks): emails/s": n / (ended - registered),
        "emails/s over both phases (registration wait left out)": 2 * n / ((first - started) + (ended - registered)),
        "split a / b": f"{arms.get('a', 0)} / {arms.get('b', 0)}",
        **cpu_figures(cpu, len(arrivals)),
    }
    results.overture["branching"] = figures
    show(f"Overture: {n} runs of split -> send -> wait for event -> send (issue 9)", figures)


async def timers(ov: Overture, args: argparse.Namespace, results: Results) -> None:
    print(f"\nholding {args.timers} runs on a 30-day delay ...", flush=True)
    within = args.stage_timeout + args.timers / 200
    if not await asyncio.wait_for(hold(ov, args.timers, prefix="ovt-hold-t-", within=within), within + 600):
        print("  the orchestrator had not taken the held runs within the deadline: timer lateness NOT MEASURED", flush=True)
        return
    probes = max(1, int(args.timer_probes))
    seconds = probes / args.timer_rate
    # The same events without the delay, at the same rate: the part of the probes' figure that is the send, not the timer.
    control, _ = await asyncio.wait_for(open_loop(ov, "ovt-control-", rate=args.timer_rate, seconds=seconds, within=args.stage_timeout),
                                        args.stage_timeout * 2 + seconds)
    figures, latencies = await asyncio.wait_for(open_loop(
        ov, "ovt-timer-", rate=args.timer_rate, seconds=seconds, within=args.stage_timeout, event_type=PROBE_EVENT,
        extra=args.timer_delay), args.stage_timeout * 2 + seconds)
    renamed = {k.replace("p50", "lateness p50").replace("p99", "lateness p99").replace("max (ms)", "lateness max (ms)")
               if k.startswith(("p50", "p99", "max")) else k: v for k, v in figures.items()}
    for key in ("p50 (ms)", "p99 (ms)"):
        renamed[f"no delay, same rate: {key}"] = control.get(key, "-")
    results.overture["timers"] = renamed
    results.timers = latencies
    show(f"Overture: timer lateness, {probes} probes on a {args.timer_delay:g} s delay at {args.timer_rate:g}/s "
         f"with {ov.held} runs waiting (email - scheduled send - delay: an upper bound, the send included)", renamed)


async def waiting(ov: Overture, args: argparse.Namespace, results: Results) -> None:
    more = max(0, args.waiting - ov.held)
    print(f"\nholding {more} more runs on a 30-day delay ({ov.held} already) ...", flush=True)
    within = args.stage_timeout + more / 200
    if not await asyncio.wait_for(hold(ov, more, prefix="ovt-hold-w-", within=within), within + 600 + more / 1000):
        print("  the orchestrator had not taken the held runs within the deadline: waiting-runs figure NOT MEASURED", flush=True)
        return
    # The figure is of a system holding the runs, not of one still writing out
    # the pages of the bulk insert that made them: PostgreSQL flushes them now,
    # not during the measurement (the services' own ANALYZE of grown tables
    # ran while the runs went in).
    started = time.monotonic()
    conn = await asyncpg.connect(ov.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    print(f"  ... CHECKPOINT after the bulk insert: {time.monotonic() - started:.1f} s", flush=True)
    within = throughput_deadline(args)
    figures = await asyncio.wait_for(throughput(ov, "ovt-thr2-", args.events, within=within), within + 60)
    before = float(results.overture["throughput"]["emails/s (sustained)"])  # type: ignore[arg-type]
    figures["ratio to the first throughput run"] = float(figures["emails/s (sustained)"]) / before if before else math.nan  # type: ignore[arg-type]
    results.overture["waiting"] = figures
    results.waiting = float(figures["ratio to the first throughput run"])  # type: ignore[arg-type]
    show(f"Overture: {args.events} events again, with {ov.held} runs waiting", figures)


def _installed_py_spy() -> Path | None:
    import shutil

    for candidate in (shutil.which("py-spy"), str(ROOT / ".venv" / "bin" / "py-spy")):
        if candidate and os.path.exists(candidate):
            return Path(candidate)
    return None


async def py_spy() -> Path:
    """py-spy on PATH or in .venv, else installed (pinned) into .bench-venv/."""
    if found := _installed_py_spy():
        return found
    python = await bench_python(BASELINES / "requirements-profile.txt")
    return python.parent / "py-spy"


# --- baselines -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_namespace(prefix: str) -> AsyncIterator[str]:
    namespace = f"{prefix}{secrets.token_hex(3)}"
    try:
        yield namespace
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def run_celery(args: argparse.Namespace, sink: Sink, logs: Path, results: Results) -> None:
    """The Celery pipeline at its best: its workers warmed up, the events published beforehand (a single producer
    process publishes slower than the workers consume, and would take their CPU), then the workers started again on
    the full queue; timed, and its CPU counted, from the first email to the last."""
    python = await bench_python(BASELINES / "requirements-celery.txt")
    async with redis_namespace("benchcelery") as ns:
        env = {**os.environ, "BENCH_REDIS_URL": REDIS_URL, "BENCH_NS": ns, "BENCH_SMTP_PORT": str(sink.port)}
        pipeline = str(BASELINES / "celery_pipeline.py")
        await _check([str(python), pipeline, "seed", "--profiles", str(args.profiles)], env=env, within=120)
        worker = [str(python), "-m", "celery", "-A", "celery_pipeline", "worker", "--pool", "prefork", "--concurrency", "2",
                  "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{ns}@localhost"]
        async with running(worker, cwd=BASELINES, env=env, log=logs / "celery-worker-warm-up.log"):
            await _check([str(python), pipeline, "produce", "--events", "50", "--tag", "cel-warm-", "--profiles", str(args.profiles)],
                         env=env, within=60)
            if not await sink.wait_for(ids("cel-warm-", 50), deadline=time.monotonic() + 60):
                raise RuntimeError(f"the Celery pipeline sent no email within 60 s; see {logs / 'celery-worker-warm-up.log'}")
        produced = json.loads(await _check([str(python), pipeline, "produce", "--events", str(args.events), "--tag", "cel-thr-",
                                            "--profiles", str(args.profiles)], env=env, within=throughput_deadline(args)))
        tags = ids("cel-thr-", args.events)
        cpu = Cpu()
        async with running(worker, cwd=BASELINES, env=env, log=logs / "celery-worker.log") as proc:
            deadline = time.monotonic() + throughput_deadline(args)
            while not sink.first_arrivals(tags[:200]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                sink.poll()
            cpu.add("celery workers", proc.pid)
            if (pid := redis_server_pid(_redis_port())) is not None:
                cpu.add("redis-server (shared)", pid)
            cpu.add("smtp sink", sink.pid)
            await cpu.start()
            counted_from = sum(len(v) for k, v in sink.arrivals.items() if k.startswith("cel-thr-"))
            complete = await sink.wait_for(tags, deadline=deadline)
            await cpu.stop()
        arrivals = list(sink.first_arrivals(tags).values())
        _, sustained, first, last = rates(arrivals, produced["first"])
        by_tag, _ = sink.duplicates("cel-")
        workers = cpu.seconds.get("celery workers", 0.0)
        counted = len(arrivals) - counted_from
        results.celery = {
            "events": args.events, "published before the workers started (events/s)": args.events / (produced["last"] - produced["first"]),
            "emails": len(arrivals), "complete within the deadline": "yes" if complete else f"NO: {args.events - len(arrivals)} undelivered",
            "emails/s (sustained)": sustained, "emails/s, first 10%": first, "emails/s, last 10%": last,
            "degradation (last / first)": last / first if first else math.nan,
            "duplicates (same event)": by_tag, "missing": args.events - len(arrivals),
            **{f"CPU {k} (s)": v for k, v in cpu.seconds.items()}, "CPU producer (s)": produced["cpu"],
            "CPU per email, workers (ms)": 1000 * workers / counted if counted > 0 else math.nan,
            "emails per CPU-s, workers": counted / workers if workers else 0.0,
        }
    show(f"Baseline: Celery 5 pipeline (Redis broker, 2 prefork workers, SMTP to the same sink), {args.events} events", results.celery)


async def run_floor(args: argparse.Namespace, sink: Sink, results: Results) -> None:
    async with temporary_database(PG_ADMIN) as url, redis_namespace("benchfloor") as ns:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        argv = [sys.executable, str(BASELINES / "raw_floor.py"), "--dsn", dsn, "--redis", REDIS_URL, "--ns", ns,
                "--smtp-port", str(sink.port), "--events", str(args.events), "--tag", "raw-thr-", "--profiles", str(args.profiles)]
        cpu = Cpu()
        cpu.add("smtp sink", sink.pid)
        await cpu.start()
        out = json.loads(await _check(argv, env=dict(os.environ), within=throughput_deadline(args)))
        tags = ids("raw-thr-", args.events)
        complete = await sink.wait_for(tags, deadline=time.monotonic() + 10)
        await cpu.stop()
    arrivals = list(sink.first_arrivals(tags).values())
    _, sustained, _, _ = rates(arrivals, out["first"])
    with_pg = out["cpu"] + out["pg_cpu"]
    results.floor = {
        "events": args.events, "emails": len(arrivals), "complete": "yes" if complete else "NO",
        "emails/s (sustained)": sustained, "CPU floor process (s)": out["cpu"], "CPU postgres backends (s)": out["pg_cpu"],
        "CPU smtp sink (s)": cpu.seconds.get("smtp sink", 0.0),
        "CPU per email, floor process (ms)": 1000 * out["cpu"] / len(arrivals) if arrivals else math.nan,
        "CPU per email, + postgres (ms)": 1000 * with_pg / len(arrivals) if arrivals else math.nan,
        "emails per CPU-s, floor + pg": len(arrivals) / with_pg if with_pg else 0.0,
    }
    show("Baseline: the raw floor (one process: INSERT event, XADD, XREADGROUP, INSERT run, SMTP; batched)", results.floor)


async def _check(argv: list[str], *, env: dict[str, str], within: float) -> str:
    """Run *argv* to completion within *within* seconds; its stdout (stderr shown on failure)."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"{Path(argv[1]).name} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return out.decode()


# --- summary ---------------------------------------------------------------------------


def _num(figures: dict[str, object] | None, key: str) -> float:
    value = (figures or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def summary(args: argparse.Namespace, results: Results) -> None:
    thr = results.overture.get("throughput", {})
    ovt = _num(thr, "emails/s (sustained)")
    ovt_cpu = _num(thr, "emails per CPU-s, services+pg")
    rows: list[tuple[str, str, str, str, str]] = []
    celery = _num(results.celery, "emails/s (sustained)")
    celery_cpu = _num(results.celery, "emails per CPU-s, workers")
    if results.celery:
        rows.append(("1. events -> emails/s", f"{ovt:.1f} emails/s", f"Celery {celery:.1f}/s", f"{ovt / celery:.2f}x (>= 2)",
                     goal(ovt / celery >= 2)))
        rows.append(("   per CPU-second", f"{ovt_cpu:.1f} (services + pg)", f"Celery {celery_cpu:.1f} (workers)",
                     f"{ovt_cpu / celery_cpu:.2f}x", "printed"))
    else:
        rows.append(("1. events -> emails/s", f"{ovt:.1f} emails/s", "Celery not run", "-", "NOT MEASURED"))
    if results.floor:
        floor = _num(results.floor, "emails/s (sustained)")
        floor_cpu = _num(results.floor, "emails per CPU-s, floor + pg")
        rows.append(("   against the raw floor", f"{ovt:.1f} emails/s", f"floor {floor:.1f}/s", f"{ovt / floor:.3f}x", "printed"))
        rows.append(("   per CPU-second", f"{ovt_cpu:.1f} (services + pg)", f"floor {floor_cpu:.1f} (+ pg)", f"{ovt_cpu / floor_cpu:.3f}x",
                     "printed"))
    degradation = _num(thr, "degradation (last / first)")
    rows.append(("2. degradation, last 10% / first 10%", f"{degradation:.3f}", "-", ">= 0.9", goal(degradation >= 0.9)))
    for rate, latencies in results.latency.items():
        tail = _tail(latencies)
        p99 = tail.get("p99 (ms)")
        text = f"p50 {_ms(tail.get('p50 (ms)'))}, p99 {_ms(p99)}, max {_ms(tail.get('max (ms)'))}"
        overloaded = str(results.overture.get(f"latency {rate:g}", {}).get("overloaded", "no")) != "no"
        if overloaded:
            text = f"overloaded ({len(latencies)} sent): {text}"
        met = isinstance(p99, float) and p99 <= 100 and not overloaded
        if rate == 200:
            rows.append(("3. latency at 200 events/s", text, "-", "p99 <= 100 ms", goal(met)))
        else:
            rows.append((f"   latency at {rate:g} events/s", text, "-", "-", "printed"))
    if results.timers is not None:
        p99 = _tail(results.timers).get("p99 (ms)")
        rows.append((f"4. timer lateness, {args.timers} pending", f"p99 {_ms(p99)} (upper bound)", "-", "p99 <= 1 s",
                     goal(isinstance(p99, float) and p99 <= 1000)))
    else:
        rows.append(("4. timer lateness", "NOT MEASURED (--timers N)", "-", "p99 <= 1 s", "NOT MEASURED"))
    storage = results.overture.get("storage", {})
    rows.append(("5. storage per run", f"{_num(storage, 'bytes per run, orchestrator tables'):.0f} B (orchestrator)",
                 f"{_num(storage, 'bytes per run, all tables (growth)'):.0f} B (all tables)", "-", "printed"))
    if results.waiting is not None:
        rows.append((f"6. throughput with {args.waiting} waiting", f"{results.waiting:.2f}x the first run", "-", "unchanged (>= 0.9x)",
                     goal(results.waiting >= 0.9)))
    else:
        rows.append(("6. waiting runs", "NOT MEASURED (--waiting N)", "-", "throughput unchanged", "NOT MEASURED"))
    once = results.overture.get("exactly once", {})
    dup = once.get("duplicates (same event)", 0), once.get("duplicates (same idempotency key)", 0)
    missing = once.get("missing")
    rows.append(("   duplicates / missing", f"{dup[0]} + {dup[1]} / {missing}", "-", "0 / 0",
                 goal(dup == (0, 0) and missing == 0 and once.get("unexpected (held runs that sent)") == 0)))
    if "throughput" not in results.overture:
        rows = [("Overture", "not run (--no-overture)", "-", "-", "NOT MEASURED")]
    print("\nGoals (issue 8)")
    for row in rows:
        print(f"  {row[0]:<40} {row[1]:<44} {row[2]:<36} {row[3]:<16} {row[4]}")


def _ms(value: object) -> str:
    if isinstance(value, float):
        return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value:.0f} ms"
    return str(value)


def print_profiles(results: Results) -> None:
    for name, path in results.profiles.items():
        found = summarize_profile(path)
        print(f"\npy-spy, {name}: {found.samples} samples with the GIL held ({path})")
        for title, rows in (("own time by package", found.packages), ("own time by function", found.own),
                            ("inclusive time", found.inclusive)):
            print(f"  {title}:")
            for frame, share in rows:
                print(f"    {100 * share:5.1f}%  {frame}")


def _cancel_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (``timeout``, a CI job's end) cancel the run, so that every stage's cleanup runs:
    service processes stopped, the sink, the Celery workers, the scratch database and the Redis keys removed. A
    second signal only says so: cancelling the cleanup would leave processes behind."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        if not seen:
            print(f"\n{signal.Signals(signum).name}: stopping; cleaning up ...", file=sys.stderr, flush=True)
            task.cancel()
        else:
            print("still cleaning up ...", file=sys.stderr, flush=True)
        seen.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


async def main(args: argparse.Namespace) -> None:
    _cancel_on_signals()
    results = Results()
    print(f"e2e: {args.events} events, {args.profiles} profiles, open loop at {', '.join(f'{r:g}' for r in args.rates)} events/s "
          f"for {args.latency_seconds:g} s; machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="overture-e2e-") as scratch:
        logs = Path(args.logs) if args.logs else Path(scratch)
        logs.mkdir(parents=True, exist_ok=True)
        sink = Sink(logs)
        await sink.start()
        try:
            if args.overture:
                source = await snapshot(args.rev, Path(scratch)) if args.rev else ROOT
                await run_overture(args, sink, logs / "overture", results, source=source)
            if args.celery:
                await run_celery(args, sink, logs, results)
            if args.floor:
                await run_floor(args, sink, results)
        finally:
            await sink.stop()
    print_profiles(results)
    summary(args, results)


async def snapshot(rev: str, folder: Path) -> Path:
    """The committed tree of *rev* (``git archive``), so that the services run a consistent version while
    others edit the working tree; the index and the working tree are left alone."""
    target = folder / "source"
    target.mkdir()
    proc = await asyncio.create_subprocess_shell(f"git -C {shlex.quote(str(ROOT))} archive --format=tar {shlex.quote(rev)} | tar -x -C {shlex.quote(str(target))}",
                                                 stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode:
        raise RuntimeError(f"git archive {rev} failed: {err.decode(errors='replace')}")
    commit = await asyncio.create_subprocess_exec("git", "-C", str(ROOT), "rev-parse", "--short", rev, stdout=asyncio.subprocess.PIPE)
    out, _ = await commit.communicate()
    print(f"services run from {rev} ({out.decode().strip()}), unpacked in {target}", flush=True)
    return target


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def _env(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events of the throughput runs (issue 8: 100000)")
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--rates", type=_rates, default=[200.0, 1000.0], help="open-loop rates, comma-separated")
    parser.add_argument("--latency-seconds", type=float, default=2, help="length of each open-loop run")
    parser.add_argument("--branching", type=int, default=0, help="subjects through issue 9's split / wait-for-event / two-sends journey")
    parser.add_argument("--timers", type=int, default=0, help="runs held on a 30-day delay while the timer probes run (issue 8: 100000)")
    parser.add_argument("--timer-probes", type=int, default=100)
    parser.add_argument("--timer-rate", type=float, default=5, help="probes per second: low, so that the send after the timer adds little")
    parser.add_argument("--timer-delay", type=float, default=5, help="seconds")
    parser.add_argument("--waiting", type=int, default=0, help="runs held waiting before the throughput is measured again (issue 8: 1000000)")
    parser.add_argument("--overload-after", type=float, default=5.0,
                        help="stop an open loop once 1%% of its events are this many seconds late (0: never)")
    parser.add_argument("--stage-timeout", type=float, default=180,
                        help="seconds each stage may take to deliver its emails (the throughput runs get --events / 50 more)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the four services during the throughput run; raw stacks into DIR")
    parser.add_argument("--no-overture", dest="overture", action="store_false", help="only the baselines")
    parser.add_argument("--no-celery", dest="celery", action="store_false")
    parser.add_argument("--no-floor", dest="floor", action="store_false")
    parser.add_argument("--rev", metavar="REV", help="run the services from this commit (git archive) instead of the working tree")
    parser.add_argument("--logs", metavar="DIR", help="keep the logs here (default: a temporary folder)")
    parser.add_argument("--service-env", type=_env, action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the services, e.g. OVERTURE_DECISION_WRITES=async")
    parsed = parser.parse_args()
    try:
        asyncio.run(main(parsed))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(130)  # everything started was stopped on the way out
