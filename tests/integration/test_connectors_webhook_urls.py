"""Messages that carry their own URL (a journey's webhook step) against a real HTTP server: called only on hosts and
addresses the provider allows (no request at all otherwise), signed like any webhook, and the endpoint's answer kept on the
delivery when asked, returned again to every repeat of the key."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import standardwebhooks
from google.protobuf import struct_pb2

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_to_dict
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service
from .http_receiver import http_receiver
from .test_bad_input import _error

S = messaging_pb2
AUTH = admin_metadata()
SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
LOCAL = {"allowed_hosts": ["127.0.0.1"], "allowed_private_networks": ["127.0.0.1/32"]}


def call(key: str, url: str, *, connector: str = "journey-hooks", keep: bool = False, bare: bool = False) -> delivery_pb2.Message:
    """A webhook message with idempotency key *key* posted to *url*."""
    data = struct_pb2.Struct()
    data.update({"idempotency_key": key, "order_id": "o-1", "total": 42})
    return delivery_pb2.Message(
        idempotency_key=key, channel=S.CHANNEL_WEBHOOK, subject_id=f"s-{key}", address="crm", connector=connector,
        content=delivery_pb2.MessageContent(data=data), category=S.MESSAGE_CATEGORY_TRANSACTIONAL,
        webhook=delivery_pb2.WebhookOptions(url=url, keep_response=keep, data_as_body=bare))


def provider(name: str, **settings: Any) -> dict[str, Any]:
    """A webhook provider named *name* with *settings* (one signing secret)."""
    return {"name": name, "kind": "webhook", "breaker": {"failure_threshold": 1000}, "settings": {"secrets": [SECRET], **settings}}


def response_of(delivery: delivery_pb2.Delivery) -> dict[str, Any]:
    """The kept response of *delivery* as a dict."""
    return struct_to_dict(delivery.response)


async def test_a_message_url_on_an_allowed_host_is_called_signed_and_its_answer_kept(make_settings: Callable[..., Settings]) -> None:
    """A message URL on an allowed host is posted to (signed, verifiable), its JSON answer is kept on the delivery, and a
    repeat of the key and GetDeliveryStatus return the same answer without a second request; data_as_body posts the data alone."""
    async with http_receiver() as receiver:
        receiver.answers["r-1:hook"] = (201, {"content-type": "application/json"})
        receiver.bodies["r-1:hook"] = json.dumps({"id": 7, "tags": ["vip"], "nested": {"ok": True}}).encode()
        providers = json.dumps([provider("journey-hooks", **LOCAL)])
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=providers) as service:
                message = call("r-1:hook", receiver.url + "/orders?src=journey", keep=True)
                first = (await service.stub.Send(C.SendRequest(message=message), metadata=AUTH))
                again = (await service.stub.SendBatch(C.SendBatchRequest(messages=[message]), metadata=AUTH)).results[0]
                read = (await service.stub.GetDeliveryStatus(C.GetDeliveryStatusRequest(idempotency_key="r-1:hook"), metadata=AUTH))
                bare = (await service.stub.Send(C.SendRequest(message=call("r-2:hook", receiver.url + "/bare", bare=True)),
                                                metadata=AUTH)).delivery
    posted, bare_request = receiver.requests
    assert posted.path == "/hooks/orders"
    assert standardwebhooks.Webhook(SECRET).verify(posted.body, posted.headers)["data"]["order_id"] == "o-1"
    assert first.delivery.status == S.DELIVERY_STATUS_SENT
    assert response_of(first.delivery) == {"status": 201, "body": {"id": 7, "tags": ["vip"], "nested": {"ok": True}}}
    assert again.duplicate and again.delivery == first.delivery and read.delivery == first.delivery
    assert json.loads(bare_request.body) == {"idempotency_key": "r-2:hook", "order_id": "o-1", "total": 42}
    assert standardwebhooks.Webhook(SECRET).verify(bare_request.body, bare_request.headers)
    assert bare.status == S.DELIVERY_STATUS_SENT and not bare.HasField("response")


async def test_urls_the_provider_does_not_allow_fail_for_good_and_send_nothing(make_settings: Callable[..., Settings]) -> None:
    """A loopback address on an allowed host (by IP and by a name resolving to it) without allowed_private_networks, a host not on
    allowed_hosts, and any URL to a provider with no allowed_hosts all fail for good with nothing sent; the provider's own URL works."""
    async with http_receiver() as receiver:
        providers = json.dumps([
            provider("strict", allowed_hosts=["127.0.0.1", "localhost"]),
            provider("named", allowed_hosts=["*.example.com"]),
            provider("fixed", url=receiver.url),
        ])
        port = receiver.url.split(":")[2].split("/")[0]
        cases = {
            "by-ip:s": call("by-ip:s", receiver.url, connector="strict"),
            "by-name:s": call("by-name:s", f"http://localhost:{port}/hooks", connector="strict"),
            "other-host:s": call("other-host:s", receiver.url, connector="named"),
            "no-policy:s": call("no-policy:s", receiver.url, connector="fixed"),
        }
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=providers) as service:
                results = (await service.stub.SendBatch(C.SendBatchRequest(messages=list(cases.values())), metadata=AUTH)).results
                own = (await service.stub.Send(C.SendRequest(message=call("own:s", "", connector="fixed")), metadata=AUTH)).delivery
    outcome = {r.delivery.idempotency_key: (r.delivery.status, r.HasField("error")) for r in results}
    assert outcome == {key: (S.DELIVERY_STATUS_FAILED, False) for key in cases}
    errors = {r.delivery.idempotency_key: r.delivery.last_error for r in results}
    assert "private or reserved address" in errors["by-ip:s"] and "private or reserved address" in errors["by-name:s"]
    assert "allowed_hosts" in errors["other-host:s"] and "allowed_hosts" in errors["no-policy:s"]
    assert all("127.0.0.1" not in error and "localhost" not in error for error in errors.values())
    assert own.status == S.DELIVERY_STATUS_SENT
    assert [r.key for r in receiver.requests] == ["own:s"]


