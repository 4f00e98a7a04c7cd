"""SendBatch on real PostgreSQL and a real SMTP server: each message exactly
once, duplicates answered with the first result, bad items rejected alone."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service, email, keys_of

S = messaging_pb2
AUTH = admin_metadata()


async def send_batch(stub: object, messages: list[object]) -> C.SendBatchResponse:
    """Call SendBatch with the admin token."""
    return await stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH)  # type: ignore[attr-defined, no-any-return]


def error_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    """The ErrorInfo reasons in the details of *error*."""
    status = rpc_status.from_call(error)
    reasons = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
    return reasons


async def test_a_batch_delivers_each_message_once_in_order(make_settings: Callable[..., Settings]) -> None:
    """A batch of 300 messages sends each one exactly once and answers one SENT delivery per message, in order."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            messages = [email(f"run-{i}:send") for i in range(300)]
            response = await send_batch(service.stub, messages)
    assert [r.index for r in response.results] == list(range(300))
    assert keys_of(response.results) == [m.idempotency_key for m in messages]
    assert {r.delivery.status for r in response.results} == {S.DELIVERY_STATUS_SENT}
    assert not any(r.duplicate or r.violations or r.HasField("error") for r in response.results)
    assert Counter(sink.keys) == Counter(m.idempotency_key for m in messages)


async def test_the_same_batch_again_sends_nothing_and_returns_the_first_results(make_settings: Callable[..., Settings]) -> None:
    """Sending a batch a second time calls the provider for none of it and answers each message's first delivery as a duplicate."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            messages = [email(f"run-{i}:send") for i in range(50)]
            first = await send_batch(service.stub, messages)
            again = await send_batch(service.stub, messages)
    assert len(sink.keys) == 50
    assert all(r.duplicate for r in again.results)
    assert [r.delivery for r in again.results] == [r.delivery for r in first.results]


async def test_concurrent_batches_in_one_replica_share_each_first_result(make_settings: Callable[..., Settings]) -> None:
    """Three overlapping batches sent at once through one replica send each key once, and the repeats wait for and return the first delivery."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            batches = [[email(f"run-{i}:send") for i in range(start, start + 100)] for start in (0, 50, 25)]
            responses = await asyncio.gather(*(send_batch(service.stub, batch) for batch in batches))
    assert Counter(sink.keys) == Counter(f"run-{i}:send" for i in range(150))
    by_key: dict[str, set[str]] = {}
    for response in responses:
        for result in response.results:
            assert result.delivery.status == S.DELIVERY_STATUS_SENT
            by_key.setdefault(result.delivery.idempotency_key, set()).add(result.delivery.delivery_id)
    assert all(len(ids) == 1 for ids in by_key.values())
    firsts = Counter(r.delivery.idempotency_key for response in responses for r in response.results if not r.duplicate)
    assert set(firsts.values()) == {1}


async def test_concurrent_batches_across_replicas_send_each_key_once(make_settings: Callable[..., Settings]) -> None:
    """Two replicas on one database given the same batch at once send each key once: the claim decides, and the loser answers the winner's delivery."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as one, connectors_service(make_settings, sink) as two:
            messages = [email(f"run-{i}:send") for i in range(200)]
            sink.data_delay = 0.002
            left, right = await asyncio.gather(send_batch(one.stub, messages), send_batch(two.stub, messages))
    assert Counter(sink.keys) == Counter(m.idempotency_key for m in messages)
    for a, b in zip(left.results, right.results, strict=True):
        assert a.delivery.delivery_id == b.delivery.delivery_id
        assert [a.duplicate, b.duplicate].count(False) == 1
        assert {a.delivery.status, b.delivery.status} <= {S.DELIVERY_STATUS_SENT, S.DELIVERY_STATUS_SENDING}


async def test_a_key_twice_in_one_batch_is_sent_once(make_settings: Callable[..., Settings]) -> None:
    """A key repeated inside one batch is sent once; the repeat answers the same delivery as a duplicate."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            response = await send_batch(service.stub, [email("run-1:send"), email("run-2:send"), email("run-1:send")])
    assert sorted(sink.keys) == ["run-1:send", "run-2:send"]
    first, _, repeat = response.results
    assert repeat.duplicate and not first.duplicate
    assert repeat.delivery == first.delivery


