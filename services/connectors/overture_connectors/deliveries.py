"""Delivering exactly once per idempotency key, a batch at a time.

The key is claimed durably (a row in SENDING) before the provider is
called. A repeat of the key, concurrent or retried, finds the claim and
returns the first delivery without calling anything. A send that failed
*before* the provider could accept it is marked retryable, and the next
repeat of the key may try again; a send whose outcome is unknown is asked
about through the connector's ``status`` and, if the provider cannot tell,
marked IN_DOUBT, never to be sent again automatically.

A batch costs one statement to claim its keys, one to read the keys seen
before (only when there are some) and one to record its outcomes. Within
one replica a repeat that arrives while the first call is still sending
waits for it and returns its result; across replicas it returns the claim
(SENDING). Which providers are called, and in what order, is the
:class:`~.dispatch.Dispatcher`'s: the route, breakers, rate limits and
concurrency bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import ProviderConfig
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, FieldViolation, NotFound, OvertureError, ResourceExhausted, Unavailable
from overture_runtime.protojson import struct_from_dict, struct_to_dict

from .dispatch import Dispatcher
from .plugin import Connector, OutboundMessage, has_status_lookup, reference_of
from .ratelimit import RateLimiter
from .store import Claim, DeliveryStore, Finish

__all__ = ["MAX_BATCH", "DeliveryService", "Outcome", "check_batch_size", "to_proto"]

log = structlog.get_logger("overture.connectors")
S = messaging_pb2
MAX_BATCH = 500
"""The most messages one batch may hold."""


@dataclass(frozen=True)
class Outcome:
    """What became of one message of a batch."""

    delivery: delivery_pb2.Delivery | None = None
    """The delivery, new or, for a repeated key, the first one; None when nothing was recorded."""
    duplicate: bool = False
    """True when the key was seen before and nothing was sent for this message."""
    error: OvertureError | None = None
    """Why the message was not delivered: what :meth:`DeliveryService.send` raises for it alone."""


@dataclass(frozen=True)
class _Pending:
    index: int
    message: delivery_pb2.Message
    route: tuple[Connector, ...]
    future: asyncio.Future[Outcome]


@dataclass(frozen=True)
class _Attempt:
    key: str
    finish: Finish
    error: OvertureError | None = None


def check_batch_size(size: int) -> None:
    """Raise :class:`ResourceExhausted` for a batch over :data:`MAX_BATCH`."""
    if size > MAX_BATCH:
        raise ResourceExhausted(
            f"at most {MAX_BATCH} messages per call; split the batch", reason="BATCH_TOO_LARGE",
            violations=[FieldViolation("messages", f"{size} messages; the limit is {MAX_BATCH}", "TOO_MANY")],
            metadata={"max_messages": str(MAX_BATCH)},
        )


class DeliveryService:
    """Sends messages through the configured connectors. One per event loop."""

    def __init__(
        self, db: Database, connectors: Mapping[str, Connector], routes: Mapping[messaging_pb2.Channel.ValueType, str | Sequence[str]],
        clock: Clock, ids: IdGenerator, *, concurrency: int = 16, providers: Mapping[str, ProviderConfig] | None = None,
        limiter: RateLimiter | None = None, stale_claim: dt.timedelta = dt.timedelta(minutes=2),
        recheck: dt.timedelta | None = None,
    ) -> None:
        self._store = DeliveryStore(db)
        self.connectors = connectors
        self.routes: dict[messaging_pb2.Channel.ValueType, tuple[str, ...]] = {
            channel: (route,) if isinstance(route, str) else tuple(route) for channel, route in routes.items() if route}
        """Per channel, the providers to try in order; the first is the channel's default."""
        self.defaults = {channel: route[0] for channel, route in self.routes.items()}
        """Per channel, its default provider."""
        self._clock = clock
        self._ids = ids
        self.dispatcher = Dispatcher(connectors, providers or {}, clock, limiter=limiter, concurrency=concurrency)
        """Calls the providers: routes, breakers, rate limits."""
        self._stale_claim = stale_claim
        self._recheck = recheck
        self._inflight: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def resolve(self, channel: messaging_pb2.Channel.ValueType, name: str) -> tuple[Connector, ...]:
        """The route of a message: the provider *name* alone, or the channel's route."""
        if name:
            connector = self.connectors.get(name)
            if connector is None or connector.channel != channel:
                raise FailedPrecondition(f"no connector {name!r} for channel {S.Channel.Name(channel)}", reason="UNKNOWN_CONNECTOR")
            return (connector,)
        route = self.routes.get(channel)
        if not route:
            raise FailedPrecondition(f"no connector is configured for {S.Channel.Name(channel)}", reason="NO_CONNECTOR")
        return tuple(self.connectors[n] for n in route)

    async def send(self, tenant: str, message: delivery_pb2.Message) -> tuple[delivery_pb2.Delivery, bool]:
        """Deliver *message* at most once; returns the delivery and whether it was a repeat."""
        (outcome,) = await self.send_many(tenant, [message])
        if outcome.error is not None:
            raise outcome.error
        assert outcome.delivery is not None
        return outcome.delivery, outcome.duplicate

    async def send_many(self, tenant: str, messages: Sequence[delivery_pb2.Message]) -> list[Outcome]:
        """Deliver each of *messages* (valid ones) at most once; one outcome per message, in order."""
        check_batch_size(len(messages))
        outcomes: list[Outcome | None] = [None] * len(messages)
        mine: dict[str, _Pending] = {}
        waits: list[tuple[int, asyncio.Future[Outcome]]] = []
        loop = asyncio.get_running_loop()
        for index, message in enumerate(messages):
            try:
                route = self.resolve(message.channel, message.connector)
            except OvertureError as error:
                outcomes[index] = Outcome(error=error)
                continue
            key = message.idempotency_key
            first = mine.get(key)
            running = first.future if first else self._inflight.get((tenant, key))
            if running is not None:  # earlier in this batch, or in a call still sending it
                waits.append((index, running))
                continue
            future: asyncio.Future[Outcome] = loop.create_future()
            self._inflight[(tenant, key)] = future
            mine[key] = _Pending(index, message, route, future)
        if mine:
            task = asyncio.create_task(self._deliver(tenant, list(mine.values())))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Shielded: a caller that gives up (its deadline) must not leave
            # claimed keys without their outcome.
            await asyncio.shield(task)
        for pending in mine.values():
            outcomes[pending.index] = pending.future.result()
        for index, future in waits:
            first_outcome = await future
            outcomes[index] = dataclasses.replace(first_outcome, duplicate=first_outcome.delivery is not None)
        return [outcome or Outcome() for outcome in outcomes]

    async def get(self, tenant: str, *, delivery_id: str = "", idempotency_key: str = "") -> delivery_pb2.Delivery:
        """A delivery by id or idempotency key."""
        row = await self._store.get(tenant, delivery_id=delivery_id, idempotency_key=idempotency_key)
        if row is None:
            raise NotFound("no such delivery", reason="DELIVERY_NOT_FOUND")
        return to_proto(row, with_response=True)

    async def wait_idle(self) -> None:
        """Wait until no batch is in flight, including batches whose callers gave up."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Wait for the batches in flight, then close the connectors."""
        await self.wait_idle()
        for connector in self.connectors.values():
            await connector.close()

    async def _deliver(self, tenant: str, pending: list[_Pending]) -> None:
        try:
            results = await self._claim_send_record(tenant, pending)
            for item in pending:
                item.future.set_result(results[item.message.idempotency_key])
        except Exception as error:
            for item in pending:
                if not item.future.done():
                    item.future.set_exception(error)
                    item.future.exception()  # the caller re-raises it from the task; repeats waiting still get it
            raise
        except BaseException:
            for item in pending:
                item.future.cancel()
            raise
        finally:
            for item in pending:
                self._inflight.pop((tenant, item.message.idempotency_key), None)

    async def _claim_send_record(self, tenant: str, pending: list[_Pending]) -> dict[str, Outcome]:
        now = self._clock.now()
        claims = [
            Claim(idempotency_key=p.message.idempotency_key, delivery_id=self._ids.new(), connector=p.route[0].name,
                  channel=_channel(p.message.channel), subject_id=p.message.subject_id, address_hash=_address_hash(p.message.address))
            for p in pending
        ]
        claimed = await self._store.claim(tenant, claims, now)
        results: dict[str, Outcome] = {}
        seen = [p.message.idempotency_key for p in pending if p.message.idempotency_key not in claimed]
        if seen:
            results.update(await self._repeats(tenant, seen, now))
        to_send = [p for p in pending if p.message.idempotency_key in claimed]
        if to_send:
            attempts = await asyncio.gather(*(self._attempt(tenant, p, claimed[p.message.idempotency_key]) for p in to_send))
            rows = await self._store.finish(tenant, [a.finish for a in attempts], self._clock.now())
            missing = [a.key for a in attempts if a.key not in rows]
            if missing:  # finished by someone else meanwhile: theirs stands
                rows.update(await self._store.read(tenant, missing))
            for attempt in attempts:
                row = rows.get(attempt.key)
                results[attempt.key] = Outcome(delivery=to_proto(row, with_response=True) if row else None, error=attempt.error or _unreadable(row))
        statuses = Counter(S.DeliveryStatus.Name(o.delivery.status) if o.delivery else "NONE" for o in results.values())
        log.info("deliveries.batch", messages=len(pending), sent_now=len(to_send), repeats=len(seen), statuses=dict(statuses))
        return results

    async def _repeats(self, tenant: str, keys: list[str], now: dt.datetime) -> dict[str, Outcome]:
        """The first deliveries of keys seen before; a claim abandoned mid-send is resolved first."""
        rows = await self._store.read(tenant, keys)
        stale = [row for row in rows.values() if row.status == "sending" and now - row.update_time >= self._stale_claim]
        if stale:
            resolved = []
            for row in stale:
                connector = self.connectors.get(row.connector)
                reference = reference_of(connector, tenant, row.idempotency_key, row.provider_message_id)
                status = await self.dispatcher.ask(connector, reference)
                resolved.append(Finish(row=row, status=status or "in_doubt", provider_message_id=reference if status else "",
                                       error="" if status else "the sending process stopped mid-send; the provider cannot confirm",
                                       next_check=None if status else self._next_check(connector, now)))
            rows.update(await self._store.finish(tenant, resolved, self._clock.now()))
        return {key: Outcome(delivery=to_proto(rows[key], with_response=True), duplicate=True) if key in rows else Outcome(error=_unreadable(None))
                for key in keys}

    def _next_check(self, connector: Connector | None, now: dt.datetime) -> dt.datetime | None:
        """When the sweeper should ask *connector*'s provider again about an in-doubt delivery; None: it cannot be asked."""
        return now + self._recheck if self._recheck is not None and has_status_lookup(connector) else None

    async def _attempt(self, tenant: str, pending: _Pending, row: Any) -> _Attempt:
        """Hand a claimed message to its route; the outcome to record."""
        message = pending.message
        key = message.idempotency_key
        outbound = OutboundMessage(
            idempotency_key=key, tenant=tenant, address=message.address, subject=message.content.subject,
            text_body=message.content.text_body, html_body=message.content.html_body,
            data=struct_to_dict(message.content.data), tags=tuple(message.tags), metadata=dict(message.metadata),
            subject_id=message.subject_id, category=message.category, consent_purpose=message.consent_purpose,
            track_opens=message.email.track_opens, track_clicks=message.email.track_clicks,
            push_ttl=message.push.ttl.ToTimedelta() if message.push.HasField("ttl") else None, push_urgency=message.push.urgency,
            push_topic=message.push.topic,
            url=message.webhook.url, keep_response=message.webhook.keep_response, data_as_body=message.webhook.data_as_body,
            audience_id=message.audience.audience_id, audience_operation=_operation(message.audience.operation),
            members=tuple((m.email, m.phone_number) for m in message.audience.members),
        )
        done = await self.dispatcher.dispatch(outbound, pending.route, delivery_id=row.delivery_id)
        next_check = self._next_check(self.connectors.get(done.connector), self._clock.now()) if done.status == "in_doubt" else None
        finish = Finish(row=row, status=done.status, retryable=done.retryable, error=done.error,
                        provider_message_id=done.provider_message_id, connector=done.connector, calls=done.calls,
                        response=done.response, segments=done.segments, next_check=next_check)
        if not done.retryable:
            return _Attempt(key, finish)
        return _Attempt(key, finish, Unavailable(done.error, reason=done.reason, retry_after=done.retry_after))


