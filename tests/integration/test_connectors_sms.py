"""The sms_http connector against ``fake_sms_provider`` (a real HTTP server speaking a Twilio-shaped messaging API):
numbers normalised to E.164, segments counted and recorded, the provider's answers classified, and sends whose answer is
lost settled through the provider's status lookup, never sent twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_connectors.sms import client_ref
from overture_runtime.config import Settings
from tests.conftest import TENANT, admin_metadata

from .connectors_support import CountingSink, connectors_service
from .fake_sms_provider import ACCOUNT, TOKEN, fake_sms_provider
from .test_bad_input import _error

S = messaging_pb2
AUTH = admin_metadata()


def text(key: str, to: str, body: str = "Your code is 123456") -> delivery_pb2.Message:
    """An SMS to *to* with idempotency key *key*."""
    return delivery_pb2.Message(idempotency_key=key, channel=S.CHANNEL_SMS, subject_id=f"s-{key}", address=to,
                                content=delivery_pb2.MessageContent(text_body=body), category=S.MESSAGE_CATEGORY_TRANSACTIONAL)


def sms_provider(api_url: str, **settings: Any) -> str:
    """One sms_http provider on the fake's account."""
    return json.dumps([{"name": "sms-main", "kind": "sms_http", "breaker": {"failure_threshold": 10_000},
                        "settings": {"api_url": api_url, "account_id": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006",
                                     "callback_base_url": "https://events.example.com", **settings}}])


async def test_numbers_go_out_in_e164_with_their_segments_counted_once_per_key(make_settings: Callable[..., Settings]) -> None:
    """National and international spellings are sent as E.164 (US default region); a GSM-7 text of 161 characters is 2 segments and a
    UCS-2 one of 71 is 2, recorded on the delivery; the form carries From, ClientRef, the idempotency key and the tenant's callback URL;
    the batch again sends nothing."""
    messages = [text("k1:s", "(415) 555-2671"), text("k2:s", "+44 20 7946 0958", "a" * 161), text("k3:s", "+49 30 901820", "ж" * 71)]
    async with fake_sms_provider() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=sms_provider(fake.api_url)) as service:
                first = await service.stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH)
                again = await service.stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH)
    sent = {m["client_ref"]: m for m in fake.messages.values()}
    assert fake.sends == 3
    assert [sent[client_ref(TENANT, k)]["to"] for k in ("k1:s", "k2:s", "k3:s")] == ["+14155552671", "+442079460958", "+4930901820"]
    assert [(r.delivery.status, r.delivery.segments) for r in first.results] == [
        (S.DELIVERY_STATUS_SENT, 1), (S.DELIVERY_STATUS_SENT, 2), (S.DELIVERY_STATUS_SENT, 2)]
    assert {r.delivery.provider_message_id for r in first.results} == set(fake.messages)
    one = sent[client_ref(TENANT, "k1:s")]
    assert one["from"] == "+15005550006" and one["status_callback"] == f"https://events.example.com/callbacks/sms-main/{TENANT}"
    assert all(r.duplicate for r in again.results) and [r.delivery for r in again.results] == [r.delivery for r in first.results]


async def test_bad_numbers_and_long_bodies_fail_for_good_without_a_call_or_the_number_in_the_error(
        make_settings: Callable[..., Settings]) -> None:
    """An invalid number, a non-number and a body over max_segments are FAILED (not retryable), nothing reaches the provider, and the
    error shows no digits of the number."""
    async with fake_sms_provider() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=sms_provider(fake.api_url, max_segments=2)) as service:
                response = await service.stub.SendBatch(C.SendBatchRequest(messages=[
                    text("k1:s", "+1 415 555 267"), text("k2:s", "call me maybe"), text("k3:s", "+14155552671", "a" * 307)]), metadata=AUTH)
    assert [(r.delivery.status, r.HasField("error")) for r in response.results] == [(S.DELIVERY_STATUS_FAILED, False)] * 3
    assert "415" not in response.results[0].delivery.last_error and "3 segments" in response.results[2].delivery.last_error
    assert fake.sends == 0


