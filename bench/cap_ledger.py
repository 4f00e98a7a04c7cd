"""Benchmark of the frequency-cap ledger's cost as a subject's refusals, and its sends, pile up.

    .venv/bin/python bench/cap_ledger.py [--refusals 0,1000,10000] [--sends 0,1000,10000] [--decisions 200]

Refusals: for each count of earlier refusals, one subject under a cap of one
email a day gets that many refused reservations, then ``--decisions`` more are
timed. Sends: for each count of earlier sends, one subject under caps that
admit them all (a million emails a day, and a million messages of any channel)
has that many committed, then ``--decisions`` more reservations are timed.
Each is timed as the Redis time of the ledger's script (``INFO commandstats``,
its own time inside the server), on a private redis-server started for the
run (so nothing else counts). The baseline, in the same run and server: the
least a sliding-window counter can do in one script call (drop what left the
window, ZCOUNT, ZADD). Guarantee 10 says the cost must not grow with the data:
the goal is a ledger whose cost after the most refusals, and after the most
sends, is at most 1.5x its cost after none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import rule_set_pb2
from overture_rules.caps import CapLedger, CapWindow
from overture_rules.profile_cache import SubjectKeys
from overture_rules.scripts import run_scripts
from overture_runtime.redis import Keys
from overture_runtime.testing import free_port

_BARE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local n = redis.call('ZCOUNT', KEYS[1], ARGV[2], '+inf')
if n < tonumber(ARGV[3]) then redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4]) end
return n
"""
_CAP = rule_set_pb2.FrequencyCap(id="one-a-day", scope=rule_set_pb2.CAP_SCOPE_CHANNEL, channel=messaging_pb2.CHANNEL_EMAIL, limit=1,
                                 window=rule_set_pb2.CapWindow(kind=rule_set_pb2.CAP_WINDOW_KIND_ROLLING))
_WIDE = (rule_set_pb2.FrequencyCap(id="million-emails", scope=rule_set_pb2.CAP_SCOPE_CHANNEL, channel=messaging_pb2.CHANNEL_EMAIL,
                                   limit=1_000_000, window=rule_set_pb2.CapWindow(kind=rule_set_pb2.CAP_WINDOW_KIND_ROLLING)),
         rule_set_pb2.FrequencyCap(id="million-messages", scope=rule_set_pb2.CAP_SCOPE_ALL_CHANNELS, limit=1_000_000,
                                   window=rule_set_pb2.CapWindow(kind=rule_set_pb2.CAP_WINDOW_KIND_ROLLING)))


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[aioredis.Redis]:
    """A redis-server of this run's own, on a free port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cap-ledger-") as folder:
        server = await asyncio.create_subprocess_exec(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                                      "--dir", folder, stdout=subprocess.DEVNULL)
        client = aioredis.Redis(port=port)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    await client.ping()
                    break
                await asyncio.sleep(0.05)
            yield client
        finally:
            await client.aclose()
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)


async def redis_us_per_call(client: aioredis.Redis, calls: int, one: Callable[[int], Awaitable[object]]) -> float:
    """The server's own time per script call over *calls* calls of *one*."""
    await client.config_resetstat()
    for i in range(calls):
        await one(i)
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)) / max(int(stats.get("calls", 0)), 1)


async def measure(client: aioredis.Redis, earlier: int, decisions: int, *, sends: bool) -> tuple[float, float]:
    """(ledger, bare counter): Redis microseconds per decision after *earlier* refusals (or, with *sends*,
    earlier committed sends) of one subject."""
    await client.flushall()
    ledger = CapLedger(client, Keys("bench"), hold=dt.timedelta(minutes=10), retention=dt.timedelta(days=8))
    now = dt.datetime.now(dt.UTC)
    windows = [CapWindow(cap=cap, start=now - dt.timedelta(days=1), end=now) for cap in (_WIDE if sends else (_CAP,))]
    limit = windows[0].cap.limit

    keys, generation = SubjectKeys.of(ledger.keys, "bench", "hammered"), ""

    async def reserve(i: int, op: str = "reserve") -> None:
        nonlocal generation
        at = now + dt.timedelta(microseconds=i)
        args = ledger.args(op, decision_id=f"d{i}", priority=0, channel=messaging_pb2.CHANNEL_EMAIL, tags=(),
                           windows=windows, now=at)
        if op != "commit":
            await ledger.run("bench", "hammered", args, windows)
            return
        # Reserved and committed at once, as a decision does it (decide.lua, once it knows the profile's generation).
        while True:
            (reply,) = await run_scripts(client, [CapLedger.decide_command(keys, generation=generation, generation_ttl_ms=3_600_000, args=args)])
            if reply[0] == b"ok":
                return
            generation = reply[1].decode()

    # Refusals: the first holds the slot (for the 10-minute hold) and every later one is refused. Sends: all commit.
    for i in range(earlier + 1):
        await reserve(i, "commit" if sends else "reserve")
    spent = await redis_us_per_call(client, decisions, lambda i: reserve(earlier + 1 + i))
    bare = client.register_script(_BARE)
    start_ms = int((now - dt.timedelta(days=1)).timestamp() * 1000)
    for i in range(earlier + 1):
        await bare(keys=["bench:bare"], args=[start_ms + 10 + i, start_ms, limit, f"d{i}"])
    baseline = await redis_us_per_call(client, decisions, lambda i: bare(keys=["bench:bare"], args=[start_ms + 10 + i, start_ms, limit, f"x{i}"]))
    return spent, baseline


async def main(args: argparse.Namespace) -> None:
    goals = []
    async with private_redis() as client:
        for what, counts, sends, title in (
            ("refusals", args.refusals, False, "a cap of 1 a day, refused decisions timed after each count of earlier refusals"),
            ("sends", args.sends, True, "caps of a million a day (email, and any channel), reservations timed after each count of earlier sends"),
        ):
            print(f"cap ledger: one subject, {title} ({args.decisions} each)")
            rows: list[tuple[int, float, float]] = []
            started = time.monotonic()
            for count in (int(c) for c in counts.split(",")):
                spent, baseline = await measure(client, count, args.decisions, sends=sends)
                rows.append((count, spent, baseline))
                print(f"  after {count:>6} {what}: ledger {spent:7.1f} us/decision, bare sliding-window counter {baseline:5.1f} us, "
                      f"ratio {spent / baseline:5.2f}", flush=True)
            print(f"  ({time.monotonic() - started:.0f} s)")
            growth = rows[-1][1] / rows[0][1]
            goals.append(f"cost after {rows[-1][0]} {what} / after {rows[0][0]}: {growth:.2f}x (<= 1.5)  {'met' if growth <= 1.5 else 'NOT met'}")
    print("\nGoal (guarantee 10):")
    for goal in goals:
        print(f"  {goal}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refusals", default="0,1000,10000", help="counts of earlier refusals, comma-separated")
    parser.add_argument("--sends", default="0,1000,10000", help="counts of earlier committed sends, comma-separated")
    parser.add_argument("--decisions", type=int, default=200, help="decisions timed after each count")
    asyncio.run(main(parser.parse_args()))
