"""``overture dev``: all four services and the web console as separate processes on one machine.

With no ``DATABASE_URL`` or ``REDIS_URL`` it runs on embedded defaults, the
way the Prefect and Temporal dev servers do: SQLite files (one per service)
under the data folder, and an in-process Redis-protocol server (fakeredis).
Unless SMTP settings are given it also runs a local mail sink and keeps
what arrives under ``<data>/mail``. Unless ``OVERTURE_CONNECTOR_PROVIDERS``
is set, it configures email, the in-app inbox and web push (a VAPID key kept
in ``dev.json``, like the link signing key). It prints the addresses and a
development token for tenant ``demo`` with every role (``OVERTURE_DEV_TOKEN``
when set, else the one kept from the last run), and writes them to
``<data>/dev.json`` (atomically) for the other commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overture_runtime.clients import wait_until_serving
from overture_runtime.config import SERVICES

from .mailsink import MailSink, _free_port

__all__ = ["dev_providers", "dev_signing_key", "dev_token", "dev_vapid_key", "run_dev", "write_dev_file"]

_COLORS = {"ingest": "36", "rules": "35", "orchestrator": "33", "connectors": "32", "console": "34"}
_INTERNAL_ROLES = [
    "rules.evaluate", "rules.read", "profiles.read", "profiles.write", "deliveries.send", "deliveries.report", "runs.read", "events.write",
    "audit.write",
]
_PORTS = {"ingest": 50051, "rules": 50052, "orchestrator": 50053, "connectors": 50054}


def _say(text: str) -> None:
    print(f"\033[1moverture\033[0m  {text}" if sys.stdout.isatty() else f"overture  {text}", flush=True)


class _FakeRedis:
    """fakeredis's TCP server in a daemon thread.

    Its request handler turns an error reply (NOGROUP, NOSCRIPT, WRONGTYPE)
    into an exception that closes the connection, so a client's first
    EVALSHA or XPENDING before its group exists failed with "Connection
    closed by server". Here error replies are answered as replies, as Redis
    does, and the connection stays open."""

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer
        from redis.exceptions import ResponseError

        self.port = _free_port()
        self._server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        base: Any = self._server.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def setup(self) -> None:
                super().setup()
                client = self.current_client
                if getattr(client, "_overture_replies_errors", False):
                    return
                read = client.read_response

                def read_response(*args: Any, **kwargs: Any) -> Any:
                    try:
                        return read(*args, **kwargs)
                    except ResponseError as error:  # an error reply, not a broken connection
                        return error

                client.read_response = read_response
                client._overture_replies_errors = True

        self._server.RequestHandlerClass = Handler
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fakeredis")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def dev_token(env: Mapping[str, str], dev_file: Path) -> str:
    """The development token: ``OVERTURE_DEV_TOKEN`` when set, else the one *dev_file* kept from the last run, else a new one.

    Keeping it means a restart does not log out the other terminals, scripts
    and SDK clients that were given it.
    """
    if env.get("OVERTURE_DEV_TOKEN"):
        return env["OVERTURE_DEV_TOKEN"]
    try:
        kept = json.loads(dev_file.read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        kept = None
    return kept if isinstance(kept, str) and kept else f"ovt_dev_{secrets.token_urlsafe(24)}"


def dev_signing_key(dev_file: Path) -> str:
    """The key that seals links in messages: the one *dev_file* kept from the last run, else a new one,
    so that links in mail saved by an earlier run (unsubscribe, tracking) keep working."""
    try:
        kept = json.loads(dev_file.read_text()).get("signing_key")
    except (OSError, ValueError, AttributeError):
        kept = None
    return kept if isinstance(kept, str) and len(kept) >= 16 else secrets.token_urlsafe(32)


def dev_vapid_key(dev_file: Path) -> str:
    """The web push VAPID private key: the one *dev_file* kept from the last run, else a new one, so that
    browsers subscribed in an earlier run (with its public key) keep getting messages."""
    try:
        kept = json.loads(dev_file.read_text()).get("vapid_private_key")
    except (OSError, ValueError, AttributeError):
        kept = None
    if isinstance(kept, str) and kept:
        return kept
    from overture_connectors.vapid import generate_private_key

    return generate_private_key()


def dev_providers(vapid_key: str) -> str:
    """``OVERTURE_CONNECTOR_PROVIDERS`` of ``overture dev`` (unless set): email over SMTP (the mail sink or
    ``OVERTURE_SMTP_*``), the in-app inbox, and web push with *vapid_key*, so every channel the README
    shows works as written."""
    return json.dumps([
        {"name": "smtp", "kind": "smtp"},
        {"name": "in-app", "kind": "in_app"},
        {"name": "web-push", "kind": "web_push", "settings": {"vapid_private_key": vapid_key, "subject": "mailto:dev@overture.local"}},
    ])


def write_dev_file(path: Path, data: Mapping[str, Any]) -> None:
    """Replace *path* with *data* as JSON, readable by its owner only, atomically.

    The content goes to a temporary file in the same folder, is flushed to
    disk, and is renamed over *path* (``os.replace``): a reader sees the old
    file or the new one, never an empty or half-written one.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


async def _wait_for_http(url: str, *, within: float) -> bool:
    """Poll *url* until it answers 200; False after *within* seconds."""
    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while loop.time() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


def _port(service: str, kind: str, default: int) -> int:
    return int(os.environ.get(f"OVERTURE_{service.upper()}_{kind}_PORT", default))