async def test_the_providers_answers_are_classified_and_only_what_it_refused_for_now_is_sent_again(
        make_settings: Callable[..., Settings]) -> None:
    """429 and 503 are retryable and sent again on the next attempt; a wrong auth token (401) fails for good naming the provider's
    error code."""
    async with fake_sms_provider() as fake:
        fake.answers.update({"+14155550001": 429, "+14155550002": 503})
        messages = [text("k1:s", "+14155550001"), text("k2:s", "+14155550002")]
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=sms_provider(fake.api_url)) as service:
                first = await service.stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH)
                fake.answers.clear()
                again = await service.stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH)
            wrong = sms_provider(fake.api_url, auth_token="not-the-token")
            async with connectors_service(make_settings, sink, connector_providers=wrong) as service:
                refused = (await service.stub.Send(C.SendRequest(message=text("k3:s", "+14155550003")), metadata=AUTH)).delivery
    assert [(r.delivery.status, r.error.reason) for r in first.results] == [(S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE")] * 2
    assert [r.delivery.status for r in again.results] == [S.DELIVERY_STATUS_SENT] * 2 and fake.sends == 2
    assert refused.status == S.DELIVERY_STATUS_FAILED and "error 20003" in refused.last_error


async def test_sends_whose_answer_is_lost_are_settled_by_the_status_lookup_and_never_sent_twice(
        make_settings: Callable[..., Settings]) -> None:
    """300 sends with a tenth of the answers lost after the provider took the message: every lost one is found by its reference through
    the status lookup and settled SENT, none is IN_DOUBT, the provider holds exactly one message per key, and sending all again adds none."""
    async with fake_sms_provider() as fake:
        fake.drop_reply = 0.1
        messages = [text(f"run-{i}:sms", f"+1415555{i:04d}") for i in range(300)]
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=sms_provider(fake.api_url, timeout_seconds=0.5)) as service:
                results = []
                for start in range(0, 300, 100):
                    batch = C.SendBatchRequest(messages=messages[start:start + 100])
                    results += (await service.stub.SendBatch(batch, metadata=AUTH)).results
                again = await asyncio.gather(*(service.stub.SendBatch(C.SendBatchRequest(messages=messages[s:s + 100]), metadata=AUTH)
                                               for s in range(0, 300, 100)))
    refs = Counter(m["client_ref"] for m in fake.messages.values())
    print(f"\nsms in doubt: sends=300 dropped_replies={len(fake.dropped)} provider_messages={fake.sends} duplicates="
          f"{sum(n - 1 for n in refs.values())} in_doubt={sum(r.delivery.status == S.DELIVERY_STATUS_IN_DOUBT for r in results)}")
    assert 10 <= len(fake.dropped) <= 60
    assert fake.sends == 300 and set(refs.values()) == {1}
    assert Counter(r.delivery.status for r in results) == Counter({S.DELIVERY_STATUS_SENT: 300})
    dropped_refs = {fake.messages[sid]["client_ref"] for sid in fake.dropped}
    settled = [r.delivery for r in results if client_ref(TENANT, r.delivery.idempotency_key) in dropped_refs]
    assert len(settled) == len(fake.dropped) and all(d.provider_message_id.startswith("ovr_") for d in settled)
    assert all(r.duplicate for batch in again for r in batch.results) and fake.sends == 300



async def test_an_sms_without_a_text_body_is_invalid_argument(make_settings: Callable[..., Settings]) -> None:
    """An SMS with an empty or blank text body is INVALID_ARGUMENT naming message.content.text_body, and its own violation in a batch."""
    async with fake_sms_provider() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=sms_provider(fake.api_url)) as service:
                code, _, violations, _ = await _error(service.stub.Send(C.SendRequest(message=text("k:s", "+14155552671", "")),
                                                                       metadata=AUTH))
                batch = await service.stub.SendBatch(C.SendBatchRequest(messages=[text("k:s", "+14155552671", "  \n")]), metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "message.content.text_body" in violations
    assert [(v.field, v.reason) for v in batch.results[0].violations] == [("content.text_body", "REQUIRED")]
    assert fake.sends == 0