async def test_a_refusal_keeps_its_answer_and_bodies_over_64_kib_are_left_out(make_settings: Callable[..., Settings]) -> None:
    """A 422 with a JSON body fails for good with the body kept; a text body is kept as text; a body over 64 KiB is left out
    (body_omitted too_large) and the delivery is still SENT."""
    async with http_receiver() as receiver:
        receiver.answers.update({"k-422:s": (422, {"content-type": "application/json"}), "k-text:s": (200, {"content-type": "text/plain"}),
                                 "k-big:s": (200, {"content-type": "application/json"})})
        receiver.bodies.update({"k-422:s": b'{"error": "bad total"}', "k-text:s": b"queued\x00ok",
                                "k-big:s": json.dumps({"blob": "x" * 70_000}).encode()})
        providers = json.dumps([provider("journey-hooks", **LOCAL)])
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=providers) as service:
                response = await service.stub.SendBatch(C.SendBatchRequest(messages=[
                    call(key, receiver.url, keep=True) for key in ("k-422:s", "k-text:s", "k-big:s")]), metadata=AUTH)
    refused, text, big = (r.delivery for r in response.results)
    assert refused.status == S.DELIVERY_STATUS_FAILED and response_of(refused) == {"status": 422, "body": {"error": "bad total"}}
    assert text.status == S.DELIVERY_STATUS_SENT and response_of(text) == {"status": 200, "body": "queued\ufffdok"}
    assert big.status == S.DELIVERY_STATUS_SENT and response_of(big) == {"status": 200, "body_omitted": "too_large"}


@pytest.mark.parametrize(("options", "channel", "problem"), [
    ({"url": "ftp://example.com/x"}, S.CHANNEL_WEBHOOK, "INVALID_URL"),
    ({"url": "https://"}, S.CHANNEL_WEBHOOK, "INVALID_URL"),
    ({"url": "https://user:pw@example.com/x"}, S.CHANNEL_WEBHOOK, "INVALID_URL"),
    ({"url": "https://example.com/" + "x" * 2100}, S.CHANNEL_WEBHOOK, "TOO_LONG"),
    ({"url": "https://exa mple.com/"}, S.CHANNEL_WEBHOOK, "INVALID_URL"),
    ({"url": "https://api.example.com:99999/"}, S.CHANNEL_WEBHOOK, "INVALID_URL"),
    ({"url": "javascript:alert(1)", "keep_response": True}, S.CHANNEL_EMAIL, "INVALID_URL"),
])
async def test_bad_webhook_options_are_invalid_argument_naming_the_field(
        make_settings: Callable[..., Settings], options: dict[str, Any], channel: int, problem: str) -> None:
    """A malformed message URL (on any channel) is INVALID_ARGUMENT naming message.webhook.url in Send, and the message's own
    violation in SendBatch, with nothing sent."""
    message = call("bad:s", "")
    message.webhook.CopyFrom(delivery_pb2.WebhookOptions(**options))
    message.channel = channel  # type: ignore[assignment]
    if channel == S.CHANNEL_EMAIL:
        message.address, message.content.text_body = "a@example.com", "hi"
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink, connector_providers=json.dumps([provider("journey-hooks", **LOCAL)])) as service:
            code, _, violations, _ = await _error(service.stub.Send(C.SendRequest(message=message), metadata=AUTH))
            batch = await service.stub.SendBatch(C.SendBatchRequest(messages=[message]), metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    field = "message.webhook.url"
    assert field in violations
    (result,) = batch.results
    assert [(v.field, v.reason) for v in result.violations] == [(field.removeprefix("message."), problem)]
    assert not result.HasField("delivery") and not sink.keys