async def _pump(service: str, stream: asyncio.StreamReader) -> None:
    color = _COLORS.get(service, "0")
    tty = sys.stdout.isatty()
    label = f"\033[{color}m{service:<12}\033[0m" if tty else f"{service:<12}"
    while line := await stream.readline():
        sys.stdout.write(f"{label} {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _main(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
    env: dict[str, str] = dict(os.environ)
    host = env.get("OVERTURE_HOST", "127.0.0.1")
    embedded: list[Any] = []
    token = dev_token(env, data_dir / "dev.json")
    service_token = f"ovt_svc_{secrets.token_urlsafe(24)}"
    signing_key = env.get("OVERTURE_SIGNING_KEYS") or dev_signing_key(data_dir / "dev.json")
    vapid_key = dev_vapid_key(data_dir / "dev.json")
    env.setdefault("OVERTURE_CONNECTOR_PROVIDERS", dev_providers(vapid_key))
    env.setdefault("OVERTURE_PUBLIC_URL", f"http://{host}:{_port('ingest', 'HTTP', 8080)}")
    env.update(
        OVERTURE_SIGNING_KEYS=signing_key,
        OVERTURE_ENVIRONMENT="dev",
        OVERTURE_LOG_FORMAT=env.get("OVERTURE_LOG_FORMAT", "console"),
        OVERTURE_SERVICE_TOKEN=service_token,
        OVERTURE_AUTH_TOKENS=json.dumps([
            {"token": token, "tenant": "demo", "roles": ["*"], "principal": "dev"},
            {"token": service_token, "tenant": "*", "roles": _INTERNAL_ROLES, "principal": "svc:overture"},
        ]),
    )
    if not env.get("REDIS_URL") and not env.get("OVERTURE_REDIS_URL"):
        fake = _FakeRedis()
        fake.start()
        embedded.append(fake)
        env["REDIS_URL"] = f"redis://127.0.0.1:{fake.port}/0"
        _say(f"redis     embedded (fakeredis) on 127.0.0.1:{fake.port}")
    sink: MailSink | None = None
    if not env.get("OVERTURE_SMTP_HOST"):
        sink = MailSink(data_dir / "mail", announce=lambda text: _say(f"\033[1;32m{text}\033[0m" if sys.stdout.isatty() else text))
        sink.start()
        embedded.append(sink)
        env.update(OVERTURE_SMTP_HOST="127.0.0.1", OVERTURE_SMTP_PORT=str(sink.port))
        _say(f"mail      sink on 127.0.0.1:{sink.port}, messages saved under {sink.folder}/")
    shared_db = env.get("DATABASE_URL") or env.get("OVERTURE_DATABASE_URL")
    addresses = {svc: f"{host}:{_port(svc, 'GRPC', _PORTS[svc])}" for svc in SERVICES}
    for svc, address in addresses.items():
        env[f"OVERTURE_{svc.upper()}_ADDRESS"] = address
    processes: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    for svc in SERVICES:
        child = dict(env)
        child["DATABASE_URL"] = shared_db or f"sqlite+aiosqlite:///{(data_dir / 'data' / f'{svc}.db').resolve()}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "overture_cli.main", "serve", svc, env=child,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        processes[svc] = proc
        assert proc.stdout is not None
        pumps.append(asyncio.create_task(_pump(svc, proc.stdout)))
    console_port = int(os.environ.get("OVERTURE_CONSOLE_PORT", 8090))
    console_url = f"http://{host}:{console_port}"
    env.setdefault("OVERTURE_CONSOLE_JOURNEY_TEMPLATES", str(Path("examples").resolve()))  # noqa: ASYNC240 - once, at start-up
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "overture_cli.main", "serve", "console", env={**env, "OVERTURE_CONSOLE_PORT": str(console_port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    processes["console"] = proc
    assert proc.stdout is not None
    pumps.append(asyncio.create_task(_pump("console", proc.stdout)))
    _say("database  " + ("DATABASE_URL" if shared_db else f"SQLite under {data_dir / 'data'}/"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = await asyncio.gather(*(wait_until_serving(addresses[s], within=90) for s in SERVICES),
                                 _wait_for_http(f"{console_url}/healthz", within=90))
    code = 0
    if not all(ready):
        failed = [s for s, ok in zip((*SERVICES, "console"), ready, strict=True) if not ok]
        _say(f"services did not become healthy: {', '.join(failed)}")
        stop.set()
        code = 1
    else:
        http_port = _port("ingest", "HTTP", 8080)
        write_dev_file(data_dir / "dev.json", {"token": token, "addresses": addresses, "http": f"http://{host}:{http_port}",
                                               "console": console_url, "signing_key": signing_key, "vapid_private_key": vapid_key})
        _say("ready.")
        for svc in SERVICES:
            _say(f"  {svc:<13} grpc://{addresses[svc]}")
        _say(f"  {'ingest http':<13} http://{host}:{http_port}/automation/events")
        _say(f"  {'console':<13} {console_url}  (sign in with the token below)")
        _say(f"  tenant demo, token: {token}")
        _say(f"  (saved to {data_dir / 'dev.json'}; other `overture` commands in this folder use it)")

    async def watch(svc: str, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if not stop.is_set():
            _say(f"{svc} exited with code {proc.returncode}; stopping")
            stop.set()

    watchers = [asyncio.create_task(watch(s, p)) for s, p in processes.items()]
    await stop.wait()
    _say("stopping")
    for proc in processes.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes.values())), timeout=20)
    except TimeoutError:
        for proc in processes.values():
            if proc.returncode is None:
                proc.kill()
    for task in (*watchers, *pumps):
        task.cancel()
    for thing in embedded:
        thing.stop()
    if any(p.returncode not in (0, -signal.SIGTERM) for p in processes.values()) and code == 0:
        code = 1 if not stop.is_set() else 0
    return code


def run_dev(*, data_dir: str = ".overture") -> int:
    """Run ``overture dev`` until interrupted; returns the exit code."""
    return asyncio.run(_main(Path(data_dir)))
