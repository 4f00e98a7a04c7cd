"""Unit tests of the sweeper on SQLite (what ``overture dev`` runs): abandoned claims and in-doubt deliveries are settled
through the provider's status lookup, on the injected clock, with backoff, and never sent again."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from overture.common.v1 import messaging_pb2
from overture_connectors.deliveries import DeliveryService
from overture_connectors.inbox import Inbox, NewMessage
from overture_connectors.inbox_connector import InAppConnector
from overture_connectors.store import Claim, DeliveryStore
from overture_connectors.sweeper import MAX_WAIT, Sweeper, next_wait
from overture_connectors.tables import deliveries, status_outbox
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.config import Settings
from overture_runtime.db import Database
from overture_runtime.redis import Keys

from .conftest import message
from .fakes import FakeConnector

S = messaging_pb2
TENANT = "acme"


class LookingUp(FakeConnector):
    """The fake, with a status lookup that knows a message by a reference derived from its key."""

    status_lookup = True

    def reference(self, tenant: str, idempotency_key: str) -> str:
        return self.provider_id(idempotency_key)


def settings(**overrides: Any) -> Settings:
    """Settings with the sweeper's knobs."""
    values: dict[str, Any] = dict(database_url="sqlite+aiosqlite://", redis_url="redis://unused", connector_stale_claim_seconds=120,
                                  connector_recheck_seconds=60, connector_recheck_attempts=3)
    values.update(overrides)
    return Settings(**values)


def build(db: Database, clock: ManualClock, fake: FakeConnector | InAppConnector, **overrides: Any) -> tuple[DeliveryService, Sweeper]:
    """A DeliveryService over *fake* and its sweeper."""
    config = settings(**overrides)
    service = DeliveryService(db, {fake.name: fake}, {S.CHANNEL_EMAIL: fake.name}, clock, IdGenerator(),
                              stale_claim=dt.timedelta(seconds=config.connector_stale_claim_seconds),
                              recheck=dt.timedelta(seconds=config.connector_recheck_seconds))
    return service, Sweeper(db=db, connectors=service.connectors, dispatcher=service.dispatcher, clock=clock, ids=IdGenerator(),
                            settings=config)


async def row(db: Database, key: str) -> Any:
    """The delivery row of *key*."""
    async with db.connect() as conn:
        return (await conn.execute(sa.select(deliveries).where(deliveries.c.idempotency_key == key))).one()


async def reports(db: Database) -> list[tuple[str, str]]:
    """The staged status reports, as (key, status)."""
    async with db.connect() as conn:
        return [(r.idempotency_key, r.status) for r in (await conn.execute(sa.select(status_outbox))).all()]


async def abandon(db: Database, clock: ManualClock, key: str) -> None:
    """Claim *key* as a process that then died would have."""
    await DeliveryStore(db).claim(TENANT, [Claim(key, f"d-{key}", "fake", "email", "s", "h")], clock.now())


async def test_an_abandoned_claim_is_settled_by_the_status_lookup_once_stale_and_never_sent(db: Database, clock: ManualClock) -> None:
    """A claim left SENDING is untouched while younger than the stale age, then settled by the provider's answer for the reference
    derived from its key (recorded on the delivery, reported to the orchestrator); nothing is sent."""
    fake = LookingUp()
    fake.statuses[fake.provider_id("k1")] = "delivered"
    _, sweeper = build(db, clock, fake)
    await abandon(db, clock, "k1")
    clock.advance(dt.timedelta(seconds=90))
    young = await sweeper.sweep()
    clock.advance(dt.timedelta(seconds=60))
    swept = await sweeper.sweep()
    settled = await row(db, "k1")
    assert young.stale_claims == 0 and (swept.stale_claims, swept.outcomes) == (1, {"delivered": 1})
    assert (settled.status, settled.provider_message_id) == ("delivered", fake.provider_id("k1"))
    assert await reports(db) == [("k1", "delivered")] and fake.sent == []


async def test_an_abandoned_claim_without_a_lookup_becomes_in_doubt_and_is_not_asked_again(db: Database, clock: ManualClock) -> None:
    """A connector without a status lookup leaves the stale claim IN_DOUBT, with no next check and nothing reported or sent."""
    fake = FakeConnector()
    _, sweeper = build(db, clock, fake)
    await abandon(db, clock, "k1")
    clock.advance(dt.timedelta(minutes=5))
    swept = await sweeper.sweep()
    doubtful = await row(db, "k1")
    assert swept.outcomes == {"in_doubt": 1}
    assert (doubtful.status, doubtful.next_check_time) == ("in_doubt", None) and "stopped mid-send" in doubtful.last_error
    assert await reports(db) == [] and fake.sent == [] and (await sweeper.sweep()).stale_claims == 0


