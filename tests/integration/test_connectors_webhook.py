"""The webhook connector against a real HTTP server: Standard Webhooks signatures verified by the
``standardwebhooks`` library with rotated secrets, and every failure class (429 with Retry-After,
5xx, 504, no answer, 4xx, connection refused) leading to the right delivery outcome, never a repeat."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable

import standardwebhooks
from google.protobuf import struct_pb2

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_runtime.config import Settings
from overture_runtime.testing import free_port
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service
from .http_receiver import http_receiver

S = messaging_pb2
AUTH = admin_metadata()
OLD, NEW = ("whsec_" + base64.b64encode(seed * 24).decode() for seed in (b"o", b"n"))


def hook(key: str) -> delivery_pb2.Message:
    """A webhook message with idempotency key *key*."""
    data = struct_pb2.Struct()
    data.update({"order_id": key, "total": 42})
    return delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_WEBHOOK, subject_id=f"s-{key}", address="crm",
                                content=delivery_pb2.MessageContent(data=data), metadata={"event_type": "order.shipped"},
                                category=S.MESSAGE_CATEGORY_TRANSACTIONAL)


def providers(url: str, *secrets: str, timeout: float = 10.0) -> str:
    """One webhook provider posting to *url*, signing with *secrets*."""
    return json.dumps([{"name": "crm-hooks", "kind": "webhook", "breaker": {"failure_threshold": 1000},
                        "settings": {"url": url, "secrets": list(secrets), "timeout_seconds": timeout}}])


async def test_each_signature_of_a_rotated_secret_verifies_with_the_standard_webhooks_library(make_settings: Callable[..., Settings]) -> None:
    """A request signed with two secrets (rotation) verifies with the standardwebhooks library under either secret, carries a
    webhook-id stable for the key, and the payload is {type, timestamp, data}."""
    async with http_receiver() as receiver:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=providers(receiver.url, OLD, NEW)) as service:
                sent = (await service.stub.Send(C.SendRequest(message=hook("run-1:notify")), metadata=AUTH)).delivery
    (request,) = receiver.requests
    for secret in (OLD, NEW):
        payload = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "order.shipped"
        assert payload["data"]["order_id"] == "run-1:notify" and payload["data"]["total"] == 42
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert sent.status == S.DELIVERY_STATUS_SENT and sent.provider_message_id == request.headers["webhook-id"]
    wrong = standardwebhooks.Webhook("whsec_" + base64.b64encode(b"x" * 24).decode())
    try:
        wrong.verify(request.body, request.headers)
    except standardwebhooks.WebhookVerificationError:
        pass
    else:
        raise AssertionError("a signature verified under a secret that did not make it")


async def test_failures_are_classified_by_whether_the_endpoint_can_have_acted(make_settings: Callable[..., Settings]) -> None:
    """429 with Retry-After and 503 are retryable (the delay honoured); 504 and a request left unanswered are IN_DOUBT and not resent;
    400 fails for good; sending every key again posts only the retryable ones, with the same webhook-id."""
    async with http_receiver() as receiver:
        receiver.answers.update({"k-429:s": (429, {"retry-after": "7"}), "k-503:s": (503, {}), "k-504:s": (504, {}),
                                 "k-400:s": (400, {})})
        receiver.stall.add("k-slow:s")
        keys = ["k-ok:s", "k-429:s", "k-503:s", "k-504:s", "k-400:s", "k-slow:s"]
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=providers(receiver.url, NEW, timeout=0.5)) as service:
                first = await service.stub.SendBatch(C.SendBatchRequest(messages=[hook(k) for k in keys]), metadata=AUTH)
                receiver.answers.clear()
                receiver.stall.clear()
                again = await service.stub.SendBatch(C.SendBatchRequest(messages=[hook(k) for k in keys]), metadata=AUTH)
    outcome = {r.delivery.idempotency_key: (r.delivery.status, r.error.reason) for r in first.results}
    assert outcome == {
        "k-ok:s": (S.DELIVERY_STATUS_SENT, ""), "k-429:s": (S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE"),
        "k-503:s": (S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE"), "k-504:s": (S.DELIVERY_STATUS_IN_DOUBT, ""),
        "k-400:s": (S.DELIVERY_STATUS_FAILED, ""), "k-slow:s": (S.DELIVERY_STATUS_IN_DOUBT, ""),
    }
    assert first.results[1].error.retry_delay.ToTimedelta() == dt.timedelta(seconds=7)
    posted = Counter(r.key for r in receiver.requests)
    assert posted == Counter({"k-ok:s": 1, "k-429:s": 2, "k-503:s": 2, "k-504:s": 1, "k-400:s": 1, "k-slow:s": 1})
    ids = {r.headers["webhook-id"] for r in receiver.requests if r.key == "k-429:s"}
    assert len(ids) == 1
    assert {r.delivery.idempotency_key: r.delivery.status for r in again.results}["k-429:s"] == S.DELIVERY_STATUS_SENT


async def test_an_endpoint_that_refuses_connections_fails_retryably(make_settings: Callable[..., Settings]) -> None:
    """Nothing listening: the send is FAILED and retryable (UNAVAILABLE), since no request reached anyone."""
    with CountingSink() as sink:
        url = f"http://127.0.0.1:{free_port()}/hooks"
        async with connectors_service(make_settings, sink, connector_providers=providers(url, NEW)) as service:
            response = await service.stub.SendBatch(C.SendBatchRequest(messages=[hook("k:s")]), metadata=AUTH)
    (result,) = response.results
    assert (result.delivery.status, result.error.reason) == (S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE")
