"""`overture dev` on a machine with nothing configured: embedded SQLite,
embedded Redis protocol server and the local mail sink, driven by the CLI
exactly as the README's tour does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from overture_runtime.config import SERVICES
from overture_runtime.testing import free_port
from tests.thinpath import EXAMPLES, eventually

pytestmark = pytest.mark.e2e
TOKEN = "ovt_dev_smoke_test_token"


def _cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "overture_cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"overture {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def test_overture_dev_runs_the_tour_on_embedded_defaults(tmp_path: Path) -> None:
    """The tour works against `overture dev` with no database, Redis or SMTP configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["OVERTURE_DEV_TOKEN"] = TOKEN
    env["OVERTURE_INGEST_HTTP_PORT"] = str(free_port())
    for svc in SERVICES:
        env[f"OVERTURE_{svc.upper()}_GRPC_PORT"] = str(free_port())
        env[f"OVERTURE_{svc.upper()}_METRICS_PORT"] = str(free_port())
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen([sys.executable, "-m", "overture_cli.main", "dev"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        dev_file = tmp_path / ".overture" / "dev.json"

        async def ready() -> bool:
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()
            return dev_file.exists()

        await eventually(ready, within=90, what="overture dev to be ready")
        assert json.loads(dev_file.read_text())["token"] == TOKEN
        cli_env = {k: v for k, v in env.items() if not k.endswith("_PORT")}
        run = lambda *args: _cli(tmp_path, cli_env, *args)  # noqa: E731
        assert "version 1 is active" in run("rules", "publish", str(EXAMPLES / "marketing-email.yaml"))
        assert "published version 1" in run("journeys", "publish", str(EXAMPLES / "welcome-journey.yaml"))
        run("events", "send", "--type", "identify", "--subject", "alice", "--attr", 'traits={"email": "alice@example.com", "first_name": "Alice"}')
        run("events", "send", "--type", "consent.granted", "--subject", "alice", "--attr", "channel=email", "--attr", "purpose=marketing")
        run("events", "send", "--type", "identify", "--subject", "bob", "--attr", 'traits={"email": "bob@example.com"}')
        assert "accepted" in run("events", "send", "--type", "user.signed_up", "--subject", "alice", "--id", "signup-alice")
        assert "duplicate" in run("events", "send", "--type", "user.signed_up", "--subject", "alice", "--id", "signup-alice")
        run("events", "send", "--type", "user.signed_up", "--subject", "bob", "--id", "signup-bob")

        mail_dir = tmp_path / ".overture" / "mail"

        async def mail() -> list[Path]:
            return sorted(mail_dir.glob("*.eml")) if mail_dir.exists() else []

        (email,) = await eventually(mail, what="the welcome email in .overture/mail")

        async def bob_done() -> str:
            out = run("runs", "list", "--subject", "bob")
            return out if "skipped" in out else ""

        runs = await eventually(bob_done, what="bob's run")
        decision_id = runs.split("decision ")[1].split(")")[0].split(",")[0]
        explained = run("explain", decision_id)
        assert "DENIED" in explained and "consent" in explained
        assert "To: alice@example.com" in email.read_text()
        await asyncio.sleep(0.5)
        assert len(await mail()) == 1
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(dev.wait, 30)
        finally:
            if dev.poll() is None:
                dev.kill()
            log.close()
    assert code == 0, (tmp_path / "dev.log").read_text()[-3000:]
