"""``overture serve <service>``: run one service, in this process or in
``OVERTURE_WORKERS`` worker processes that share its ports.

With more than one worker this process only supervises: it starts each
worker (a fresh interpreter, given these settings and its index), forwards
SIGTERM and SIGINT to them so that each drains gracefully, and if a worker
dies on its own it stops the others and exits with that worker's code, so
that whatever restarts the service restarts all of it. A worker whose
supervisor disappears (``kill -9``) stops itself. Each worker binds the same
gRPC (and HTTP) port with SO_REUSEPORT, and the kernel spreads connections
among them.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from multiprocessing.connection import wait
from typing import Any

from overture_runtime import Settings, load_settings, serve
from overture_runtime.config import ServiceName
from overture_runtime.logging import configure_logging
from overture_runtime.telemetry import configure_tracing

__all__ = ["app_class", "run", "run_console"]

_APPS = {
    "ingest": "overture_ingest:IngestApp",
    "rules": "overture_rules:RulesApp",
    "orchestrator": "overture_orchestrator:OrchestratorApp",
    "connectors": "overture_connectors:ConnectorsApp",
}


def app_class(service: ServiceName) -> type:
    """The app class of *service*, imported on demand."""
    module, _, name = _APPS[service].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def run(service: ServiceName, settings: Settings | None = None) -> None:
    """Run *service* until SIGTERM or SIGINT."""
    settings = settings or load_settings()
    if settings.workers > 1 and settings.worker_index is None:
        code = _supervise(service, settings)
        if code:
            sys.exit(code)
        return
    _serve_here(service, settings)


def _serve_here(service: ServiceName, settings: Settings) -> None:
    configure_logging(level=settings.log_level, fmt=settings.log_format, service=service)
    configure_tracing(service=service, exporter=settings.otel_exporter)
    app = app_class(service)(settings)
    _run_loop(serve(app, settings), settings.event_loop)


def run_console() -> None:
    """Run the console (``overture serve console``) until SIGTERM or SIGINT."""
    from overture_console.app import ConsoleSettings
    from overture_console.app import serve as serve_console

    settings = load_settings(ConsoleSettings)
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="console")
    _run_loop(serve_console(settings), settings.event_loop)


def _run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run *main* on the chosen event loop (uvloop when it is installed and chosen)."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a pinned dependency
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


def _worker(service: ServiceName, settings: Settings, supervisor: int) -> None:
    """One worker: serve, and stop (gracefully) if the supervisor is gone."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    _serve_here(service, settings)


def _supervise(service: ServiceName, settings: Settings) -> int:
    """Start the workers and wait for them; returns the exit code."""
    configure_logging(level=settings.log_level, fmt=settings.log_format, service=service)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing of gRPC crosses a fork
    workers = [
        context.Process(target=_worker, args=(service, settings.model_copy(update={"worker_index": i}), os.getpid()),
                        name=f"overture-{service}-{i}")
        for i in range(settings.workers)
    ]
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        code = 0
        running = list(workers)
        while running:
            for sentinel in wait([w.sentinel for w in running]):
                done = next(w for w in running if w.sentinel == sentinel)
                running.remove(done)
                done.join()
                if done.exitcode and not stopping.is_set():
                    # A worker died on its own: stop the rest, and report it.
                    code = done.exitcode if done.exitcode > 0 else 128 - done.exitcode
                    stop(signal.SIGTERM, None)
                elif done.exitcode and not code:
                    code = done.exitcode if done.exitcode > 0 else 128 - done.exitcode
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
