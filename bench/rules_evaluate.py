"""Benchmark of the rules service's send decision.

    .venv/bin/python bench/rules_evaluate.py [--rate 1000] [--seconds 10] [--batch 1000]

1. Evaluate over gRPC at a fixed rate (open loop): p50/p99 latency, measured
   from each request's scheduled start, so queueing counts. Goal: p99 <= 2 ms
   at 1,000 requests/s.
2. EvaluateBatch throughput: decisions/s with a 10-rule set plus consent,
   frequency caps and quiet hours. Goal: >= 50,000 decisions/s on 2 cores.
3. The baseline, in the same run: bare in-process rule-engine evaluation of
   the same 10 rules over the same profiles, and the ratio.

The rules service runs as its own process against real PostgreSQL and Redis;
every decision is stored, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import grpc
import rule_engine
from common import METADATA, percentiles, services, show  # type: ignore[import-not-found]

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


async def fixed_rate(address: str, *, rate: int, seconds: float, mode: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rules_service_pb2_grpc.RulesServiceStub(channel)
        for i in range(200):  # warm up: connections, caches, compiled rule set
            await stub.Evaluate(request(i, mode), metadata=METADATA)
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
                reply = await stub.Evaluate(request(i, mode), metadata=METADATA, timeout=2)
                allowed += reply.decision.allowed
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(loop.time() - scheduled)

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = loop.time() - start
    return {"requests": total, "achieved rate (req/s)": total / elapsed, "errors": errors, "allowed": allowed,
            **{f"{k} (ms)": v for k, v in percentiles(latencies).items()}}


async def floor(address: str, calls: int = 500) -> dict[str, object]:
    """The floor of any RPC on this machine: grpc.health.v1 Check, no interceptors, no I/O."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            latencies.append(time.perf_counter() - started)
    return {"calls": calls, **{f"{k} (ms)": v for k, v in percentiles(latencies).items()}}


async def closed_loop(address: str, *, seconds: float, workers: int, mode: int) -> dict[str, object]:
    """Capacity: as many Evaluate calls as *workers* concurrent callers get through."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rules_service_pb2_grpc.RulesServiceStub(channel)
        latencies: list[float] = []
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                started = time.perf_counter()
                await stub.Evaluate(request(done, mode), metadata=METADATA, timeout=10)
                latencies.append(time.perf_counter() - started)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    return {"requests/s": done / elapsed, "workers": workers, **{f"{k} (ms)": v for k, v in percentiles(latencies).items()}}


async def batches(address: str, *, batch: int, seconds: float, concurrency: int) -> dict[str, object]:
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

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"decisions": done, "decisions/s": done / elapsed, "batch size": batch, "concurrent batches": concurrency}


def bare_rule_engine(seconds: float) -> float:
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
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        thing = things[count % SUBJECTS]
        for rule in rules:
            try:
                rule.matches(thing)
            except rule_engine.EngineError:
                pass
        count += 1
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--writes", choices=["sync", "async"], default="sync", help="OVERTURE_DECISION_WRITES of the rules service")
    args = parser.parse_args()
    print(f"decision records written {args.writes} (OVERTURE_DECISION_WRITES={args.writes})")
    with tempfile.TemporaryDirectory() as logs:
        async with services(["rules"], log_dir=Path(logs), OVERTURE_DECISION_WRITES=args.writes) as running:
            address = running["rules"]
            await seed(address)
            show("The floor: grpc.health.v1 Check on the same server, one caller", await floor(address))
            for mode, name in ((decision_pb2.EVALUATION_MODE_CHECK, "CHECK"), (decision_pb2.EVALUATION_MODE_RESERVE, "RESERVE")):
                show(f"Evaluate over gRPC, {name}, one caller at a time", await closed_loop(address, seconds=min(args.seconds, 5), workers=1, mode=mode))
                show(f"Evaluate over gRPC, {name}, capacity with 32 concurrent callers",
                     await closed_loop(address, seconds=min(args.seconds, 5), workers=32, mode=mode))
                result = await fixed_rate(address, rate=args.rate, seconds=args.seconds, mode=mode)
                result["goal p99 <= 2 ms"] = "met" if result["p99 (ms)"] <= 2 and not result["errors"] else "NOT met"  # type: ignore[operator]
                show(f"Evaluate over gRPC, {name}, open loop at {args.rate} req/s for {args.seconds:g} s", result)
            batch = await batches(address, batch=args.batch, seconds=args.seconds, concurrency=args.concurrency)
    bare = bare_rule_engine(min(args.seconds, 5))
    batch["bare rule-engine decisions/s"] = bare
    batch["ratio (batch / bare)"] = float(batch["decisions/s"]) / bare  # type: ignore[arg-type]
    batch["goal >= 50,000 decisions/s"] = "met" if float(batch["decisions/s"]) >= 50_000 else "NOT met"  # type: ignore[arg-type]
    show("EvaluateBatch over gRPC, 10 rules + consent + caps + quiet hours (goal >= 50,000 decisions/s)", batch)


if __name__ == "__main__":
    asyncio.run(main())
