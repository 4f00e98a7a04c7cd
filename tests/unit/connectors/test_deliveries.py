"""Unit tests of :mod:`overture_connectors.deliveries` on SQLite (what ``overture dev`` runs), with a fake connector."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest

from overture.common.v1 import messaging_pb2
from overture_connectors.deliveries import DeliveryService
from overture_connectors.store import Claim, DeliveryStore
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, ResourceExhausted, Unavailable

from .conftest import message
from .fakes import FakeConnector

S = messaging_pb2
TENANT = "acme"


@pytest.fixture
def fake() -> FakeConnector:
    """The one connector, default for email."""
    return FakeConnector()


@pytest.fixture
def make_service(db: Database, clock: ManualClock, fake: FakeConnector) -> Callable[..., DeliveryService]:
    """Build a DeliveryService over the fake connector."""

    def build(concurrency: int = 16) -> DeliveryService:
        return DeliveryService(db, {fake.name: fake}, {S.CHANNEL_EMAIL: fake.name}, clock, IdGenerator(), concurrency=concurrency)

    return build


async def wait_for(condition: Callable[[], bool]) -> None:
    """Let the event loop (and SQLite's worker thread) run until *condition* holds."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def test_a_batch_sends_each_key_once_and_repeats_return_the_first(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """On SQLite a batch sends every message once, a key repeated in it is sent once, and the batch sent again sends nothing."""
    service = make_service()
    keys = [f"k{i}" for i in range(30)]
    first = await service.send_many(TENANT, [message(k) for k in [*keys, "k0"]])
    again = await service.send_many(TENANT, [message(k) for k in keys])
    assert fake.sent == keys
    assert {o.delivery.status for o in first if o.delivery} == {S.DELIVERY_STATUS_SENT}
    assert first[-1].duplicate and first[-1].delivery == first[0].delivery
    assert all(o.duplicate for o in again) and [o.delivery for o in again] == [o.delivery for o in first[:-1]]


async def test_a_retryable_failure_is_retried_by_the_next_repeat(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """A failure before the provider accepted the message answers UNAVAILABLE; the next repeat of the key sends it (attempt 2), once."""
    service = make_service()
    fake.fail_for_now = {"k1"}
    (down,) = await service.send_many(TENANT, [message("k1")])
    fake.fail_for_now = set()
    delivery, duplicate = await service.send(TENANT, message("k1"))
    assert isinstance(down.error, Unavailable) and down.error.reason == "PROVIDER_UNAVAILABLE"
    assert down.delivery is not None and down.delivery.status == S.DELIVERY_STATUS_FAILED
    assert (delivery.status, delivery.attempts, duplicate) == (S.DELIVERY_STATUS_SENT, 2, False)
    assert fake.sent == ["k1"]


async def test_send_raises_what_a_batch_reports_per_message(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """Send, a batch of one, raises the error a batch reports for the message: UNAVAILABLE for a provider outage, FAILED_PRECONDITION for an unknown connector."""
    service = make_service()
    fake.fail_for_now = {"k1"}
    with pytest.raises(Unavailable):
        await service.send(TENANT, message("k1"))
    with pytest.raises(FailedPrecondition):
        await service.send(TENANT, message("k2", connector="nope"))
    with pytest.raises(ResourceExhausted):
        await service.send_many(TENANT, [message(f"k{i}") for i in range(501)])


async def test_an_in_doubt_send_is_resolved_by_the_provider_status(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """A send whose answer was lost is asked about through the connector's status, and the provider's answer is recorded; it is never sent again."""
    service = make_service()
    fake.in_doubt = {"k1", "k2"}
    fake.statuses[fake.provider_id("k1")] = "delivered"
    resolved, unknown = await service.send_many(TENANT, [message("k1"), message("k2")])
    again = await service.send_many(TENANT, [message("k1"), message("k2")])
    assert resolved.delivery is not None and resolved.delivery.status == S.DELIVERY_STATUS_DELIVERED
    assert unknown.delivery is not None and unknown.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    assert unknown.delivery.provider_message_id == fake.provider_id("k2")
    assert all(o.duplicate for o in again) and fake.sent == ["k1", "k2"]


async def test_a_claim_abandoned_mid_send_is_resolved_once_stale(
    make_service: Callable[..., DeliveryService], fake: FakeConnector, db: Database, clock: ManualClock,
) -> None:
    """A key claimed by a process that died mid-send answers SENDING while it may still be in flight, then IN_DOUBT, and is never sent."""
    service = make_service()
    await DeliveryStore(db).claim(TENANT, [Claim("k1", "d1", fake.name, "email", "s", "h")], clock.now())
    clock.advance(dt.timedelta(seconds=30))
    (early,) = await service.send_many(TENANT, [message("k1")])
    clock.advance(dt.timedelta(minutes=3))
    (late,) = await service.send_many(TENANT, [message("k1")])
    assert early.duplicate and early.delivery is not None and early.delivery.status == S.DELIVERY_STATUS_SENDING
    assert late.duplicate and late.delivery is not None and late.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    assert fake.sent == []


async def test_provider_calls_are_bounded_per_connector(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """With a concurrency of 3, a batch of 20 never has more than three sends in progress."""
    service = make_service(concurrency=3)
    fake.gate = asyncio.Event()
    batch = asyncio.create_task(service.send_many(TENANT, [message(f"k{i}") for i in range(20)]))
    await wait_for(lambda: fake.running == 3)
    await asyncio.sleep(0.05)  # room for a fourth send to start, were the bound not held
    assert fake.running == 3
    fake.gate.set()
    outcomes = await batch
    assert fake.max_running == 3 and len(fake.sent) == 20
    assert {o.delivery.status for o in outcomes if o.delivery} == {S.DELIVERY_STATUS_SENT}


async def test_a_repeat_while_the_first_is_sending_waits_for_its_result(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """A second call with a key the first is still sending calls nothing, waits, and returns the first delivery as a duplicate."""
    service = make_service()
    fake.gate = asyncio.Event()
    first = asyncio.create_task(service.send_many(TENANT, [message("k1")]))
    await wait_for(lambda: fake.running == 1)
    second = asyncio.create_task(service.send_many(TENANT, [message("k1"), message("k2")]))
    await wait_for(lambda: fake.running == 2)
    fake.gate.set()
    (one,), (repeat, other) = await first, await second
    assert repeat.duplicate and repeat.delivery == one.delivery and one.delivery is not None
    assert one.delivery.status == S.DELIVERY_STATUS_SENT and not other.duplicate
    assert sorted(fake.sent) == ["k1", "k2"]


async def test_a_connector_bug_leaves_the_delivery_in_doubt(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """A connector that raises something unexpected may have sent the message: the delivery is IN_DOUBT, the rest of the batch is sent."""
    service = make_service()
    fake.crash = {"k1"}
    broken, fine = await service.send_many(TENANT, [message("k1"), message("k2")])
    assert broken.delivery is not None and broken.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    assert fine.delivery is not None and fine.delivery.status == S.DELIVERY_STATUS_SENT


async def test_unknown_channels_and_connectors_fail_only_their_message(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """A message for a channel with no connector, or naming an unknown one, gets FAILED_PRECONDITION alone; nothing is recorded for it."""
    service = make_service()
    sms, named, ok = await service.send_many(TENANT, [message("k1", channel=S.CHANNEL_SMS), message("k2", connector="nope"), message("k3")])
    assert isinstance(sms.error, FailedPrecondition) and sms.error.reason == "NO_CONNECTOR" and sms.delivery is None
    assert isinstance(named.error, FailedPrecondition) and named.error.reason == "UNKNOWN_CONNECTOR"
    assert ok.delivery is not None and fake.sent == ["k3"]


async def test_close_waits_and_closes_the_connectors(make_service: Callable[..., DeliveryService], fake: FakeConnector) -> None:
    """Closing the service closes its connectors."""
    service = make_service()
    await service.send_many(TENANT, [message("k1")])
    await service.close()
    assert fake.closed
