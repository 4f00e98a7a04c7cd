"""`overture dev` on a machine with nothing configured: embedded SQLite,
embedded Redis protocol server and the local mail sink, driven by the CLI
exactly as the README's tour and rule-set section show it (the commands are
read from README.md, so the README cannot drift from what works)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import (
    connector_service_pb2,
    connector_service_pb2_grpc,
    delivery_pb2,
    inbox_service_pb2,
    inbox_service_pb2_grpc,
    push_service_pb2,
    push_service_pb2_grpc,
)
from overture_runtime.config import SERVICES
from overture_runtime.testing import free_port
from tests.thinpath import EXAMPLES, eventually

pytestmark = pytest.mark.e2e
TOKEN = "ovt_dev_smoke_test_token"
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands(section: str) -> list[list[str]]:
    """The `bin/overture` commands in the sh blocks of the README section *section*, in order, as argument lists (without `dev`)."""
    body = README.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["bin/overture"] and words[1:2] != ["dev"]:
                commands.append(words[1:])
    return commands


def _environment() -> dict[str, str]:
    """The environment of a machine with nothing configured, on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERTURE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["OVERTURE_INGEST_HTTP_PORT"] = str(free_port())
    for svc in SERVICES:
        env[f"OVERTURE_{svc.upper()}_GRPC_PORT"] = str(free_port())
        env[f"OVERTURE_{svc.upper()}_METRICS_PORT"] = str(free_port())
    return env


