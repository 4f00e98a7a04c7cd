"""The audience_sync connector against ``fake_audience_api``, a real HTTP server that checks the protocol and keeps each
audience's members: identifiers arrive normalised and SHA-256-hashed in batches bounded by the provider's batch_size, adds
and removes change the audience, and a retried message sends its batches under the same ids, so the platform applies each
once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service
from .fake_audience_api import API_KEY, fake_audience_api
from .test_bad_input import _error

S = messaging_pb2
D = delivery_pb2
AUTH = admin_metadata()


def sha(text: str) -> str:
    """The SHA-256 hex of *text*."""
    return hashlib.sha256(text.encode()).hexdigest()


def sync(key: str, members: list[tuple[str, str]], *, operation: int = D.AUDIENCE_OPERATION_ADD, address: str = "list",
         audience: str = "vip-customers") -> D.Message:
    """An audience sync of *members* (email, phone) with idempotency key *key*."""
    return D.Message(idempotency_key=key, channel=S.CHANNEL_AUDIENCE_SYNC, subject_id="segment-vip", address=address,
                     category=S.MESSAGE_CATEGORY_TRANSACTIONAL,
                     audience=D.AudienceOptions(audience_id=audience, operation=operation,  # type: ignore[arg-type]
                                                members=[D.AudienceMember(email=e, phone_number=p) for e, p in members]))


def provider(url: str, **settings: Any) -> str:
    """One audience_sync provider posting to *url*."""
    return json.dumps([{"name": "ads", "kind": "audience_sync", "breaker": {"failure_threshold": 1000},
                        "settings": {"url": url, "api_key": API_KEY, **settings}}])


async def test_members_arrive_normalised_hashed_and_in_bounded_batches_and_removes_take_them_out(
        make_settings: Callable[..., Settings]) -> None:
    """2,400 members (some with a phone too, some twice, some invalid) are sent as lower-cased trimmed emails and E.164 phones,
    SHA-256-hashed, in batches of at most 1,000 identifiers; the invalid ones are skipped; a remove takes members out; a lone
    subject is synced by its address."""
    members = [(f"  User{i}@Example.COM ", f"(415) 555-{i:04d}" if i % 3 == 0 else "") for i in range(2400)]
    members += [("user7@example.com", ""), ("not-an-email", ""), ("", "12")]
    async with fake_audience_api() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=provider(fake.url)) as service:
                added = (await service.stub.Send(C.SendRequest(message=sync("sync-1:add", members)), metadata=AUTH)).delivery
                removed = (await service.stub.Send(C.SendRequest(message=sync(
                    "sync-1:remove", [("user1@example.com", ""), ("user3@example.com", "+1 415 555 0003")],
                    operation=D.AUDIENCE_OPERATION_REMOVE)), metadata=AUTH)).delivery
                lone = (await service.stub.Send(C.SendRequest(message=sync("run-9:sync", [], address=" Zoe@Example.com")),
                                                metadata=AUTH)).delivery
    assert (added.status, removed.status, lone.status) == (S.DELIVERY_STATUS_SENT,) * 3
    add_requests = [r for r in fake.requests if r["operation"] == "add"]
    assert len(add_requests) == 4 + 1 and all(r["identifiers"] <= 1000 for r in fake.requests)  # 3,200 identifiers, then the lone one
    assert [r["identifiers"] for r in add_requests][-1] == 1 and sum(r["identifiers"] for r in add_requests) == 2400 + 800 + 1
    expected = {sha(f"user{i}@example.com") for i in range(2400)} | {sha(f"+1415555{i:04d}") for i in range(0, 2400, 3)}
    expected -= {sha("user1@example.com"), sha("user3@example.com"), sha("+14155550003")}
    assert fake.hashes("vip-customers") == expected | {sha("zoe@example.com")}


async def test_a_retried_message_sends_its_batches_under_the_same_ids_and_the_platform_applies_each_once(
        make_settings: Callable[..., Settings]) -> None:
    """A 503 on the second of three batches leaves the message retryable; sending the key again posts the three batches, the first
    two under the ids of the first attempt, the platform applies the first one once, and the audience ends complete."""
    members = [(f"m{i}@example.com", "") for i in range(250)]
    async with fake_audience_api() as fake:
        fake.answers[2] = 503
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=provider(fake.url, batch_size=100)) as service:
                (failed,) = (await service.stub.SendBatch(C.SendBatchRequest(messages=[sync("sync-2:add", members)]), metadata=AUTH)).results
                (sent,) = (await service.stub.SendBatch(C.SendBatchRequest(messages=[sync("sync-2:add", members)]), metadata=AUTH)).results
    assert (failed.delivery.status, failed.error.reason) == (S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE")
    assert sent.delivery.status == S.DELIVERY_STATUS_SENT and sent.delivery.attempts == 2
    ids = [r["batch_id"] for r in fake.requests]
    assert len(ids) == 5 and ids[0] == ids[2] and ids[1] == ids[3] and len(set(ids)) == 3
    assert [(r["status"], r["applied"]) for r in fake.requests] == [(200, True), (503, False), (200, False), (200, True), (200, True)]
    assert fake.hashes("vip-customers") == {sha(f"m{i}@example.com") for i in range(250)}


async def test_a_batch_left_unanswered_leaves_the_sync_in_doubt_and_it_is_not_sent_again(make_settings: Callable[..., Settings]) -> None:
    """A batch the platform applies but never answers makes the delivery IN_DOUBT; sending the key again posts nothing."""
    async with fake_audience_api() as fake:
        fake.stall.add(1)
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=provider(fake.url, timeout_seconds=0.5)) as service:
                message = sync("sync-4:add", [("a@example.com", "")])
                first = (await service.stub.Send(C.SendRequest(message=message), metadata=AUTH)).delivery
                again = await service.stub.Send(C.SendRequest(message=message), metadata=AUTH)
    assert first.status == S.DELIVERY_STATUS_IN_DOUBT and again.duplicate and len(fake.requests) == 1


@pytest.mark.parametrize(("options", "field"), [
    ({"operation": D.AUDIENCE_OPERATION_ADD}, "message.audience.audience_id"),
    ({"audience_id": "vip"}, "message.audience.operation"),
    ({"audience_id": "vip", "operation": 7}, "message.audience.operation"),
    ({"audience_id": "vip", "operation": D.AUDIENCE_OPERATION_ADD, "members": [D.AudienceMember()]}, "message.audience.members[0]"),
    ({"audience_id": "vip", "operation": D.AUDIENCE_OPERATION_ADD, "members": [D.AudienceMember(email="x" * 321)]},
     "message.audience.members[0].email"),
    ({"audience_id": "vip", "operation": D.AUDIENCE_OPERATION_ADD, "members": [D.AudienceMember(email="a@b.c")] * 10_001},
     "message.audience.members"),
])
async def test_bad_audience_options_are_invalid_argument_naming_the_field(
        make_settings: Callable[..., Settings], options: dict[str, Any], field: str) -> None:
    """A sync without an audience or an operation, an unknown operation, an empty or oversized member, or over 10,000 members is
    INVALID_ARGUMENT naming the field, and nothing is sent."""
    message = D.Message(idempotency_key="bad:sync", channel=S.CHANNEL_AUDIENCE_SYNC, subject_id="s", address="list",
                        audience=D.AudienceOptions(**options))
    async with fake_audience_api() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=provider(fake.url)) as service:
                code, _, violations, _ = await _error(service.stub.Send(C.SendRequest(message=message), metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in violations and not fake.requests


async def test_a_sync_without_one_valid_identifier_fails_for_good(make_settings: Callable[..., Settings]) -> None:
    """When no member has a valid email or phone number, the delivery fails (not retryable) and nothing is posted."""
    async with fake_audience_api() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=provider(fake.url)) as service:
                delivery = (await service.stub.Send(C.SendRequest(message=sync("sync-5:add", [("nope", ""), ("", "+1 999")])),
                                                    metadata=AUTH)).delivery
    assert delivery.status == S.DELIVERY_STATUS_FAILED and "no member" in delivery.last_error and not fake.requests