async def test_send_and_send_batch_share_idempotency_keys(make_settings: Callable[..., Settings]) -> None:
    """A key delivered by Send is a duplicate in SendBatch, and the other way round."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            single = await service.stub.Send(C.SendRequest(message=email("run-1:send")), metadata=AUTH)
            batch = await send_batch(service.stub, [email("run-1:send"), email("run-2:send")])
            again = await service.stub.Send(C.SendRequest(message=email("run-2:send")), metadata=AUTH)
    assert sorted(sink.keys) == ["run-1:send", "run-2:send"]
    assert batch.results[0].duplicate and batch.results[0].delivery == single.delivery
    assert again.duplicate and again.delivery == batch.results[1].delivery


async def test_one_bad_message_is_rejected_alone(make_settings: Callable[..., Settings]) -> None:
    """Invalid messages, one a field no service can store, get their own violations or error, and the rest of the batch is delivered."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            response = await send_batch(service.stub, [
                email("run-1:send"),
                email("run-2:send", address="not-an-address"),
                email("run-3:send", subject_id="nul\x00inside"),
                email("run-4:send", connector="no-such-connector"),
                email("run-5:send"),
            ])
    assert sorted(sink.keys) == ["run-1:send", "run-5:send"]
    ok1, bad_address, unstorable, unknown, ok5 = response.results
    assert ok1.delivery.status == ok5.delivery.status == S.DELIVERY_STATUS_SENT
    assert [(v.field, v.reason) for v in bad_address.violations] == [("address", "INVALID_ADDRESS")]
    assert [v.field for v in unstorable.violations] == ["subject_id"]
    assert not bad_address.HasField("delivery") and not unstorable.HasField("delivery")
    assert (unknown.error.code, unknown.error.reason) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "UNKNOWN_CONNECTOR")
    assert not unknown.HasField("delivery")