class Cli:
    """Runs `overture` as the README's `bin/overture`, in the folder `overture dev` runs in."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = {k: v for k, v in env.items() if not k.endswith("_PORT")}  # the addresses come from .overture/dev.json

    def __call__(self, *args: str) -> str:
        """Run `overture *args`; its stdout. Fails the test when the command fails."""
        done = subprocess.run([sys.executable, "-m", "overture_cli.main", *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"overture {shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout


@contextlib.asynccontextmanager
async def overture_dev(folder: Path, env: dict[str, str], *, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`overture dev` in *folder* until it says it is ready; stopped with Ctrl-C (SIGINT) after, which must exit 0."""
    with log.open("wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "overture_cli.main", "dev"], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            async def ready() -> bool:
                assert dev.poll() is None, log.read_text()
                return "overture  ready." in log.read_text()

            await eventually(ready, within=90, what="overture dev to be ready")
            yield dev
        finally:
            dev.send_signal(signal.SIGINT)
            try:
                code = await asyncio.to_thread(dev.wait, 30)
            finally:
                if dev.poll() is None:
                    dev.kill()
    assert code == 0, log.read_text()[-3000:]


async def test_overture_dev_runs_the_readme_on_embedded_defaults(tmp_path: Path) -> None:
    """The README's five-minute tour, then its rule-set commands, work as written against `overture dev` with nothing configured."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")  # the README runs from the repository root: examples/ is beside .overture/
    env = _environment()
    env["OVERTURE_DEV_TOKEN"] = TOKEN
    run = Cli(tmp_path, env)
    tour = readme_commands("A five-minute tour")
    first_look = next(i for i, c in enumerate(tour) if c[0] in ("runs", "explain"))
    async with overture_dev(tmp_path, env, log=tmp_path / "dev.log"):
        assert json.loads((tmp_path / ".overture" / "dev.json").read_text())["token"] == TOKEN
        said = {shlex.join(c): [] for c in tour}
        for command in tour[:first_look]:
            said[shlex.join(command)].append(run(*command))
        assert "4 passed" in said["rules test examples/marketing-email.yaml"][0]
        assert re.search(r"version: +1\n(.*\n)*active: +yes", said["rules publish examples/marketing-email.yaml"][0])
        assert re.search(r"version: +1\n(.*\n)*status: +published", said["journeys publish examples/welcome-journey.yaml"][0])
        signups = said["events send --type user.signed_up --subject alice --id signup-alice --attr plan=pro"]
        assert [re.search(r"status: +(\w+)", out).group(1) for out in signups] == ["accepted", "duplicate"]  # type: ignore[union-attr]

        mail_dir = tmp_path / ".overture" / "mail"

        async def mail() -> list[Path]:
            return sorted(mail_dir.glob("*.eml")) if mail_dir.exists() else []

        (email,) = await eventually(mail, what="the welcome email in .overture/mail")

        async def both_done() -> str:
            out = run("runs", "list")
            return out if "skipped" in out and "sent" in out else ""

        await eventually(both_done, what="alice's and bob's runs")
        for command in tour[first_look:]:
            said[shlex.join(command)].append(run(*command))
        assert re.search(r"alice +completed +send-welcome +completed +sent", said["runs list"][0])
        assert re.search(r"bob +completed +send-welcome +skipped +denied by consent", said["runs list"][0])
        explained = said["explain --subject bob"][0]
        assert re.search(r"verdict: +DENIED", explained) and re.search(r"deny +consent +email/marketing", explained)
        assert re.search(r"state: +published", said["events get signup-alice"][0])
        assert re.search(r"\* +1 ", said["rules versions marketing-email"][0])
        assert re.search(r"audit chain: +verified", said["audit verify"][0])
        assert "To: alice@example.com" in email.read_text()

        await _in_app_and_push_are_configured(json.loads((tmp_path / ".overture" / "dev.json").read_text())["addresses"]["connectors"])

        rule_sets = readme_commands("Rule sets, decisions and the audit trail")
        outputs = [run(*command) for command in rule_sets]
        published, diffed, backtested, activated, verified, why = outputs
        assert re.search(r"version: +2\n(.*\n)*active: +no", published)
        assert "rules[id=not-churned].expression" in diffed and "frequency_caps" in diffed
        replayed = re.search(r"replayed: +(\d+) decisions", backtested)
        assert replayed and int(replayed.group(1)) >= 2, backtested  # the tour's decisions, alice's and bob's, are in the window
        assert re.search(r"active: +version 2", activated) and re.search(r"previous: +1", activated)
        assert re.search(r"audit chain: +verified", verified)
        assert re.search(r"verdict: +DENIED", why)
        versions = json.loads(run("--json", "rules", "versions", "marketing-email"))["rule_set_versions"]
        assert {(v["version"], v["active"]) for v in versions} == {("1", False), ("2", True)}
        await asyncio.sleep(0.5)
        assert len(await mail()) == 1


async def _in_app_and_push_are_configured(address: str) -> None:
    """The README's inbox section as written: a message on channel in_app lands in the subject's inbox; and web push has
    its VAPID key (GetPushConfig) without any configuration."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        sent = await connector_service_pb2_grpc.ConnectorServiceStub(channel).Send(connector_service_pb2.SendRequest(message=delivery_pb2.Message(
            idempotency_key="dev-smoke:bell", channel=messaging_pb2.CHANNEL_IN_APP, subject_id="alice", address="alice",
            content=delivery_pb2.MessageContent(subject="Welcome", text_body="Hello from the inbox"))), metadata=metadata)
        listed = await inbox_service_pb2_grpc.InboxServiceStub(channel).ListInboxMessages(
            inbox_service_pb2.ListInboxMessagesRequest(subject_id="alice"), metadata=metadata)
        config = await push_service_pb2_grpc.PushServiceStub(channel).GetPushConfig(push_service_pb2.GetPushConfigRequest(), metadata=metadata)
    assert sent.delivery.status == messaging_pb2.DELIVERY_STATUS_SENT and sent.delivery.connector == "in-app"
    assert [(m.title, m.body) for m in listed.messages] == [("Welcome", "Hello from the inbox")]
    assert len(config.application_server_key) == 87 and "fcm.googleapis.com" in config.endpoint_hosts


async def test_overture_dev_keeps_its_token_across_restarts(tmp_path: Path) -> None:
    """Without OVERTURE_DEV_TOKEN, a restarted `overture dev` keeps the token saved in .overture/dev.json, and it still works."""
    env = _environment()
    run = Cli(tmp_path, env)
    dev_file = tmp_path / ".overture" / "dev.json"
    async with overture_dev(tmp_path, env, log=tmp_path / "first.log"):
        token = json.loads(dev_file.read_text())["token"]
        assert token.startswith("ovt_dev_")
        run("audit", "verify")
    async with overture_dev(tmp_path, _environment(), log=tmp_path / "second.log"):
        assert json.loads(dev_file.read_text())["token"] == token
        assert token in (tmp_path / "second.log").read_text()
        run("audit", "verify")
