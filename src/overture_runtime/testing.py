"""Test helpers for Overture and for those who build on it.

:func:`temporary_database` creates and drops a scratch PostgreSQL database;
:func:`serving` runs a service app in-process on a free port;
:func:`service_processes` runs services as separate processes, as they deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .app import BaseApp
from .clients import wait_until_serving
from .config import SERVICES, Settings
from .server import Server

__all__ = ["Processes", "free_port", "service_processes", "serving", "temporary_database"]


_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768-60999), so no outgoing connection's
local port can take a port handed out here before its server binds it."""
_BLOCK = 1500
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that no other caller of
    this function will be given: never twice in this process, and from a
    block of its own for each pytest-xdist worker (``PYTEST_XDIST_WORKER``,
    ``gw0``, ``gw1`` ...), so that parallel tests cannot pick each other's
    ports between choosing one and binding it. Outside the kernel's
    ephemeral range, so an outgoing connection cannot take it either."""
    import random

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None
    if index is None:
        block = _PORTS
    else:
        start = _PORTS.start + (index * _BLOCK) % (len(_PORTS) - _BLOCK)
        block = range(start, start + _BLOCK)
    for _ in range(200):
        port = random.choice(block)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")


@contextlib.asynccontextmanager
async def temporary_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create a fresh PostgreSQL database; yield its SQLAlchemy async URL; drop it after.

    *admin_dsn* is a libpq URL of a role that may create databases, for example
    ``postgresql://postgres@127.0.0.1:5432/postgres``.
    """
    name = f"ovt_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def serving(app: BaseApp, settings: Settings, *, port: int = 0) -> AsyncIterator[str]:
    """Run *app* in this process on *port* (a free one by default); yield its address."""
    server = Server(app, settings, port=port, metrics_port=0)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1)


@dataclass(frozen=True)
class Processes:
    """Service processes' addresses and ports."""

    addresses: dict[str, str]
    """gRPC address per service."""
    metrics_ports: dict[str, int]
    """Prometheus port per service."""
    http_port: int
    """The ingest HTTP port."""
    exit_codes: dict[str, int | None]
    """Filled when the processes have stopped."""
    env: dict[str, str]
    """The environment the processes run with."""

    def __getitem__(self, service: str) -> str:
        return self.addresses[service]


@contextlib.asynccontextmanager
async def service_processes(
    *, env: Mapping[str, str], log_dir: Path, services: Sequence[str] = SERVICES,
) -> AsyncIterator[Processes]:
    """Run ``overture serve <svc>`` for each of *services* on free ports, with
    *env* on top of a clean environment; wait until all are SERVING; on exit
    send SIGTERM and wait for the drain (exit codes land in ``exit_codes``)."""
    ports = {svc: free_port() for svc in SERVICES}
    running = Processes(
        addresses={svc: f"127.0.0.1:{port}" for svc, port in ports.items()},
        metrics_ports={svc: free_port() for svc in SERVICES}, http_port=free_port(), exit_codes={}, env={},
    )
    child = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    child.update(OVERTURE_INGEST_HTTP_PORT=str(running.http_port), OVERTURE_SHUTDOWN_GRACE_SECONDS="2")
    for svc in SERVICES:
        child[f"OVERTURE_{svc.upper()}_GRPC_PORT"] = str(ports[svc])
        child[f"OVERTURE_{svc.upper()}_ADDRESS"] = running.addresses[svc]
        child[f"OVERTURE_{svc.upper()}_METRICS_PORT"] = str(running.metrics_ports[svc])
    child.update(env)
    running.env.update(child)
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test helper, before anything runs
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as logs:
        try:
            for name in services:
                log = logs.enter_context((log_dir / f"{name}.log").open("wb"))
                processes[name] = subprocess.Popen(  # noqa: ASYNC220 - starting is quick; waiting is awaited below
                    [sys.executable, "-m", "overture_cli.main", "serve", name], env=child, stdout=log, stderr=subprocess.STDOUT)
            ready = await asyncio.gather(*(wait_until_serving(running.addresses[s]) for s in services))
            if not all(ready):
                raise RuntimeError(f"services did not become healthy; see the logs in {log_dir}")
            yield running
        finally:
            for proc in processes.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in processes.items():
                try:
                    running.exit_codes[name] = await asyncio.to_thread(proc.wait, 20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    running.exit_codes[name] = None
