"""Unit tests of fallback routes (:mod:`overture_connectors.dispatch`): a send moves down its
channel's route when a breaker is open or a failure is retryable, never after an in-doubt failure."""

from __future__ import annotations

import datetime as dt

from overture.common.v1 import messaging_pb2
from overture_connectors.breaker import CircuitState
from overture_connectors.deliveries import DeliveryService
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.config import BreakerConfig, ProviderConfig
from overture_runtime.db import Database

from .conftest import message
from .fakes import FakeConnector

S = messaging_pb2
TENANT = "acme"


def service(db: Database, clock: ManualClock, primary: FakeConnector, backup: FakeConnector, *, threshold: int = 3) -> DeliveryService:
    """Email routed primary then backup, each with a breaker opening after *threshold* failures for 60 s."""
    breaker = BreakerConfig(failure_threshold=threshold, open_seconds=60)
    providers = {c.name: ProviderConfig(name=c.name, kind="fake", breaker=breaker) for c in (primary, backup)}
    return DeliveryService(db, {primary.name: primary, backup.name: backup}, {S.CHANNEL_EMAIL: (primary.name, backup.name)}, clock,
                           IdGenerator(), providers=providers)


async def test_a_retryable_failure_moves_the_send_to_the_next_provider(db: Database, clock: ManualClock) -> None:
    """The primary refusing for now hands the message to the backup, which sends it; the delivery names the backup and counts two calls."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    primary.fail_for_now.add("k1")
    delivery, _ = await service(db, clock, primary, backup).send(TENANT, message("k1"))
    assert (delivery.status, delivery.connector, delivery.attempts) == (S.DELIVERY_STATUS_SENT, "backup", 2)
    assert (primary.sent, backup.sent) == ([], ["k1"])


async def test_an_in_doubt_send_never_moves_to_the_next_provider(db: Database, clock: ManualClock) -> None:
    """A primary that may have taken the message leaves it IN_DOUBT on the primary; the backup is never called, now or on a repeat."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    primary.in_doubt.add("k1")
    deliveries = service(db, clock, primary, backup)
    delivery, _ = await deliveries.send(TENANT, message("k1"))
    again, duplicate = await deliveries.send(TENANT, message("k1"))
    assert (delivery.status, delivery.connector) == (S.DELIVERY_STATUS_IN_DOUBT, "primary")
    assert duplicate and again.status == S.DELIVERY_STATUS_IN_DOUBT
    assert (primary.sent, backup.sent) == (["k1"], [])


async def test_a_permanent_refusal_is_not_tried_elsewhere(db: Database, clock: ManualClock) -> None:
    """A message the primary refuses for good fails; another provider would refuse it too, so the backup is not called."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    primary.fail_for_good.add("k1")
    delivery, _ = await service(db, clock, primary, backup).send(TENANT, message("k1"))
    assert (delivery.status, delivery.connector) == (S.DELIVERY_STATUS_FAILED, "primary")
    assert backup.sent == []


async def test_an_open_breaker_skips_its_provider_until_a_half_open_trial_succeeds(db: Database, clock: ManualClock) -> None:
    """Three failures open the primary's circuit; later sends go straight to the backup; after 60 s one trial goes to the primary and closes it."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    deliveries = service(db, clock, primary, backup)
    primary.fail_for_now.update({"a1", "a2", "a3"})
    for key in ("a1", "a2", "a3"):
        await deliveries.send(TENANT, message(key))
    assert deliveries.dispatcher.breakers["primary"].state is CircuitState.OPEN
    delivery, _ = await deliveries.send(TENANT, message("b1"))
    assert (delivery.connector, delivery.attempts) == ("backup", 1)
    clock.advance(dt.timedelta(seconds=60))
    assert deliveries.dispatcher.breakers["primary"].state is CircuitState.HALF_OPEN
    delivery, _ = await deliveries.send(TENANT, message("c1"))
    assert delivery.connector == "primary"
    assert deliveries.dispatcher.breakers["primary"].state is CircuitState.CLOSED
    assert primary.sent == ["c1"] and backup.sent == ["a1", "a2", "a3", "b1"]


async def test_when_every_provider_is_down_the_send_fails_retryably_and_is_sent_once_later(db: Database, clock: ManualClock) -> None:
    """Both providers failing for now leaves the key retryable (UNAVAILABLE with a delay); sent again once one is up, it is delivered once."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    primary.fail_for_now.add("k1")
    backup.fail_for_now.add("k1")
    deliveries = service(db, clock, primary, backup, threshold=100)
    (outcome,) = await deliveries.send_many(TENANT, [message("k1")])
    assert outcome.error is not None and outcome.error.reason == "PROVIDER_UNAVAILABLE"
    assert outcome.delivery is not None and outcome.delivery.status == S.DELIVERY_STATUS_FAILED
    backup.fail_for_now.clear()
    delivery, duplicate = await deliveries.send(TENANT, message("k1"))
    assert (delivery.status, delivery.connector, duplicate) == (S.DELIVERY_STATUS_SENT, "backup", False)
    assert delivery.attempts == 4
    assert backup.sent == ["k1"]


async def test_with_every_circuit_open_the_last_provider_is_still_tried_and_its_success_closes_it(
        db: Database, clock: ManualClock) -> None:
    """Both circuits open: the primary is skipped, the route's last provider is tried as a last resort, and its success closes its circuit."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    deliveries = service(db, clock, primary, backup, threshold=1)
    deliveries.dispatcher.breakers["primary"].failure()
    deliveries.dispatcher.breakers["backup"].failure()
    delivery, _ = await deliveries.send(TENANT, message("k1"))
    assert (delivery.status, delivery.connector, delivery.attempts) == (S.DELIVERY_STATUS_SENT, "backup", 1)
    assert primary.sent == [] and backup.sent == ["k1"]
    assert deliveries.dispatcher.breakers["backup"].state is CircuitState.CLOSED
    assert deliveries.dispatcher.breakers["primary"].state is CircuitState.OPEN


async def test_a_failing_last_resort_call_fails_retryably_with_the_breakers_delay(db: Database, clock: ManualClock) -> None:
    """Both circuits open and the last resort failing for now: the send is retryable, and the delay is the soonest reopening."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    backup.fail_for_now.add("k1")
    deliveries = service(db, clock, primary, backup, threshold=1)
    deliveries.dispatcher.breakers["primary"].failure()
    clock.advance(dt.timedelta(seconds=20))
    deliveries.dispatcher.breakers["backup"].failure()
    (outcome,) = await deliveries.send_many(TENANT, [message("k1")])
    assert outcome.error is not None and outcome.error.reason == "PROVIDER_UNAVAILABLE"
    assert outcome.error.retry_after == dt.timedelta(seconds=5)
    assert deliveries.dispatcher.breakers["backup"].retry_after() == dt.timedelta(seconds=60)
    assert primary.sent == []


async def test_a_message_naming_a_provider_uses_that_provider_alone(db: Database, clock: ManualClock) -> None:
    """Message.connector pins the provider: its retryable failure does not fall over to the rest of the route."""
    primary, backup = FakeConnector("primary"), FakeConnector("backup")
    backup.fail_for_now.add("k1")
    (outcome,) = await service(db, clock, primary, backup).send_many(TENANT, [message("k1", connector="backup")])
    assert outcome.delivery is not None and outcome.delivery.connector == "backup"
    assert outcome.error is not None and primary.sent == []
