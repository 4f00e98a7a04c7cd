"""Web push against ``fake_push_service`` (real HTTPS, RFC 8030): payloads encrypted per RFC 8291 decrypt
with the browser's keys, VAPID JWTs (RFC 8292) verify, every device of a subject gets a message once
even across retries, and 404/410 remove subscriptions."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2, push_pb2, push_service_pb2_grpc
from overture.connectors.v1 import push_service_pb2 as P
from overture_connectors.vapid import generate_private_key, load, public_key_of
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, Service, connectors_service
from .fake_push_service import Device, FakePushService, b64, fake_push_service

S = messaging_pb2
AUTH = admin_metadata()
VAPID_KEY = generate_private_key()


def push(key: str, subject: str = "alice", **options: object) -> delivery_pb2.Message:
    """A push message for *subject* with idempotency key *key*."""
    data = struct_pb2.Struct()
    data.update({"url": "https://example.com/orders/42", "order": 42})
    return delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_PUSH, subject_id=subject, address=subject,
                                content=delivery_pb2.MessageContent(subject="Your order shipped", text_body="It arrives Friday.", data=data),
                                category=S.MESSAGE_CATEGORY_TRANSACTIONAL, push=delivery_pb2.PushOptions(**options))  # type: ignore[arg-type]


@dataclass
class World:
    """The connectors service with a web_push provider, the fake push service, and a PushService stub."""

    service: Service
    fake: FakePushService
    subscriptions: push_service_pb2_grpc.PushServiceStub
    clock: ManualClock

    async def subscribe(self, name: str, subject: str = "alice") -> Device:
        """A new browser subscription on the fake push service, stored for *subject* through PushService."""
        device = self.fake.subscribe(name)
        await self.subscriptions.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id=subject, subscription=push_pb2.PushSubscription(
            endpoint=device.endpoint, keys=push_pb2.PushSubscriptionKeys(p256dh=device.p256dh, auth=device.auth_secret),
            user_agent=f"Firefox ({name})")), metadata=AUTH)
        return device

    async def send(self, message: delivery_pb2.Message) -> C.SendResponse:
        """Send *message* through ConnectorService.Send."""
        return await self.service.stub.Send(C.SendRequest(message=message), metadata=AUTH)

    async def listed(self, subject: str = "alice") -> list[str]:
        """The user agents of *subject*'s subscriptions."""
        reply = await self.subscriptions.ListPushSubscriptions(P.ListPushSubscriptionsRequest(subject_id=subject), metadata=AUTH)
        return sorted(s.user_agent for s in reply.subscriptions)


@contextlib.asynccontextmanager
async def world(make_settings: Callable[..., Settings], folder: Path, *, timeout: float = 10.0, ttl: int = 3600) -> AsyncIterator[World]:
    """Everything a push test needs, on this test's database."""
    clock = ManualClock(dt.datetime.now(dt.UTC))
    async with fake_push_service(folder, now=clock.now) as (fake, ca_file):
        fake.application_server_key = public_key_of(load(VAPID_KEY))
        providers = json.dumps([{"name": "web-push", "kind": "web_push", "breaker": {"failure_threshold": 1000}, "settings": {
            "vapid_private_key": VAPID_KEY, "subject": "mailto:ops@example.com", "endpoint_hosts": ["127.0.0.1"], "ca_file": str(ca_file),
            "ttl_seconds": ttl, "timeout_seconds": timeout}}])
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, clock=clock, connector_providers=providers) as service:
                async with grpc.aio.insecure_channel(service.address) as channel:
                    yield World(service, fake, push_service_pb2_grpc.PushServiceStub(channel), clock)


