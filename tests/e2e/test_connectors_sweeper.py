"""A connectors process killed mid-send (kill -9, while the SMS provider holds the messages unanswered) leaves its claims
SENDING; the next connectors process's sweeper settles them through the provider's status lookup by reference, and
nothing is sent twice, neither by the sweeper nor by a repeat of the keys."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import connector_service_pb2_grpc, delivery_pb2
from overture_runtime.clients import wait_until_serving
from overture_runtime.testing import free_port
from tests.conftest import admin_metadata
from tests.integration.fake_sms_provider import ACCOUNT, TOKEN, FakeSmsProvider, fake_sms_provider
from tests.thinpath import eventually

from .processes import service_processes

pytestmark = pytest.mark.e2e
S = messaging_pb2
MD = admin_metadata()
KEYS = [f"run-{i}:text" for i in range(20)]


def _text(key: str, number: int) -> delivery_pb2.Message:
    return delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_SMS, subject_id=f"s-{number}", address=f"+1415555{number:04d}",
                                content=delivery_pb2.MessageContent(text_body="Your order shipped"),
                                category=S.MESSAGE_CATEGORY_TRANSACTIONAL)


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "overture_cli.main", "serve", "connectors"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def test_claims_cut_by_kill_9_are_settled_by_the_next_process_and_never_sent_twice(
        database_url: str, redis_namespace: str, tmp_path: Path) -> None:
    """20 texts taken by the provider and left unanswered when the process is killed stay SENDING; the next process's sweeper
    finds each by its reference and settles it SENT; a repeat of the keys sends nothing; the provider holds 20 messages."""
    async with fake_sms_provider() as fake:
        fake.drop_reply = 1.0
        providers = [{"name": "sms-main", "kind": "sms_http", "settings": {
            "api_url": fake.api_url, "account_id": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006", "timeout_seconds": 60}}]
        extra = {"OVERTURE_CONNECTOR_PROVIDERS": json.dumps(providers), "OVERTURE_CONNECTOR_STALE_CLAIM_SECONDS": "1",
                 "OVERTURE_CONNECTOR_SWEEP_SECONDS": "0.2", "OVERTURE_CONNECTOR_CONCURRENCY": "32"}
        async with service_processes(database_url=database_url, redis_namespace=redis_namespace, smtp_port=free_port(),
                                     log_dir=tmp_path, extra_env=extra, services=()) as running:
            env, address = running.env, running["connectors"]
            first = _start(env, tmp_path / "connectors-1.log")
            assert await wait_until_serving(address), "the first connectors process did not start"
            async with grpc.aio.insecure_channel(address) as channel:
                stub = connector_service_pb2_grpc.ConnectorServiceStub(channel)
                call = asyncio.ensure_future(stub.SendBatch(C.SendBatchRequest(messages=[_text(k, i) for i, k in enumerate(KEYS)]),
                                                            metadata=MD))
                await eventually(lambda: _all_taken(fake), what="the provider to take every text")
                first.send_signal(signal.SIGKILL)
                await asyncio.to_thread(first.wait)
                with pytest.raises(grpc.aio.AioRpcError):
                    await call
            fake.drop_reply = 0.0
            second = _start(env, tmp_path / "connectors-2.log")
            try:
                assert await wait_until_serving(address), "the second connectors process did not start"
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = connector_service_pb2_grpc.ConnectorServiceStub(channel)
                    settled = await eventually(lambda: _statuses(stub), within=60, what="the sweeper to settle every claim")
                    repeat = await stub.SendBatch(C.SendBatchRequest(messages=[_text(k, i) for i, k in enumerate(KEYS)]), metadata=MD)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.to_thread(second.wait, 30)
    print(f"\nkill -9 mid-send: claims=20 taken_by_provider={fake.sends} settled_sent={sum(s == S.DELIVERY_STATUS_SENT for s in settled)} "
          f"resent=0 duplicates={fake.sends - 20}")
    assert settled == [S.DELIVERY_STATUS_SENT] * 20
    assert all(r.duplicate and r.delivery.status == S.DELIVERY_STATUS_SENT for r in repeat.results)
    assert fake.sends == 20 and len({m["client_ref"] for m in fake.messages.values()}) == 20


async def _all_taken(fake: FakeSmsProvider) -> bool:
    return len(fake.dropped) == len(KEYS)


async def _statuses(stub: connector_service_pb2_grpc.ConnectorServiceStub) -> list[int] | None:
    found = [(await stub.GetDeliveryStatus(C.GetDeliveryStatusRequest(idempotency_key=k), metadata=MD)).delivery.status for k in KEYS]
    return found if all(s != S.DELIVERY_STATUS_SENDING for s in found) else None