async def test_an_in_doubt_delivery_is_asked_again_with_backoff_until_settled(db: Database, clock: ManualClock) -> None:
    """An in-doubt send is asked about again after 60 s, then 120 s, then 240 s; nothing happens before each is due; once the provider
    knows, the delivery is settled and reported, and never sent again."""
    fake = LookingUp()
    fake.in_doubt.add("k1")
    service, sweeper = build(db, clock, fake, connector_recheck_attempts=8)
    (first,) = await service.send_many(TENANT, [message("k1")])
    assert first.delivery is not None and first.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    seen = []
    for wait in (59, 1, 119, 1, 239, 1):
        clock.advance(dt.timedelta(seconds=wait))
        seen.append((await sweeper.sweep()).rechecked)
        if wait == 239:
            fake.statuses[fake.provider_id("k1")] = "sent"
    assert seen == [0, 1, 0, 1, 0, 1]
    settled = await row(db, "k1")
    assert (settled.status, settled.checks, settled.next_check_time) == ("sent", 2, None)
    assert await reports(db) == [("k1", "sent")] and fake.sent == ["k1"]
    (again,) = await service.send_many(TENANT, [message("k1")])
    assert again.duplicate and fake.sent == ["k1"]


async def test_the_sweeper_gives_up_after_its_attempts_and_leaves_the_delivery_to_an_operator(db: Database, clock: ManualClock) -> None:
    """After connector_recheck_attempts questions the provider could not answer, the delivery stays IN_DOUBT with no next check."""
    fake = LookingUp()
    fake.in_doubt.add("k1")
    service, sweeper = build(db, clock, fake, connector_recheck_attempts=3)
    await service.send_many(TENANT, [message("k1")])
    outcomes = []
    for _ in range(5):
        clock.advance(MAX_WAIT)
        outcomes.append((await sweeper.sweep()).outcomes)
    assert outcomes == [{"unknown": 1}, {"unknown": 1}, {"gave_up": 1}, {}, {}]
    left = await row(db, "k1")
    assert (left.status, left.checks, left.next_check_time) == ("in_doubt", 3, None)


async def test_a_status_settled_elsewhere_meanwhile_stands(db: Database, clock: ManualClock) -> None:
    """When an operator settles the delivery while the sweeper is asking the provider, the operator's status stands."""

    class Resolved(LookingUp):
        armed = False

        async def status(self, provider_message_id: str) -> str | None:
            if not self.armed:  # the send's own question, right after the answer was lost
                return None
            async with db.begin() as conn:
                await conn.execute(deliveries.update().where(deliveries.c.idempotency_key == "k1").values(status="failed"))
            return "sent"

    fake = Resolved()
    fake.in_doubt.add("k1")
    service, sweeper = build(db, clock, fake)
    await service.send_many(TENANT, [message("k1")])
    fake.armed = True
    clock.advance(dt.timedelta(seconds=60))
    swept = await sweeper.sweep()
    assert swept.outcomes == {"settled_elsewhere": 1} and (await row(db, "k1")).status == "failed" and await reports(db) == []


async def test_a_slow_sender_that_records_after_the_sweeper_marked_its_claim_in_doubt_wins(db: Database, clock: ManualClock) -> None:
    """A send slower than the stale age is marked IN_DOUBT by the sweeper, and its real outcome, recorded later, replaces that."""
    fake = FakeConnector()
    fake.gate = asyncio.Event()
    service, sweeper = build(db, clock, fake)
    sending = asyncio.create_task(service.send_many(TENANT, [message("k1")]))
    while not fake.running:
        await asyncio.sleep(0.005)
    clock.advance(dt.timedelta(minutes=3))
    assert (await sweeper.sweep()).outcomes == {"in_doubt": 1}
    fake.gate.set()
    (outcome,) = await sending
    assert outcome.delivery is not None and outcome.delivery.status == S.DELIVERY_STATUS_SENT
    assert (await row(db, "k1")).status == "sent"


@pytest.mark.parametrize(("checks", "wait"), [(0, 60), (1, 120), (5, 1920), (9, 21_600), (500, 21_600)])
def test_the_wait_doubles_up_to_six_hours(checks: int, wait: int) -> None:
    """next_wait doubles the first wait per question already asked, capped at six hours."""
    assert next_wait(dt.timedelta(seconds=60), checks) == dt.timedelta(seconds=wait)


async def test_abandoned_in_app_claims_are_settled_by_the_inbox_itself(db: Database, clock: ManualClock) -> None:
    """The in-app kind opts into the lookups: of two claims whose process stopped mid-send, the one whose inbox row was written is
    settled SENT and the other FAILED (nothing else can write it), each reported, none written again, and the inbox holds one
    message."""
    inbox = Inbox(db, None, Keys("t"), clock, IdGenerator())
    in_app = InAppConnector(name="fake", inbox=inbox)
    _, sweeper = build(db, clock, in_app)
    await abandon(db, clock, "written")
    await abandon(db, clock, "lost")
    await inbox.deliver(TENANT, NewMessage(idempotency_key="written", subject_id="s", title="Hi", body="Hello", data={}, category=0))
    clock.advance(dt.timedelta(minutes=5))
    swept = await sweeper.sweep()
    assert (swept.stale_claims, swept.outcomes) == (2, {"sent": 1, "failed": 1})
    assert ((await row(db, "written")).status, (await row(db, "lost")).status) == ("sent", "failed")
    assert (await row(db, "written")).provider_message_id == f"{TENANT}/written"
    assert sorted(await reports(db)) == [("lost", "failed"), ("written", "sent")]
    assert await inbox.by_key(TENANT, "lost") is None and (await sweeper.sweep()).stale_claims == 0
