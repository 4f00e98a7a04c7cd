"""What the end-to-end benchmark and its baselines share: the SMTP sink
process and its records, CPU time per process (``/proc/<pid>/stat``), the
benchmark's own virtual environment (``.bench-venv/``: Celery and py-spy
live there, never in the project's ``.venv``) and py-spy profiles.

Not thread-safe; used from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BENCH_VENV", "Cpu", "ProfileSummary", "Profiler", "Sink", "bench_python", "free_port", "parent_of", "process_tree", "redis_server_pid",
    "stop_process", "summarize_profile",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BENCH_VENV = ROOT / ".bench-venv"
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def parent_of(pid: int) -> int | None:
    """The parent pid of *pid*, or None if it is gone."""
    fields = _stat(pid)
    return int(fields[3]) if fields else None


def cpu_of(pid: int) -> float:
    """User plus system CPU seconds *pid* (all its threads) has used; 0 if it is gone."""
    user, system = user_system(pid)
    return user + system


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds *pid* (all its threads) has used; zeros if it is gone."""
    fields = _stat(pid)
    return (int(fields[13]) / _TICK, int(fields[14]) / _TICK) if fields else (0.0, 0.0)


def redis_server_pid(port: int) -> int | None:
    """The pid of the redis-server listening on *port*, if this machine runs one we can see."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if argv.startswith(b"redis-server") and f":{port}".encode() in argv:
            return int(entry.name)
    return None


class Cpu:
    """CPU seconds per named group of processes between :meth:`start` and :meth:`stop`.

    A group is a root pid (its process tree is read again at each end, so
    prefork children count) or a callable giving the pids at that moment
    (PostgreSQL backends). A process that exits in between loses its share."""

    def __init__(self) -> None:
        self.roots: dict[str, int] = {}
        self.lists: dict[str, object] = {}
        self._start: dict[str, dict[int, tuple[float, float]]] = {}
        self.seconds: dict[str, float] = {}
        """User + system seconds per group."""
        self.system: dict[str, float] = {}
        """The system (kernel) part of ``seconds``: on loopback, mostly socket I/O."""

    def add(self, name: str, root: int) -> None:
        self.roots[name] = root

    def add_pids(self, name: str, pids: object) -> None:
        """*pids* is an async callable answering the group's pids now."""
        self.lists[name] = pids

    async def _read(self) -> dict[str, dict[int, tuple[float, float]]]:
        read: dict[str, dict[int, tuple[float, float]]] = {}
        for name, root in self.roots.items():
            read[name] = {pid: user_system(pid) for pid in process_tree(root)}
        for name, pids in self.lists.items():
            read[name] = {pid: user_system(pid) for pid in await pids()}  # type: ignore[operator]
        return read

    async def start(self) -> None:
        self._start = await self._read()

    async def stop(self) -> dict[str, float]:
        end = await self._read()
        self.seconds, self.system = {}, {}
        for name, now in end.items():
            before = self._start.get(name, {})
            self.seconds[name] = sum(u + s - sum(before.get(pid, (0.0, 0.0))) for pid, (u, s) in now.items())
            self.system[name] = sum(s - before.get(pid, (0.0, 0.0))[1] for pid, (_, s) in now.items())
        return self.seconds


@dataclass
class Sink:
    """The SMTP sink process (``smtp_sink.py``) and what it recorded."""

    folder: Path
    port: int = 0
    arrivals: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    """Arrival times (monotonic) per event tag."""
    keys: collections.Counter[str] = field(default_factory=collections.Counter)
    """Messages per idempotency key."""
    messages: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _offset: int = 0
    _partial: bytes = b""

    @property
    def path(self) -> Path:
        return self.folder / "sink.tsv"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> None:
        self.port = free_port()
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - starting is quick
            [sys.executable, str(HERE / "smtp_sink.py"), "--port", str(self.port), "--out", str(self.path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._proc.stdout.readline), 20)
        if not line.startswith(b"serving"):
            rest = self._proc.stdout.read().decode(errors="replace") if self._proc.poll() is not None else ""
            raise RuntimeError(f"the SMTP sink did not start: {line.decode(errors='replace')}{rest}")

    async def stop(self) -> None:
        if self._proc is not None:
            await stop_process(self._proc, grace=5)
            self.poll()

    def poll(self) -> None:
        """Read the lines the sink wrote since the last poll."""
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            arrived, key, tag = line.decode().split("\t")
            self.messages += 1
            if key:
                self.keys[key] += 1
            if tag:
                self.arrivals[tag].append(float(arrived))

    async def wait_for(self, tags: Iterable[str], *, deadline: float) -> bool:
        """Wait until every tag in *tags* has arrived, or until the monotonic *deadline*; whether all did."""
        waiting = set(tags)
        while True:
            self.poll()
            waiting = {t for t in waiting if t not in self.arrivals}
            if not waiting:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    def first_arrivals(self, tags: Iterable[str]) -> dict[str, float]:
        return {t: self.arrivals[t][0] for t in tags if t in self.arrivals}

    def duplicates(self, prefix: str) -> tuple[int, int]:
        """Extra messages for tags with *prefix*, and extra messages per idempotency key (all pipelines)."""
        by_tag = sum(len(times) - 1 for tag, times in self.arrivals.items() if tag.startswith(prefix))
        by_key = sum(n - 1 for n in self.keys.values())
        return by_tag, by_key