async def test_every_device_gets_the_payload_encrypted_for_it_with_a_verified_vapid_jwt(make_settings: Callable[..., Settings],
                                                                                         tmp_path: Path) -> None:
    """A message to a subject with two browsers reaches both: each body decrypts (RFC 8291) with that browser's keys to the payload,
    the VAPID JWT verifies under the key GetPushConfig hands browsers, and TTL, Urgency and Topic are set."""
    async with world(make_settings, tmp_path, ttl=7200) as w:
        config = await w.subscriptions.GetPushConfig(P.GetPushConfigRequest(), metadata=AUTH)
        assert config.application_server_key == w.fake.application_server_key and list(config.endpoint_hosts) == ["127.0.0.1"]
        await w.subscribe("laptop")
        await w.subscribe("phone")
        sent = (await w.send(push("run-1:notify", topic="order-42"))).delivery
        default_ttl = (await w.send(push("run-2:notify", urgency=push_pb2.PUSH_URGENCY_LOW, ttl=duration_pb2.Duration(seconds=60)))).delivery
    assert sent.status == S.DELIVERY_STATUS_SENT and sent.provider_message_id == "acme/run-1:notify"
    assert default_ttl.status == S.DELIVERY_STATUS_SENT
    first = [p for p in w.fake.pushed if p.payload["id"] == w.fake.pushed[0].payload["id"]]
    assert sorted(p.device for p in first) == ["laptop", "phone"]
    for pushed in first:
        assert pushed.payload["title"] == "Your order shipped" and pushed.payload["body"] == "It arrives Friday."
        assert pushed.payload["data"] == {"url": "https://example.com/orders/42", "order": 42}
        assert pushed.headers["ttl"] == "7200" and pushed.headers["urgency"] == "high" and pushed.headers["topic"] == "order-42"
        assert pushed.claims["aud"] == w.fake.origin and pushed.claims["sub"] == "mailto:ops@example.com"
    later = [p for p in w.fake.pushed if p not in first]
    assert {(p.headers["ttl"], p.headers["urgency"], "topic" in p.headers) for p in later} == {("60", "low", False)}
    assert w.fake.refused == []