async def test_a_batch_over_the_limit_is_resource_exhausted(make_settings: Callable[..., Settings]) -> None:
    """A batch of 501 messages is refused with RESOURCE_EXHAUSTED (BATCH_TOO_LARGE) and sends nothing; an empty one is INVALID_ARGUMENT."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            with pytest.raises(grpc.aio.AioRpcError) as too_many:
                await send_batch(service.stub, [email(f"run-{i}:send") for i in range(501)])
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await send_batch(service.stub, [])
    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reasons(too_many.value) == ["BATCH_TOO_LARGE"]
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sink.keys == []


async def test_a_provider_outage_fails_for_now_and_a_retry_delivers_once(make_settings: Callable[..., Settings]) -> None:
    """With the SMTP server down each message fails retryably (UNAVAILABLE with a retry delay); sent again once it is up, each is delivered once."""
    sink = CountingSink()
    # A breaker that does not open within the test: the retry must reach the provider.
    never_open = '[{"name": "smtp", "kind": "smtp", "breaker": {"failure_threshold": 1000}}]'
    try:
        async with connectors_service(make_settings, sink, connector_providers=never_open) as service:
            messages = [email(f"run-{i}:send") for i in range(20)]
            down = await send_batch(service.stub, messages)
            sink.start()
            up = await send_batch(service.stub, messages)
    finally:
        sink.stop()
    for result in down.results:
        assert (result.error.code, result.error.reason) == (grpc.StatusCode.UNAVAILABLE.value[0], "PROVIDER_UNAVAILABLE")
        assert result.error.retry_delay.seconds > 0
        assert result.delivery.status == S.DELIVERY_STATUS_FAILED and result.delivery.attempts == 1
    assert {(r.delivery.status, r.delivery.attempts, r.duplicate) for r in up.results} == {(S.DELIVERY_STATUS_SENT, 2, False)}
    assert [r.delivery.delivery_id for r in up.results] == [r.delivery.delivery_id for r in down.results]
    assert Counter(sink.keys) == Counter(m.idempotency_key for m in messages)


async def test_an_in_doubt_send_is_never_sent_again(make_settings: Callable[..., Settings]) -> None:
    """A message the server took but whose reply was lost is IN_DOUBT (SMTP has no status lookup); sending its key again sends nothing."""
    with CountingSink() as sink:
        sink.drop_after_data.add("run-2:send")
        async with connectors_service(make_settings, sink) as service:
            messages = [email(f"run-{i}:send") for i in range(4)]
            first = await send_batch(service.stub, messages)
            again = await send_batch(service.stub, messages)
            single = await service.stub.Send(C.SendRequest(message=email("run-2:send")), metadata=AUTH)
    assert [r.delivery.status for r in first.results] == [S.DELIVERY_STATUS_SENT, S.DELIVERY_STATUS_SENT,
                                                          S.DELIVERY_STATUS_IN_DOUBT, S.DELIVERY_STATUS_SENT]
    assert first.results[2].delivery.provider_message_id
    assert all(r.duplicate for r in again.results) and single.duplicate
    assert single.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    assert Counter(sink.keys) == Counter(m.idempotency_key for m in messages)


async def test_a_refused_recipient_fails_for_good_without_failing_the_batch(make_settings: Callable[..., Settings]) -> None:
    """A recipient the server refuses (550) fails that delivery for good; the others of the batch are sent."""
    with CountingSink() as sink:
        sink.refuse.add("nobody@example.com")
        async with connectors_service(make_settings, sink) as service:
            response = await send_batch(service.stub, [email("run-1:send"), email("run-2:send", address="nobody@example.com"),
                                                       email("run-3:send")])
    statuses = [r.delivery.status for r in response.results]
    assert statuses == [S.DELIVERY_STATUS_SENT, S.DELIVERY_STATUS_FAILED, S.DELIVERY_STATUS_SENT]
    assert not response.results[1].HasField("error") and "550" in response.results[1].delivery.last_error
    assert "nobody" not in response.results[1].delivery.last_error
    assert sorted(sink.keys) == ["run-1:send", "run-3:send"]


async def test_a_caller_that_gives_up_still_gets_its_deliveries_recorded(make_settings: Callable[..., Settings]) -> None:
    """A batch whose caller's deadline passes mid-send still records every outcome, so the retry answers SENT without sending again."""
    with CountingSink() as sink:
        sink.data_delay = 0.05
        async with connectors_service(make_settings, sink, connector_concurrency=2) as service:
            messages = [email(f"run-{i}:send") for i in range(20)]
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await service.stub.SendBatch(C.SendBatchRequest(messages=messages), metadata=AUTH, timeout=0.1)
            await service.app.deliveries.wait_idle()
            retry = await send_batch(service.stub, messages)
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert {(r.delivery.status, r.duplicate) for r in retry.results} == {(S.DELIVERY_STATUS_SENT, True)}
    assert Counter(sink.keys) == Counter(m.idempotency_key for m in messages)


async def test_a_batch_of_hostile_messages_gets_an_answer_the_client_can_read(make_settings: Callable[..., Settings]) -> None:
    """500 messages with 300 unstorable numbers each are each rejected with at most 20 violations, so the answer stays readable."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            messages = []
            for i in range(500):
                message = email(f"run-{i}:send")
                message.content.data.update({f"v{j}": float("nan") for j in range(300)})
                messages.append(message)
            response = await send_batch(service.stub, messages)
    assert len(response.results) == 500 and sink.keys == []
    assert {len(r.violations) for r in response.results} == {20}
    assert {r.violations[-1].reason for r in response.results} == {"TOO_MANY_PROBLEMS"}
