"""Benchmark of the connectors service.

    .venv/bin/python bench/connectors.py [--emails 3000] [--hooks 3000] [--batch 100] [--callers 4]

1. Emails per second through ``ConnectorService.SendBatch`` (batches of
   ``--batch``, ``--callers`` calls at once) and the SMTP connector's pool of
   open sessions, to an aiosmtpd sink in its own process; beside raw
   aiosmtplib sending the same messages one after another on one reused
   connection to the same sink, in the same run.
2. Webhook sends per second (Standard Webhooks, signed) through
   ``SendBatch`` to a bare HTTP sink in its own process; beside raw httpx
   posting the same bodies on one ``AsyncClient`` with the service's
   concurrency (``OVERTURE_CONNECTOR_CONCURRENCY``), in the same run.

Each prints the ratio (service / raw) and the work per CPU-second of the
connectors process (user + system from ``/proc/<pid>/stat``), beside the raw
client's work per CPU-second of this process. Every message is counted at
its sink by its key: duplicates and missing must both be 0. The service
runs as its own process against the local PostgreSQL and Redis; each
delivery is claimed and recorded there, which the raw clients skip.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import grpc
import httpx
import orjson
from baselines.harness import Sink, free_port, stop_process  # type: ignore[import-not-found]
from common import METADATA, CpuMeter, cpu_seconds, service_pid, services, show  # type: ignore[import-not-found]

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc, delivery_pb2

HERE = Path(__file__).resolve().parent
SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-32-bytes!!!").decode()
S = messaging_pb2


class HttpSink:
    """The HTTP sink process (``baselines/http_sink.py``) and the keys it recorded."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "http-sink.txt"
        self.port = 0
        self.keys: Counter[str] = Counter()
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    async def start(self) -> None:
        self.port = free_port()
        self._proc = subprocess.Popen([sys.executable, str(HERE / "baselines" / "http_sink.py"), "--port", str(self.port),  # noqa: ASYNC220
                                       "--out", str(self.path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._proc.stdout.readline), 20)
        if not line.startswith(b"serving"):
            raise RuntimeError(f"the HTTP sink did not start: {line!r}")

    async def stop(self) -> None:
        if self._proc is not None:
            await stop_process(self._proc, grace=5)

    async def settle(self, expected: int, *, within: float = 30.0) -> int:
        """Read the keys written so far, waiting up to *within* seconds for *expected* requests; the count read."""
        deadline = time.monotonic() + within
        while True:
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                complete = data[:data.rfind(b"\n") + 1]
                self._offset += len(complete)
                self.keys.update(line.decode() for line in complete.splitlines())
            if sum(self.keys.values()) >= expected or time.monotonic() > deadline:
                return sum(self.keys.values())
            await asyncio.sleep(0.1)


def _email(key: str) -> delivery_pb2.Message:
    return delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_EMAIL, subject_id=f"s-{key}", address=f"{key.replace(':', '-')}@example.com",
                                content=delivery_pb2.MessageContent(subject="Your receipt", text_body=f"Thanks for your order {key}.\n"),
                                category=S.MESSAGE_CATEGORY_TRANSACTIONAL, connector="smtp")


def _hook(key: str) -> delivery_pb2.Message:
    message = delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_WEBHOOK, subject_id=f"s-{key}", address="crm", connector="hooks",
                                   category=S.MESSAGE_CATEGORY_TRANSACTIONAL)
    message.content.data.update({"order_id": key, "total": 42.5, "currency": "EUR"})
    return message


async def _through_service(stub: connector_service_pb2_grpc.ConnectorServiceStub, messages: list[delivery_pb2.Message], *, batch: int,
                           callers: int, cpu: CpuMeter) -> tuple[float, Counter[int]]:
    """Send *messages* through SendBatch; the seconds it took and the statuses."""
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    statuses: Counter[int] = Counter()

    async def caller(mine: list[list[delivery_pb2.Message]]) -> None:
        for chunk in mine:
            answer = await stub.SendBatch(connector_service_pb2.SendBatchRequest(messages=chunk), metadata=METADATA, timeout=120)
            statuses.update(r.delivery.status for r in answer.results)

    with cpu.measure():
        started = time.perf_counter()
        await asyncio.gather(*(caller(batches[i::callers]) for i in range(callers)))
        elapsed = time.perf_counter() - started
    return elapsed, statuses


async def _raw_smtp(port: int, count: int) -> tuple[float, float]:
    """Raw aiosmtplib: *count* messages on one reused connection; the seconds and this process's CPU seconds."""
    messages = []
    for i in range(count):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "Overture <no-reply@overture.local>", f"raw-{i}@example.com", "Your receipt"
        message["X-Idempotency-Key"] = f"raw-{i}:send"
        message.set_content(f"Thanks for your order raw-{i}.\n")
        messages.append(message)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await smtp.connect()
    cpu_before = cpu_seconds([os.getpid()])
    started = time.perf_counter()
    for message in messages:
        await smtp.send_message(message)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds([os.getpid()]) - cpu_before
    await smtp.quit()
    return elapsed, cpu