def _operation(operation: delivery_pb2.AudienceOperation.ValueType) -> str:
    """An AudienceOperation as ``add``/``remove`` ("" when unset)."""
    if operation == delivery_pb2.AUDIENCE_OPERATION_ADD:
        return "add"
    return "remove" if operation == delivery_pb2.AUDIENCE_OPERATION_REMOVE else ""


def _unreadable(row: Any) -> OvertureError | None:
    if row is not None:
        return None
    return Unavailable("the delivery was recorded but could not be read back; ask again", reason="DELIVERY_UNREADABLE",
                       retry_after=dt.timedelta(seconds=1))


def _address_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def _channel(channel: messaging_pb2.Channel.ValueType) -> str:
    return S.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def _status(name: str) -> messaging_pb2.DeliveryStatus.ValueType:
    return S.DeliveryStatus.Value(f"DELIVERY_STATUS_{name.upper()}")


def to_proto(row: Any, *, with_response: bool = False) -> delivery_pb2.Delivery:
    """A delivery row as its proto; with the kept response (``Delivery.response``) when *with_response*."""
    delivery = delivery_pb2.Delivery(
        delivery_id=row.delivery_id, idempotency_key=row.idempotency_key, connector=row.connector,
        channel=S.Channel.Value(f"CHANNEL_{row.channel.upper()}"), status=_status(row.status),
        provider_message_id=row.provider_message_id, attempts=row.attempts, last_error=row.last_error,
        subject_id=row.subject_id, segments=row.segments,
    )
    delivery.create_time.FromDatetime(row.create_time)
    delivery.update_time.FromDatetime(row.update_time)
    if with_response and row.response is not None:
        delivery.response.CopyFrom(struct_from_dict(_json(row.response)))
    return delivery


def _json(value: Any) -> dict[str, Any]:
    """A JSON column's value: a dict, or its text when read through a plain text query."""
    return value if isinstance(value, dict) else orjson.loads(value)
