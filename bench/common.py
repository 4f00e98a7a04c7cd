"""Shared set-up of the benchmarks: a scratch database, a Redis namespace,
services as separate processes, the CPU time those processes use (read from
``/proc/<pid>/stat``), a bare grpc.aio echo server to compare RPCs with, and
latency statistics.

    python bench/common.py echo --port N [--loop asyncio|uvloop]

runs the echo server on its own (the benchmarks start it themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from overture_runtime.testing import Processes, service_processes, temporary_database

PG_ADMIN = os.environ.get("OVERTURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("OVERTURE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TOKEN = "bench-token"
SERVICE_TOKEN = "bench-service-token"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
TOKENS = [
    {"token": TOKEN, "tenant": "bench", "roles": ["*"], "principal": "bench"},
    {"token": SERVICE_TOKEN, "tenant": "*", "roles": ["*"], "principal": "svc:bench"},
]


@contextlib.asynccontextmanager
async def services(names: Sequence[str], *, log_dir: Path, **env: str) -> AsyncIterator[Processes]:
    """Run *names* as separate processes on a scratch database and Redis namespace."""
    namespace = f"bench{secrets.token_hex(3)}"
    async with temporary_database(PG_ADMIN) as url:
        try:
            async with service_processes(env={
                "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "OVERTURE_REDIS_NAMESPACE": namespace,
                "OVERTURE_AUTH_TOKENS": json.dumps(TOKENS), "OVERTURE_SERVICE_TOKEN": SERVICE_TOKEN,
                "OVERTURE_LOG_LEVEL": "warning", **env,
            }, log_dir=log_dir, services=names) as running:
                yield running
        finally:
            client = aioredis.Redis.from_url(REDIS_URL)
            keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return [str(pid), "comm", *text[text.rindex(")") + 2:].split()]


def process_tree(root: int) -> list[int]:
    """*root* and every process under it, by parent pid, at this moment."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[3]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def service_pid(name: str) -> int:
    """The pid of the ``overture serve <name>`` process this benchmark started."""
    for pid in process_tree(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and name.encode() in argv and pid != os.getpid():
            return pid
    raise RuntimeError(f"no 'overture serve {name}' process under this benchmark")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time the processes *pids* (and their threads) have used."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[13]) + int(fields[14])
    return total / _TICK


class CpuMeter:
    """CPU seconds a process tree uses between :meth:`start` and :meth:`stop`.

    The tree is read again at each end, so worker processes count too; a
    worker that exits in between loses its share (none do here)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seconds = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._started = cpu_seconds(process_tree(self.root))

    def stop(self) -> float:
        self.seconds = cpu_seconds(process_tree(self.root)) - self._started
        return self.seconds

    @contextlib.contextmanager
    def measure(self) -> Iterator[CpuMeter]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def per_cpu_second(self, work: float) -> float:
        """*work* per CPU-second used, or 0 if none was measured."""
        return work / self.seconds if self.seconds > 0 else 0.0


class BackendCpu:
    """CPU seconds of the PostgreSQL backends connected to one database
    between :meth:`start` and :meth:`stop` (from /proc: the server runs on
    this machine). Backends are listed at each end; one that exits in
    between loses its share."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seconds = 0.0
        self._started: dict[int, float] = {}

    async def _read(self) -> dict[int, float]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await conn.close()
        return {r["pid"]: cpu_seconds([r["pid"]]) for r in rows}

    async def start(self) -> None:
        self._started = await self._read()

    async def stop(self) -> float:
        self.seconds = sum(cpu - self._started.get(pid, 0.0) for pid, cpu in (await self._read()).items())
        return self.seconds


def goal(met: bool) -> str:
    """The goal column: ``met`` or ``NOT met``."""
    return "met" if met else "NOT met"


ECHO_METHOD = "/bench.Echo/Echo"


@contextlib.asynccontextmanager
async def echo_server(*, loop: str = "asyncio") -> AsyncIterator[tuple[str, int]]:
    """A bare grpc.aio server (no interceptors, no I/O) in its own process
    that answers ``ECHO_METHOD`` with the request it got, decoded and encoded
    again as an ``EvaluateRequest``. Yields its address and pid."""
    from overture_runtime.testing import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "echo", "--port", str(port), "--loop", loop],  # noqa: ASYNC220 - starting is quick
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line.startswith(b"serving"):
            raise RuntimeError(f"the echo server did not start: {line!r}")
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def echo_stub(channel: object) -> object:
    """A callable for ``ECHO_METHOD`` on *channel*."""
    from overture.rules.v1 import rules_service_pb2

    return channel.unary_unary(ECHO_METHOD, request_serializer=rules_service_pb2.EvaluateRequest.SerializeToString,  # type: ignore[attr-defined]
                               response_deserializer=rules_service_pb2.EvaluateRequest.FromString)


