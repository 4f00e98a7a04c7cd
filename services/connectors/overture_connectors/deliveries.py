"""Delivering exactly once per idempotency key.

The key is claimed durably (a row in SENDING) before the provider is
called. A repeat of the key, concurrent or retried, finds the claim and
returns the first delivery without calling anything. A send that failed
*before* the provider could accept it is marked retryable, and the next
repeat of the key may try again; a send whose outcome is unknown is marked
IN_DOUBT and is resolved only through the provider's status lookup.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
import structlog

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, insert_ignore
from overture_runtime.errors import FailedPrecondition, NotFound, Unavailable
from overture_runtime.protojson import struct_to_dict

from .plugin import Connector, InDoubt, OutboundMessage, PermanentFailure, TransientFailure
from .tables import deliveries

__all__ = ["DeliveryService"]

log = structlog.get_logger("overture.connectors")
S = messaging_pb2
_STALE_CLAIM = dt.timedelta(minutes=2)


def _status(name: str) -> messaging_pb2.DeliveryStatus.ValueType:
    return S.DeliveryStatus.Value(f"DELIVERY_STATUS_{name.upper()}")


def _name(status: messaging_pb2.DeliveryStatus.ValueType) -> str:
    return S.DeliveryStatus.Name(status).removeprefix("DELIVERY_STATUS_").lower()


class DeliveryService:
    """Sends messages through the configured connectors."""

    def __init__(self, db: Database, connectors: Mapping[str, Connector], defaults: Mapping[messaging_pb2.Channel.ValueType, str], clock: Clock, ids: IdGenerator) -> None:
        self._db = db
        self.connectors = connectors
        self.defaults = defaults
        self._clock = clock
        self._ids = ids

    def resolve(self, channel: messaging_pb2.Channel.ValueType, name: str) -> Connector:
        """The connector for a message: *name*, or the channel's default."""
        if name:
            connector = self.connectors.get(name)
            if connector is None or connector.channel != channel:
                raise FailedPrecondition(f"no connector {name!r} for channel {S.Channel.Name(channel)}", reason="UNKNOWN_CONNECTOR")
            return connector
        default = self.defaults.get(channel)
        if default is None:
            raise FailedPrecondition(f"no connector is configured for {S.Channel.Name(channel)}", reason="NO_CONNECTOR")
        return self.connectors[default]

    async def send(self, tenant: str, message: delivery_pb2.Message) -> tuple[delivery_pb2.Delivery, bool]:
        """Deliver *message* at most once; returns the delivery and whether it was a repeat."""
        connector = self.resolve(message.channel, message.connector)
        now = self._clock.now()
        key = message.idempotency_key
        async with self._db.begin() as conn:
            claimed = await conn.execute(insert_ignore(conn, deliveries, index_elements=["tenant", "idempotency_key"]).values(
                tenant=tenant, idempotency_key=key, delivery_id=self._ids.new(), connector=connector.name,
                channel=_channel(message.channel), subject_id=message.subject_id,
                address_hash=hashlib.sha256(message.address.strip().lower().encode()).hexdigest(),
                status="sending", retryable=False, provider_message_id="", attempts=1, last_error="",
                create_time=now, update_time=now,
            ))
        if claimed.rowcount == 0:
            row = await self._retake(tenant, key, now)
            if row is None:  # a finished or in-flight delivery: return it, call nothing
                return await self._resolve_doubt(tenant, await self.get(tenant, idempotency_key=key)), True
        outbound = OutboundMessage(
            idempotency_key=key, tenant=tenant, address=message.address, subject=message.content.subject,
            text_body=message.content.text_body, html_body=message.content.html_body,
            data=struct_to_dict(message.content.data), tags=tuple(message.tags), metadata=dict(message.metadata),
        )
        try:
            result = await connector.send(outbound)
        except TransientFailure as error:
            await self._finish(tenant, key, status="failed", retryable=True, error=str(error))
            raise Unavailable(f"{connector.name}: {error}", reason="PROVIDER_UNAVAILABLE", retry_after=dt.timedelta(seconds=5)) from None
        except PermanentFailure as error:
            await self._finish(tenant, key, status="failed", error=str(error))
        except InDoubt as error:
            await self._finish(tenant, key, status="in_doubt", error=str(error))
        else:
            await self._finish(tenant, key, status="sent", provider_message_id=result.provider_message_id)
        delivery = await self.get(tenant, idempotency_key=key)
        log.info("delivery.attempted", connector=connector.name, status=_name(delivery.status), delivery_id=delivery.delivery_id)
        return delivery, False

    async def get(self, tenant: str, *, delivery_id: str = "", idempotency_key: str = "") -> delivery_pb2.Delivery:
        """A delivery by id or idempotency key."""
        t = deliveries
        where = (t.c.tenant == tenant) & ((t.c.delivery_id == delivery_id) if delivery_id else (t.c.idempotency_key == idempotency_key))
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(t).where(where))).first()
        if row is None:
            raise NotFound("no such delivery", reason="DELIVERY_NOT_FOUND")
        return _to_proto(row)

    async def _retake(self, tenant: str, key: str, now: dt.datetime) -> Any:
        """Claim a retryable failed delivery for another attempt; None if not retryable."""
        t = deliveries
        async with self._db.begin() as conn:
            result = await conn.execute(
                t.update()
                .where((t.c.tenant == tenant) & (t.c.idempotency_key == key) & (t.c.status == "failed") & t.c.retryable)
                .values(status="sending", retryable=False, attempts=t.c.attempts + 1, update_time=now)
            )
        return True if result.rowcount else None

    async def _resolve_doubt(self, tenant: str, delivery: delivery_pb2.Delivery) -> delivery_pb2.Delivery:
        """A claim left in SENDING by a crashed process is in doubt: ask the provider."""
        if delivery.status != S.DELIVERY_STATUS_SENDING:
            return delivery
        if self._clock.now() - delivery.update_time.ToDatetime(tzinfo=dt.UTC) < _STALE_CLAIM:
            return delivery  # probably still in flight in another request
        connector = self.connectors.get(delivery.connector)
        status = await connector.status(delivery.provider_message_id) if connector and delivery.provider_message_id else None
        await self._finish(tenant, delivery.idempotency_key, status=status or "in_doubt",
                           error="" if status else "the sending process stopped mid-send; the provider cannot confirm")
        return await self.get(tenant, idempotency_key=delivery.idempotency_key)

    async def _finish(self, tenant: str, key: str, *, status: str, retryable: bool = False, error: str = "", provider_message_id: str = "") -> None:
        t = deliveries
        values: dict[str, Any] = dict(status=status, retryable=retryable, last_error=error, update_time=self._clock.now())
        if provider_message_id:
            values["provider_message_id"] = provider_message_id
        async with self._db.begin() as conn:
            await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.idempotency_key == key)).values(**values))


def _channel(channel: messaging_pb2.Channel.ValueType) -> str:
    return S.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def _to_proto(row: Any) -> delivery_pb2.Delivery:
    delivery = delivery_pb2.Delivery(
        delivery_id=row.delivery_id, idempotency_key=row.idempotency_key, connector=row.connector,
        channel=S.Channel.Value(f"CHANNEL_{row.channel.upper()}"), status=_status(row.status),
        provider_message_id=row.provider_message_id, attempts=row.attempts, last_error=row.last_error,
        subject_id=row.subject_id,
    )
    delivery.create_time.FromDatetime(row.create_time)
    delivery.update_time.FromDatetime(row.update_time)
    return delivery
