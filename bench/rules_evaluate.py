"""Benchmark of the rules service's send decision.

    .venv/bin/python bench/rules_evaluate.py [--seconds 10] [--rate 1000] [--batch 1000] [--writes sync|async]

Baselines, in the same run on the same machine:

- a bare grpc.aio echo server in its own process (no interceptors, no I/O;
  it decodes an EvaluateRequest and sends it back), one caller and 32
  callers;
- bare rule-engine evaluating the same 10 rules over the same profiles, in
  this process.

Goals (issue 11), each printed with met or NOT met:

1. Evaluate RESERVE, one caller: p50 <= 3x the echo server's p50; and p99
   <= 2 ms at 1,000 requests/s, open loop (latency from each request's
   scheduled start, so queueing counts).
2. Evaluate RESERVE capacity with 32 callers: >= 50% of the echo server's.
3. EvaluateBatch (10 rules, consent, suppression, 3 caps, quiet hours, every
   decision stored): >= 1.0x bare rule-engine's decisions/s.
5. Every figure also as work per CPU-second of the service process (user +
   system time from /proc/<pid>/stat, its worker processes included): far
   steadier than wall-clock on a shared machine.

The rules service runs as its own process against real PostgreSQL and Redis;
every decision is stored, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import rule_engine
from common import (  # type: ignore[import-not-found]
    METADATA,
    CpuMeter,
    echo_server,
    echo_stub,
    goal,
    percentiles,
    service_pid,
    services,
    show,
)

from overture.common.v1 import event_pb2, messaging_pb2
from overture.rules.v1 import (
    decision_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    rule_set_pb2,
    rules_service_pb2,
    rules_service_pb2_grpc,
)
from overture_rules.compiler import compile_rule_set

R = rule_set_pb2
SUBJECTS = 2000
RULES = [
    ("adult", "age >= 18", "require"),
    ("not-churned", 'plan == "churned"', "deny"),
    ("market", 'country in ["DE", "FR", "US", "GB", "NL"]', "require"),
    ("engaged", "score > 10 or plan == \"pro\"", "require"),
    ("no-spam", '"spam-complaint" in labels', "deny"),
    ("vip-or-active", '"vip" in labels or sessions >= 1', "require"),
    ("age-sane", "age < 130", "require"),
    ("not-test", 'email_domain == "test.invalid"', "deny"),
    ("plan-known", 'plan in ["free", "pro", "team", "churned"]', "require"),
    ("not-blocked", 'country == "KP"', "deny"),
]
ATTRIBUTES = [("age", R.ATTRIBUTE_TYPE_NUMBER), ("plan", R.ATTRIBUTE_TYPE_STRING), ("country", R.ATTRIBUTE_TYPE_STRING),
              ("score", R.ATTRIBUTE_TYPE_NUMBER), ("labels", R.ATTRIBUTE_TYPE_STRING_LIST), ("sessions", R.ATTRIBUTE_TYPE_NUMBER),
              ("email_domain", R.ATTRIBUTE_TYPE_STRING)]


def rule_set() -> rule_set_pb2.RuleSetSpec:
    spec = R.RuleSetSpec(
        attributes=[R.AttributeDeclaration(name=n, type=t, source=R.ATTRIBUTE_SOURCE_TRAIT) for n, t in ATTRIBUTES],
        rules=[R.Rule(id=i, expression=e, effect=R.RULE_EFFECT_REQUIRE if f == "require" else R.RULE_EFFECT_DENY, reason=i) for i, e, f in RULES],
        consents=[R.ConsentRequirement(channel=messaging_pb2.CHANNEL_EMAIL, purpose="marketing")],
        quiet_hours=R.QuietHours(start="23:00", end="05:00", default_timezone="UTC"),
        suppression_lists=["hard-bounces"],
    )
    for cap_id, kind, scope, limit in [("hourly", R.CAP_WINDOW_KIND_ROLLING, R.CAP_SCOPE_CHANNEL, 1_000_000),
                                       ("daily", R.CAP_WINDOW_KIND_CALENDAR_DAY, R.CAP_SCOPE_ALL_CHANNELS, 1_000_000),
                                       ("promo", R.CAP_WINDOW_KIND_CALENDAR_WEEK, R.CAP_SCOPE_TAG, 1_000_000)]:
        cap = R.FrequencyCap(id=cap_id, scope=scope, channel=messaging_pb2.CHANNEL_EMAIL, tag="promo", limit=limit, window=R.CapWindow(kind=kind))
        if kind == R.CAP_WINDOW_KIND_ROLLING:
            cap.window.duration.FromSeconds(3600)
        spec.frequency_caps.append(cap)
    return spec


def traits(i: int) -> dict[str, object]:
    rng = random.Random(i)
    return {"age": rng.randint(12, 80), "plan": rng.choice(["free", "pro", "team", "churned"]), "country": rng.choice(["DE", "FR", "US", "BR"]),
            "score": rng.randint(0, 50), "labels": rng.sample(["vip", "beta", "spam-complaint", "x"], 2), "sessions": rng.randint(0, 5),
            "email_domain": "example.com"}


def request(i: int, mode: int) -> rules_service_pb2.EvaluateRequest:
    req = rules_service_pb2.EvaluateRequest(rule_set="bench", subject_id=f"s{i % SUBJECTS}", channel=messaging_pb2.CHANNEL_EMAIL,
                                            tags=["promo"], priority=50, mode=mode)
    req.now.FromJsonString("2026-11-23T12:00:00Z")
    return req


async def seed(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        rules = rules_service_pb2_grpc.RulesServiceStub(channel)
        profiles = profile_service_pb2_grpc.ProfileServiceStub(channel)
        created = await rules.CreateRuleSetVersion(rules_service_pb2.CreateRuleSetVersionRequest(rule_set="bench", spec=rule_set(), reason="bench"), metadata=METADATA)
        await rules.ActivateRuleSetVersion(rules_service_pb2.ActivateRuleSetVersionRequest(
            rule_set="bench", version=created.rule_set_version.version, reason="bench"), metadata=METADATA)
        events = []
        for i in range(SUBJECTS):
            identify = event_pb2.Event(event_id=f"id{i}", event_type="identify", subject_id=f"s{i}")
            identify.attributes.update({"traits": traits(i)})
            consent = event_pb2.Event(event_id=f"c{i}", event_type="consent.granted", subject_id=f"s{i}")
            consent.attributes.update({"channel": "email", "purpose": "marketing"})
            events += [identify, consent]
        for start in range(0, len(events), 1000):
            await profiles.ApplyProfileEvents(profile_service_pb2.ApplyProfileEventsRequest(events=events[start:start + 1000]), metadata=METADATA)
        # Warm up: one decision per subject, so that every profile is in the
        # service's read-through cache, as it is for a subject messaged before.
        for start in range(0, SUBJECTS, 1000):
            await rules.EvaluateBatch(rules_service_pb2.EvaluateBatchRequest(
                requests=[request(i, decision_pb2.EVALUATION_MODE_CHECK) for i in range(start, min(start + 1000, SUBJECTS))]), metadata=METADATA)


@contextlib.asynccontextmanager
async def callables(address: str, count: int, *, echo: bool) -> AsyncIterator[list[Any]]:
    """Evaluate (or the echo server's method) on *count* channels, each its
    own connection (with OVERTURE_WORKERS, the kernel spreads connections,
    not calls, over the worker processes); the channels are closed after."""
    opened = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]
    try:
        yield [echo_stub(channel) if echo else rules_service_pb2_grpc.RulesServiceStub(channel).Evaluate for channel in opened]
    finally:
        for channel in opened:
            await channel.close()


async def fixed_rate(address: str, cpu: CpuMeter, *, rate: int, seconds: float, mode: int, channels: int = 1,
                     echo: bool = False) -> dict[str, object]:
    """Open loop: *rate* calls a second, each timed from when it was due
    (Evaluate, or the echo server's method with the same request)."""
    async with callables(address, channels, echo=echo) as calls:
        for i in range(200):  # warm up: connections, caches, compiled rule set
            await calls[i % channels](request(i, mode), metadata=METADATA)  # type: ignore[operator]
        latencies: list[float] = []
        errors = 0
        allowed = 0
        total = int(rate * seconds)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(i: int) -> None:
            nonlocal errors, allowed
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                reply = await calls[i % channels](request(i, mode), metadata=METADATA, timeout=2)  # type: ignore[operator]
                allowed += 0 if echo else reply.decision.allowed
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(loop.time() - scheduled)

        with cpu.measure():
            await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = loop.time() - start
    return {"requests": total, "achieved rate (req/s)": total / elapsed, "errors": errors, "allowed": allowed,
            **{f"{k} (ms)": v for k, v in percentiles(latencies).items()},
            "service CPU (s)": cpu.seconds, f"{'calls' if echo else 'decisions'} per CPU-second": cpu.per_cpu_second(total - errors)}


async def floor(address: str, calls: int = 500) -> dict[str, object]:
    """grpc.health.v1 Check on the rules server itself: no interceptors, no I/O."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            latencies.append(time.perf_counter() - started)
    return {"calls": calls, **{f"{k} (ms)": v for k, v in percentiles(latencies).items()}}


async def closed_loop(address: str, cpu: CpuMeter, *, seconds: float, workers: int, mode: int, echo: bool = False,
                      channels: int = 1) -> dict[str, object]:
    """Capacity: as many calls as *workers* concurrent callers get through
    (Evaluate, or the echo server's method with the same request), over *channels* connections."""
    async with callables(address, channels, echo=echo) as calls:
        for i in range(100):  # warm up
            await calls[i % channels](request(i, mode), metadata=METADATA, timeout=10)  # type: ignore[operator]
        latencies: list[float] = []
        done = 0
        end = time.perf_counter() + seconds

        async def worker(n: int) -> None:
            nonlocal done
            call = calls[n % channels]
            while time.perf_counter() < end:
                started = time.perf_counter()
                await call(request(done, mode), metadata=METADATA, timeout=10)  # type: ignore[operator]
                latencies.append(time.perf_counter() - started)
                done += 1

        started = time.perf_counter()
        with cpu.measure():
            await asyncio.gather(*(worker(n) for n in range(workers)))
        elapsed = time.perf_counter() - started
    unit = "calls" if echo else "decisions"
    return {"requests/s": done / elapsed, "workers": workers, **{f"{k} (ms)": v for k, v in percentiles(latencies).items()},
            "server CPU (s)": cpu.seconds, f"{unit} per CPU-second": cpu.per_cpu_second(done)}


async def batches(address: str, cpu: CpuMeter, *, batch: int, seconds: float, concurrency: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = rules_service_pb2_grpc.RulesServiceStub(channel)
        payload = rules_service_pb2.EvaluateBatchRequest(requests=[request(i, decision_pb2.EVALUATION_MODE_CHECK) for i in range(batch)])
        await stub.EvaluateBatch(payload, metadata=METADATA)
        done = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                reply = await stub.EvaluateBatch(payload, metadata=METADATA, timeout=60)
                done += sum(1 for r in reply.results if r.HasField("decision"))

        with cpu.measure():
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"decisions": done, "decisions/s": done / elapsed, "batch size": batch, "concurrent batches": concurrency,
            "service CPU (s)": cpu.seconds, "decisions per CPU-second": cpu.per_cpu_second(done)}


def bare_rule_engine(seconds: float) -> tuple[float, float]:
    """Bare rule-engine on the same rules and profiles: decisions/s and decisions per CPU-second (this process)."""
    compiled, _ = compile_rule_set(rule_set())
    assert compiled is not None
    things = []
    for i in range(SUBJECTS):
        t = traits(i)
        things.append({**{k: Decimal(v) if isinstance(v, int) else tuple(v) if isinstance(v, list) else v for k, v in t.items()},
                       "channel": "email", "category": "marketing", "tags": ("promo",), "segments": (), "priority": Decimal(50)})
    rules = [r.rule for r in compiled.rules]
    count = 0
    deadline = time.perf_counter() + seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        thing = things[count % SUBJECTS]
        for rule in rules:
            try:
                rule.matches(thing)
            except rule_engine.EngineError:
                pass
        count += 1
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu_started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10, help="length of the open-loop and batch runs; closed loops run min(this, 5)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--writes", choices=["sync", "async"], default="sync", help="OVERTURE_DECISION_WRITES of the rules service")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="OVERTURE_EVENT_LOOP of the rules service, and the echo server's loop (the same, so the ratio is fair)")
    parser.add_argument("--workers", type=int, default=1, help="OVERTURE_WORKERS of the rules service")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="OVERTURE_LOG_LEVEL of the rules service (info, its default: the canonical rpc lines cost CPU)")
    parser.add_argument("--channels", type=int, default=0,
                        help="connections the callers share (default 1, or 4 per worker process: the kernel spreads connections over them)")
    args = parser.parse_args()
    channels = args.channels or (1 if args.workers == 1 else 4 * args.workers)
    short = min(args.seconds, 5)
    check, reserve = decision_pb2.EVALUATION_MODE_CHECK, decision_pb2.EVALUATION_MODE_RESERVE
    print(f"decision records written {args.writes} (OVERTURE_DECISION_WRITES={args.writes}); event loop {args.loop}; "
          f"{args.workers} worker process(es); {channels} client connection(s); log level {args.log_level}")
    summary: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as logs:
        async with echo_server(loop=args.loop) as (echo_address, echo_pid):
            echo_cpu = CpuMeter(echo_pid)
            echo_one = await closed_loop(echo_address, echo_cpu, seconds=short, workers=1, mode=reserve, echo=True, channels=channels)
            show("Baseline: bare grpc.aio echo server, one caller at a time", echo_one)
            echo_many = await closed_loop(echo_address, echo_cpu, seconds=short, workers=32, mode=reserve, echo=True, channels=channels)
            show("Baseline: bare grpc.aio echo server, 32 concurrent callers", echo_many)
            echo_open = await fixed_rate(echo_address, echo_cpu, rate=args.rate, seconds=args.seconds, mode=reserve, channels=channels, echo=True)
            show(f"Baseline: bare grpc.aio echo server, open loop at {args.rate} req/s (this client's own floor)", echo_open)
        async with services(["rules"], log_dir=Path(logs), OVERTURE_DECISION_WRITES=args.writes, OVERTURE_EVENT_LOOP=args.loop,
                            OVERTURE_WORKERS=str(args.workers), OVERTURE_LOG_LEVEL=args.log_level) as running:
            address = running["rules"]
            cpu = CpuMeter(service_pid("rules"))
            await seed(address)
            show("grpc.health.v1 Check on the rules server, one caller", await floor(address))
            figures: dict[str, dict[str, object]] = {}
            for mode, name in ((check, "CHECK"), (reserve, "RESERVE")):
                one = figures[f"{name} one"] = await closed_loop(address, cpu, seconds=short, workers=1, mode=mode, channels=channels)
                if mode == reserve:
                    ratio = float(one["p50 (ms)"]) / float(echo_one["p50 (ms)"])  # type: ignore[arg-type]
                    one["p50 / echo p50"] = ratio
                    one["goal p50 <= 3x echo"] = goal(ratio <= 3)
                    summary.append(("1. Evaluate RESERVE one caller, p50", f"{one['p50 (ms)']:.3f} ms", f"echo {echo_one['p50 (ms)']:.3f} ms",
                                    f"{ratio:.2f}x (<= 3)", goal(ratio <= 3)))
                show(f"Evaluate over gRPC, {name}, one caller at a time", one)
                many = figures[f"{name} many"] = await closed_loop(address, cpu, seconds=short, workers=32, mode=mode, channels=channels)
                if mode == reserve:
                    ratio = float(many["requests/s"]) / float(echo_many["requests/s"])  # type: ignore[arg-type]
                    many["ratio to echo"] = ratio
                    many["goal >= 0.5x echo"] = goal(ratio >= 0.5)
                    summary.append(("2. Evaluate RESERVE, 32 callers", f"{many['requests/s']:.0f} req/s", f"echo {echo_many['requests/s']:.0f} req/s",
                                    f"{ratio:.2f}x (>= 0.5)", goal(ratio >= 0.5)))
                show(f"Evaluate over gRPC, {name}, capacity with 32 concurrent callers", many)
                result = await fixed_rate(address, cpu, rate=args.rate, seconds=args.seconds, mode=mode, channels=channels)
                met = float(result["p99 (ms)"]) <= 2 and not result["errors"]  # type: ignore[arg-type]
                result["goal p99 <= 2 ms"] = goal(met)
                if mode == reserve:
                    summary.append((f"1. Evaluate RESERVE open loop {args.rate}/s, p99", f"{result['p99 (ms)']:.3f} ms",
                                    f"echo p99 {echo_open['p99 (ms)']:.3f} ms", "<= 2 ms", goal(met)))
                show(f"Evaluate over gRPC, {name}, open loop at {args.rate} req/s for {args.seconds:g} s", result)
            batch = await batches(address, cpu, batch=args.batch, seconds=args.seconds, concurrency=args.concurrency)
    bare, bare_cpu = bare_rule_engine(short)
    ratio = float(batch["decisions/s"]) / bare  # type: ignore[arg-type]
    batch["bare rule-engine decisions/s"] = bare
    batch["bare rule-engine per CPU-second"] = bare_cpu
    batch["ratio (batch / bare)"] = ratio
    batch["ratio per CPU-second"] = float(batch["decisions per CPU-second"]) / bare_cpu  # type: ignore[arg-type]
    batch["goal >= 1.0x bare rule-engine"] = goal(ratio >= 1.0)
    show("EvaluateBatch over gRPC, 10 rules + consent + caps + quiet hours, CHECK", batch)
    summary.append(("3. EvaluateBatch", f"{batch['decisions/s']:.0f} decisions/s", f"rule-engine {bare:.0f}/s", f"{ratio:.2f}x (>= 1.0)", goal(ratio >= 1.0)))
    reserve_one, reserve_many = figures["RESERVE one"], figures["RESERVE many"]
    summary.append(("5. decisions per service CPU-second", f"{reserve_one['decisions per CPU-second']:.0f} (1 caller), "
                    f"{reserve_many['decisions per CPU-second']:.0f} (32), {batch['decisions per CPU-second']:.0f} (batch)",
                    f"echo {echo_many['calls per CPU-second']:.0f} calls, rule-engine {bare_cpu:.0f}",
                    f"batch {batch['ratio per CPU-second']:.2f}x", "printed"))
    print("\nGoals (issue 11)")
    for row in summary:
        print(f"  {row[0]:<40} {row[1]:<44} {row[2]:<36} {row[3]:<16} {row[4]}")


if __name__ == "__main__":
    asyncio.run(main())