async def _run_echo(port: int) -> None:
    import grpc

    from overture.rules.v1 import rules_service_pb2

    async def echo(request: rules_service_pb2.EvaluateRequest, context: object) -> rules_service_pb2.EvaluateRequest:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=rules_service_pb2.EvaluateRequest.FromString,
                                                    response_serializer=rules_service_pb2.EvaluateRequest.SerializeToString),
    }),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of *samples* (seconds), in milliseconds."""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000, "max": ordered[-1] * 1000}


def show(title: str, figures: dict[str, object]) -> None:
    """Print one benchmark's figures."""
    print(f"\n{title}")
    for key, value in figures.items():
        print(f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="benchmark helpers")
    parser.add_argument("command", choices=["echo"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_run_echo(args.port))
    else:
        asyncio.run(_run_echo(args.port))


# --- server-side durations from the services' Prometheus histograms -------------------------------------------

Histograms = dict[tuple[str, str], tuple[list[tuple[float, float]], float, float]]
"""By (service, series): cumulative (upper bound, count) buckets, sum and count."""


async def scrape_histograms(metrics_ports: dict[str, int]) -> Histograms:
    """Every histogram series of each service's /metrics, keyed by the series' name and labels."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    found: Histograms = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for service, port in metrics_ports.items():
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                continue
            for family in text_string_to_metric_families(text):
                if family.type != "histogram":
                    continue
                series: dict[str, tuple[list[tuple[float, float]], float, float]] = {}
                for sample in family.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    name = family.name + (f"{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}" if labels else "")
                    buckets, total, count = series.get(name, ([], 0.0, 0.0))
                    if sample.name.endswith("_bucket"):
                        buckets.append((float(sample.labels["le"]), sample.value))
                    elif sample.name.endswith("_sum"):
                        total = sample.value
                    elif sample.name.endswith("_count"):
                        count = sample.value
                    series[name] = (buckets, total, count)
                for name, value in series.items():
                    found[(service, name)] = value
    return found


def histogram_figures(before: Histograms, after: Histograms) -> dict[str, object]:
    """What each series recorded between two scrapes: count, mean and the bucket bounds holding p50 and p99
    (server-side time only: queueing before a batch or a call is not in it)."""
    figures: dict[str, object] = {}
    for key, (buckets, total, count) in sorted(after.items()):
        old_buckets, old_total, old_count = before.get(key, ([], 0.0, 0.0))
        n = count - old_count
        if n <= 0:
            continue
        previous = dict(old_buckets)
        delta = [(le, c - previous.get(le, 0.0)) for le, c in sorted(buckets)]

        service, name = key
        # Durations are in seconds, printed in ms; other histograms (sizes, counts) as they are.
        timed = "_seconds" in name or "_duration" in name
        scale = 1000 if timed else 1

        def bound(q: float, delta: list[tuple[float, float]] = delta, n: float = n, scale: int = scale) -> str:
            for le, c in delta:
                if c >= q * n:
                    return f"<= {le * scale:g}" if le != float("inf") else "> last bucket"
            return "?"

        short = name.replace("overture_", "").replace("_seconds", "").replace("rpc_duration{method=", "rpc{")
        unit = " ms" if timed else ""
        figures[f"{service} {short}: n, mean{unit}, p50{unit}, p99{unit}"] = (f"{n:.0f}, {(total - old_total) / n * scale:.1f}, "
                                                                               f"{bound(0.5)}, {bound(0.99)}")
    return figures