async def _raw_httpx(url: str, count: int, concurrency: int) -> tuple[float, float]:
    """Raw httpx: *count* JSON posts on one client, *concurrency* at once; the seconds and this process's CPU seconds."""
    bodies = [orjson.dumps({"type": "overture.message", "data": {"order_id": f"raw-{i}", "total": 42.5, "currency": "EUR"}})
              for i in range(count)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        queue = iter(range(count))

        async def worker() -> None:
            for i in queue:
                response = await client.post(url, content=bodies[i], headers={"content-type": "application/json",
                                                                               "x-idempotency-key": f"raw-{i}"})
                response.raise_for_status()

        cpu_before = cpu_seconds([os.getpid()])
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds([os.getpid()]) - cpu_before
    return elapsed, cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--hooks", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16, help="OVERTURE_CONNECTOR_CONCURRENCY and OVERTURE_SMTP_POOL_SIZE")
    args = parser.parse_args()
    summary = []
    with tempfile.TemporaryDirectory() as folder:
        smtp_sink, http_sink = Sink(Path(folder)), HttpSink(Path(folder))
        await smtp_sink.start()
        await http_sink.start()
        try:
            providers = [{"name": "smtp", "kind": "smtp", "breaker": {"failure_threshold": 10_000}},
                         {"name": "hooks", "kind": "webhook", "breaker": {"failure_threshold": 10_000},
                          "settings": {"url": f"http://127.0.0.1:{http_sink.port}/hooks", "secrets": [SECRET]}}]
            async with services(["connectors"], log_dir=Path(folder), OVERTURE_SMTP_HOST="127.0.0.1", OVERTURE_SMTP_PORT=str(smtp_sink.port),
                                OVERTURE_CONNECTOR_PROVIDERS=json.dumps(providers), OVERTURE_CONNECTOR_CONCURRENCY=str(args.concurrency),
                                OVERTURE_SMTP_POOL_SIZE=str(args.concurrency), OVERTURE_RULES_ADDRESS="127.0.0.1:1",
                                OVERTURE_ORCHESTRATOR_ADDRESS="127.0.0.1:1") as running:
                cpu = CpuMeter(service_pid("connectors"))
                async with grpc.aio.insecure_channel(running["connectors"]) as channel:
                    stub = connector_service_pb2_grpc.ConnectorServiceStub(channel)
                    await stub.SendBatch(connector_service_pb2.SendBatchRequest(messages=[_email("warm:email"), _hook("warm:hook")]),
                                         metadata=METADATA)
                    emails = [_email(f"run-{i}:send") for i in range(args.emails)]
                    seconds, statuses = await _through_service(stub, emails, batch=args.batch, callers=args.callers, cpu=cpu)
                    raw_seconds, raw_cpu = await _raw_smtp(smtp_sink.port, args.emails)
                    await smtp_sink.wait_for([], deadline=time.monotonic() + 1)
                    await asyncio.sleep(0.5)
                    smtp_sink.poll()
                    ours = {k for k in smtp_sink.keys if k.startswith("run-")}
                    rate, raw_rate = args.emails / seconds, args.emails / raw_seconds
                    show(f"emails: SendBatch of {args.batch}, {args.callers} callers, pooled SMTP ({args.concurrency} sessions)", {
                        "emails/s": rate, "raw aiosmtplib emails/s": raw_rate, "ratio (service / raw)": rate / raw_rate,
                        "per service CPU-second": cpu.per_cpu_second(args.emails),
                        "raw, per client CPU-second": args.emails / raw_cpu if raw_cpu else 0.0,
                        "sent": statuses[S.DELIVERY_STATUS_SENT],
                        "duplicates": sum(n - 1 for k, n in smtp_sink.keys.items() if n > 1),
                        "missing": args.emails - len(ours),
                    })
                    summary.append(("emails/s", rate, raw_rate, cpu.per_cpu_second(args.emails)))

                    hooks = [_hook(f"run-{i}:hook") for i in range(args.hooks)]
                    seconds, statuses = await _through_service(stub, hooks, batch=args.batch, callers=args.callers, cpu=cpu)
                    service_cpu = cpu.seconds
                    raw_seconds, raw_cpu = await _raw_httpx(f"http://127.0.0.1:{http_sink.port}/hooks", args.hooks, args.concurrency)
                    await http_sink.settle(2 * args.hooks + 1)
                    rate, raw_rate = args.hooks / seconds, args.hooks / raw_seconds
                    signed = [k for k in http_sink.keys if k.startswith("msg_")]
                    show(f"webhooks: SendBatch of {args.batch}, {args.callers} callers, {args.concurrency} at once, signed", {
                        "sends/s": rate, "raw httpx sends/s": raw_rate, "ratio (service / raw)": rate / raw_rate,
                        "per service CPU-second": args.hooks / service_cpu if service_cpu else 0.0,
                        "raw, per client CPU-second": args.hooks / raw_cpu if raw_cpu else 0.0,
                        "sent": statuses[S.DELIVERY_STATUS_SENT],
                        "duplicates": sum(n - 1 for n in http_sink.keys.values() if n > 1),
                        "missing": args.hooks + 1 - len(signed),
                    })
                    summary.append(("webhook sends/s", rate, raw_rate, args.hooks / service_cpu if service_cpu else 0.0))
        finally:
            await smtp_sink.stop()
            await http_sink.stop()
    print("\nSummary")
    for name, rate, raw, per_cpu in summary:
        print(f"  {name:<18} {rate:8.0f} /s   raw {raw:8.0f} /s   ratio {rate / raw:5.2f}x   {per_cpu:8.0f} per service CPU-second")


if __name__ == "__main__":
    asyncio.run(main())