async def test_a_retried_message_reaches_only_the_devices_that_did_not_get_it(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """One device takes the message, one answers 503 and one 429 with Retry-After: the send is retryable after the push service's
    delay; sent again, the message goes to the two that did not get it and not to the first; a third send calls nothing."""
    async with world(make_settings, tmp_path) as w:
        await w.subscribe("laptop")
        busy, limited = await w.subscribe("tablet"), await w.subscribe("phone")
        busy.answer, limited.answer = (503, {}), (429, {"retry-after": "7"})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await w.send(push("run-1:notify"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry" in (refused.value.details() or "")
        busy.answer = limited.answer = None
        second = await w.send(push("run-1:notify"))
        third = await w.send(push("run-1:notify"))
    assert second.delivery.status == S.DELIVERY_STATUS_SENT and not second.duplicate
    assert third.duplicate and third.delivery.delivery_id == second.delivery.delivery_id
    assert [p.status for p in w.fake.received("laptop")] == [201]
    assert [p.status for p in w.fake.received("tablet")] == [503, 201]
    assert [p.status for p in w.fake.received("phone")] == [429, 201]


async def test_a_404_or_410_answer_removes_the_subscription(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Devices whose push service answers 410 Gone or 404 lose their subscription; the device that took the message keeps it."""
    async with world(make_settings, tmp_path) as w:
        await w.subscribe("laptop")
        (await w.subscribe("old-phone")).answer = (410, {})
        (await w.subscribe("old-tablet")).answer = (404, {})
        assert await w.listed() == ["Firefox (laptop)", "Firefox (old-phone)", "Firefox (old-tablet)"]
        sent = (await w.send(push("run-1:notify"))).delivery
        assert sent.status == S.DELIVERY_STATUS_SENT
        assert await w.listed() == ["Firefox (laptop)"]
        listed = (await w.subscriptions.ListPushSubscriptions(P.ListPushSubscriptionsRequest(subject_id="alice"), metadata=AUTH)).subscriptions
        assert listed[0].HasField("last_send_time") and not listed[0].keys.p256dh and not listed[0].keys.auth


async def test_a_device_left_without_an_answer_is_in_doubt_and_never_sent_again(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A request the push service never answers leaves its device in doubt: alone, the message is IN_DOUBT; beside a device that
    took it, the message is SENT; either way sending the key again calls no device."""
    async with world(make_settings, tmp_path, timeout=0.5) as w:
        (await w.subscribe("phone", "bob")).stall = True
        doubtful = (await w.send(push("run-1:notify", "bob"))).delivery
        await w.subscribe("laptop")
        (await w.subscribe("tablet")).answer = (504, {})
        sent = (await w.send(push("run-2:notify"))).delivery
        again = [await w.send(push(key, subject)) for key, subject in (("run-1:notify", "bob"), ("run-2:notify", "alice"))]
    assert doubtful.status == S.DELIVERY_STATUS_IN_DOUBT
    assert sent.status == S.DELIVERY_STATUS_SENT
    assert all(a.duplicate for a in again)
    assert [len(w.fake.received(d)) for d in ("phone", "laptop", "tablet")] == [1, 1, 1]


async def test_a_message_nobody_can_receive_fails_for_good(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """With no subscription, or a payload over 3,993 bytes, the message FAILS without a request to the push service."""
    async with world(make_settings, tmp_path) as w:
        nobody = (await w.send(push("run-1:notify", "carol"))).delivery
        await w.subscribe("laptop")
        big = push("run-2:notify")
        big.content.text_body = "x" * 4000
        too_big = (await w.send(big)).delivery
    assert nobody.status == S.DELIVERY_STATUS_FAILED and "no push subscription" in nobody.last_error
    assert too_big.status == S.DELIVERY_STATUS_FAILED and "3993" in too_big.last_error
    assert w.fake.pushed == []


async def test_a_push_service_refusing_the_signature_or_the_encryption_fails_the_message(make_settings: Callable[..., Settings],
                                                                                         tmp_path: Path) -> None:
    """A subscription made with another application server key (403 from the push service), or whose stored auth secret is not the
    browser's (the body does not decrypt: 400), refuses for good: the message FAILS and is not sent again."""
    async with world(make_settings, tmp_path) as w:
        await w.subscribe("laptop")
        w.fake.application_server_key = public_key_of(load(generate_private_key()))
        wrong_key = (await w.send(push("run-1:notify"))).delivery
        w.fake.application_server_key = public_key_of(load(VAPID_KEY))
        device = w.fake.subscribe("phone")
        await w.subscriptions.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id="bob", subscription=push_pb2.PushSubscription(
            endpoint=device.endpoint, keys=push_pb2.PushSubscriptionKeys(p256dh=device.p256dh, auth="AAAAAAAAAAAAAAAAAAAAAA"))), metadata=AUTH)
        undecryptable = (await w.send(push("run-2:notify", "bob"))).delivery
        again = await w.send(push("run-1:notify"))
    assert wrong_key.status == undecryptable.status == S.DELIVERY_STATUS_FAILED and again.duplicate
    assert [(d, code) for d, code, _ in w.fake.refused] == [("laptop", 403), ("phone", 400)]
    assert w.fake.pushed == []


async def test_an_endpoint_stored_again_moves_to_its_new_subject_and_a_subject_keeps_ten(make_settings: Callable[..., Settings],
                                                                                        tmp_path: Path) -> None:
    """The same endpoint stored for another subject (a shared browser) leaves the first subject; an eleventh subscription removes
    the least recently stored; deleting by endpoint or by id removes one, and deleting it again changes nothing."""
    async with world(make_settings, tmp_path) as w:
        shared = await w.subscribe("shared", "alice")
        await w.subscriptions.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id="bob", subscription=push_pb2.PushSubscription(
            endpoint=shared.endpoint, keys=push_pb2.PushSubscriptionKeys(p256dh=shared.p256dh, auth=shared.auth_secret))), metadata=AUTH)
        assert await w.listed("alice") == [] and len(await w.listed("bob")) == 1
        for n in range(11):
            w.clock.advance(dt.timedelta(seconds=1))
            await w.subscribe(f"d{n:02}", "carol")
        assert await w.listed("carol") == [f"Firefox (d{n:02})" for n in range(1, 11)]
        d05 = next(d for d in w.fake.devices.values() if d.name == "d05")
        gone = await w.subscriptions.DeletePushSubscription(P.DeletePushSubscriptionRequest(subject_id="carol", endpoint=d05.endpoint),
                                                            metadata=AUTH)
        again = await w.subscriptions.DeletePushSubscription(P.DeletePushSubscriptionRequest(subject_id="carol", endpoint=d05.endpoint),
                                                             metadata=AUTH)
        other = await w.subscriptions.DeletePushSubscription(P.DeletePushSubscriptionRequest(subject_id="alice", endpoint=shared.endpoint),
                                                             metadata=AUTH)
        assert gone.deleted and not again.deleted and not other.deleted
        assert len(await w.listed("carol")) == 9 and len(await w.listed("bob")) == 1


async def test_pages_of_subscriptions_cover_each_once(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Listing with page_size 3 walks a subject's subscriptions once each, by id, ending with an empty next_page_token."""
    async with world(make_settings, tmp_path) as w:
        for n in range(7):
            await w.subscribe(f"d{n}")
        seen: list[str] = []
        token = ""
        while True:
            reply = await w.subscriptions.ListPushSubscriptions(P.ListPushSubscriptionsRequest(subject_id="alice", page_size=3, page_token=token),
                                                                metadata=AUTH)
            seen += [s.subscription_id for s in reply.subscriptions]
            token = reply.next_page_token
            if not token:
                break
    assert len(seen) == 7 and seen == sorted(set(seen))


async def _violations(call: object) -> tuple[grpc.StatusCode, dict[str, str], str]:
    """The code, field violations (field to reason) and ErrorInfo reason of a failing call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    fields: dict[str, str] = {}
    reason = ""
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update({v.field: v.reason for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return caught.value.code(), fields, reason


async def test_bad_push_requests_name_their_fields(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Endpoints that are not https, on another host, with credentials or too long; keys that are not a P-256 point or a 16-byte
    secret; a missing subject or subscription; delete by neither or both; a bad page token; push options out of range: each is
    INVALID_ARGUMENT naming its field, and nothing is stored."""
    async with world(make_settings, tmp_path) as w:
        device = w.fake.subscribe("laptop")
        keys = push_pb2.PushSubscriptionKeys(p256dh=device.p256dh, auth=device.auth_secret)

        def create(endpoint: str = device.endpoint, p256dh: str = keys.p256dh, auth: str = keys.auth, subject: str = "alice",
                   user_agent: str = "") -> object:
            return w.subscriptions.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id=subject, subscription=push_pb2.PushSubscription(
                endpoint=endpoint, keys=push_pb2.PushSubscriptionKeys(p256dh=p256dh, auth=auth), user_agent=user_agent)), metadata=AUTH)

        host = w.fake.origin.removeprefix("https://")
        cases = [
            (create(endpoint=device.endpoint.replace("https:", "http:")), "subscription.endpoint"),
            (create(endpoint="https://push.evil.example/abc"), "subscription.endpoint"),
            (create(endpoint=f"https://user:pw@{host}/push/x"), "subscription.endpoint"),
            (create(endpoint=f"https://{host}/" + "a" * 3000), "subscription.endpoint"),
            (create(endpoint="https://[::1/x"), "subscription.endpoint"),
            (create(endpoint=""), "subscription.endpoint"),
            (create(p256dh=keys.auth), "subscription.keys.p256dh"),
            (create(p256dh="BAAAA" + keys.p256dh[5:]), "subscription.keys.p256dh"),
            (create(auth=keys.p256dh), "subscription.keys.auth"),
            (create(auth="!!!"), "subscription.keys.auth"),
            (create(subject=""), "subject_id"),
            (create(user_agent="x" * 201), "subscription.user_agent"),
            (w.subscriptions.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id="alice"), metadata=AUTH), "subscription"),
            (w.subscriptions.DeletePushSubscription(P.DeletePushSubscriptionRequest(subject_id="alice"), metadata=AUTH), "subscription_id"),
            (w.subscriptions.DeletePushSubscription(P.DeletePushSubscriptionRequest(subject_id="alice", subscription_id="a", endpoint="b"),
                                                    metadata=AUTH), "subscription_id"),
            (w.subscriptions.ListPushSubscriptions(P.ListPushSubscriptionsRequest(subject_id="alice", page_token="nonsense"), metadata=AUTH),
             "page_token"),
            (w.subscriptions.ListPushSubscriptions(P.ListPushSubscriptionsRequest(page_size=1000), metadata=AUTH), "subject_id"),
            (w.send(push("run-1:notify", ttl=duration_pb2.Duration(seconds=29 * 86400))), "message.push.ttl"),
            (w.send(push("run-1:notify", topic="not a topic!")), "message.push.topic"),
            (w.send(push("run-1:notify", topic="t" * 33)), "message.push.topic"),
        ]
        for call, field in cases:
            code, fields, _ = await _violations(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in fields, (field, code, fields)
        assert await w.listed() == [] and w.fake.pushed == []


async def test_without_a_web_push_provider_there_is_no_push_config(make_settings: Callable[..., Settings]) -> None:
    """GetPushConfig is FAILED_PRECONDITION (NO_PUSH_PROVIDER) when no web_push provider is configured, and a push message
    finds no connector; subscriptions to the well-known push services can still be stored."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service, grpc.aio.insecure_channel(service.address) as channel:
            stub = push_service_pb2_grpc.PushServiceStub(channel)
            code, _, reason = await _violations(stub.GetPushConfig(P.GetPushConfigRequest(), metadata=AUTH))
            no_connector = await _violations(service.stub.Send(C.SendRequest(message=push("run-1:notify")), metadata=AUTH))
            browser = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(serialization.Encoding.X962,
                                                                                        serialization.PublicFormat.UncompressedPoint)
            stored = await stub.CreatePushSubscription(P.CreatePushSubscriptionRequest(subject_id="alice", subscription=push_pb2.PushSubscription(
                endpoint="https://fcm.googleapis.com/fcm/send/abc:def", keys=push_pb2.PushSubscriptionKeys(
                    p256dh=b64(browser), auth=b64(b"0123456789abcdef")))), metadata=AUTH)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_PUSH_PROVIDER")
    assert no_connector[0] == grpc.StatusCode.FAILED_PRECONDITION and no_connector[2] == "NO_CONNECTOR"
    assert stored.subscription.subscription_id and not stored.subscription.keys.auth