async def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10, sig: int = signal.SIGTERM) -> int | None:
    """Signal *proc*, wait up to *grace* seconds, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return await asyncio.to_thread(proc.wait, grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return await asyncio.to_thread(proc.wait, 5)


def _requirements_digest(requirements: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in requirements:
        digest.update(path.read_bytes())
    return digest.hexdigest()


async def bench_python(*requirements: Path) -> Path:
    """The interpreter of ``.bench-venv/``, created on first use with the pinned *requirements*.

    The venv holds what the benchmark needs and the project must not (Celery,
    py-spy). It is rebuilt only when the pinned lists change."""
    marker = BENCH_VENV / ".requirements.sha256"
    wanted = _requirements_digest(requirements)
    python = BENCH_VENV / "bin" / "python"
    if python.exists() and marker.exists() and wanted in marker.read_text().split():
        return python
    if not python.exists():
        print(f"creating {BENCH_VENV.relative_to(ROOT)}/ (first use) ...", flush=True)
        base = shutil.which("python3") or sys.executable
        await _run([base, "-m", "venv", str(BENCH_VENV)], within=120)
    for req in requirements:
        print(f"installing {req.relative_to(ROOT)} into {BENCH_VENV.relative_to(ROOT)}/ ...", flush=True)
        await _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req)], within=600)
    previous = marker.read_text().split() if marker.exists() else []
    marker.write_text("\n".join([*previous, wanted]) + "\n")
    return python


async def _run(argv: list[str], *, within: float) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{argv[0]} timed out after {within:.0f} s") from None
    if proc.returncode:
        tail = out.decode(errors="replace").strip().splitlines()[-10:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n" + "\n".join(tail))


class Profiler:
    """py-spy ``record`` attached to running processes, stopped with SIGINT so
    that it writes its collapsed stacks. It pauses each process for every
    sample unless *nonblocking* (cheaper, but stacks can tear).

    Only the thread holding the GIL is sampled (``--gil``): py-spy's idle
    detection counts threads parked in ``select`` or on a queue (the metrics
    server, executor threads) as busy, which buries the real work. So the
    profile is Python's CPU; kernel time in socket calls, which run without
    the GIL, is the system share printed from ``/proc`` beside it."""

    def __init__(self, py_spy: Path, folder: Path, *, rate: int = 100, nonblocking: bool = False) -> None:
        self.py_spy = py_spy
        self.folder = folder
        self.rate = rate
        self.nonblocking = nonblocking
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, pids: dict[str, int]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = self.folder / f"{name}.txt"
            self._procs[name] = subprocess.Popen(
                [str(self.py_spy), "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                 "--duration", "3600", "--output", str(out), "--gil", "--subprocesses",  # OVERTURE_WORKERS > 1 serves from children
                 *(["--nonblocking"] if self.nonblocking else [])],
                stdout=(self.folder / f"{name}.py-spy.log").open("wb"), stderr=subprocess.STDOUT)

    async def stop(self) -> dict[str, Path]:
        for proc in self._procs.values():
            await stop_process(proc, grace=20, sig=signal.SIGINT)
        return {name: self.folder / f"{name}.txt" for name in self._procs if (self.folder / f"{name}.txt").exists()}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class ProfileSummary:
    """What one raw py-spy file says."""

    samples: int
    """Samples of the thread holding the GIL: Python running."""
    packages: list[tuple[str, float]]
    """Own time by package or stdlib module of the innermost frame: where the CPU went."""
    own: list[tuple[str, float]]
    """The functions with the most own time."""
    inclusive: list[tuple[str, float]]
    """The functions with the most time under them, the event loop and runners left out."""


def summarize_profile(path: Path, *, top: int = 8) -> ProfileSummary:
    """Shares of samples of a raw (collapsed stacks) py-spy file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        own[frames[-1][0]] += n
        packages[frames[-1][1]] += n
        for name in {f[0] for f in frames}:
            inclusive[name] += n
    if not total:
        return ProfileSummary(0, [], [], [])
    return ProfileSummary(total, [(p, n / total) for p, n in packages.most_common(top + 2)],
                          [(f, n / total) for f, n in own.most_common(top)],
                          [(f, n / total) for f, n in inclusive.most_common(top * 6) if not _is_plumbing(f)][:top])


def _short(frame: str) -> tuple[str, str]:
    """A frame as ``function (path)`` with the path cut after site-packages or the source root, and its package."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/services/ingest/", "/services/rules/", "/services/orchestrator/", "/services/connectors/",
                   "/src/", "/gen/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    package = path.split("/", 1)[0].removesuffix(".py")
    if package.startswith("<frozen"):
        package = package.strip("<>").split(" ", 1)[-1]
    return f"{match.group('func')} ({path})", package


def _is_plumbing(frame: str) -> bool:
    """Frames every sample passes through (the event loop, runners, thread starts): they say nothing about where time goes."""
    return any(s in frame for s in ("asyncio/", "runpy", "overture_cli/", "threading.py", "<module>"))


@contextlib.asynccontextmanager
async def running(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """*argv* as a child process for the duration of the block, its output in *log*; terminated after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - starting is quick
        try:
            yield proc
        finally:
            await stop_process(proc, grace=15)
