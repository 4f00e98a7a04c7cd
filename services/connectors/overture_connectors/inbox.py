"""The in-app inbox: messages stored per subject, read and archived, and
announced live on a Redis pub/sub channel per subject, which ingest's
``GET /inbox/stream`` relays to client apps as Server-Sent Events.

Every query finds its rows by ``(tenant, subject_id)`` through an index
that holds only the rows it returns: the listing (newest first, by the
time-ordered message id) through ``connectors_inbox_messages_listed``
(archived messages left out), the unread count through
``connectors_inbox_messages_unread``, counting at most :data:`UNREAD_CAP`.
A message is written once per delivery (unique on the idempotency key), so
the in-app connector can always tell whether a send happened.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
import structlog
from google.protobuf import json_format, struct_pb2

from overture.connectors.v1 import inbox_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database, insert_ignore
from overture_runtime.redis import Keys

from .tables import inbox_messages as T

__all__ = ["UNREAD_CAP", "Inbox", "NewMessage", "to_proto"]

log = structlog.get_logger("overture.connectors.inbox")
UNREAD_CAP = 1000
"""The unread count stops counting here: a badge shows "999+" long before."""


@dataclass(frozen=True)
class NewMessage:
    """A message for the inbox. Contains personal data: never log it."""

    idempotency_key: str
    """The delivery's key."""
    subject_id: str
    """Whose inbox."""
    title: str
    """The title."""
    body: str
    """The body."""
    data: dict[str, Any]
    """Structured content."""
    category: int
    """The MessageCategory number."""


class Inbox:
    """Reads and writes inboxes; announces changes. Safe for concurrent use."""

    def __init__(self, db: Database, redis: aioredis.Redis | None, keys: Keys, clock: Clock, ids: IdGenerator) -> None:
        self._db, self._redis, self._keys, self._clock, self._ids = db, redis, keys, clock, ids

    async def deliver(self, tenant: str, message: NewMessage) -> str:
        """Store *message* once per idempotency key and announce it; returns its message id."""
        now = self._clock.now()
        row = dict(tenant=tenant, subject_id=message.subject_id, message_id=self._ids.new(), idempotency_key=message.idempotency_key,
                   title=message.title, body=message.body, data=json.dumps(message.data, separators=(",", ":")),
                   category=message.category, create_time=now, read_time=None, archive_time=None)
        async with self._db.begin() as conn:
            await conn.execute(insert_ignore(conn, T, index_elements=["tenant", "idempotency_key"]).values(**row))
        stored = await self.by_key(tenant, message.idempotency_key)
        assert stored is not None
        if stored.message_id == row["message_id"]:
            await self._announce(tenant, message.subject_id, {"type": "message", "message": _json(to_proto(stored))})
        return str(stored.message_id)

    async def by_key(self, tenant: str, idempotency_key: str) -> Any:
        """The message a delivery wrote, or None."""
        async with self._db.connect() as conn:
            return (await conn.execute(sa.select(T).where((T.c.tenant == tenant) & (T.c.idempotency_key == idempotency_key)))).first()

    async def list(self, tenant: str, subject_id: str, *, limit: int, before: str = "", after: str = "") -> list[Any]:
        """Up to *limit* messages not archived, newest first, older than *before* / newer than *after* (message ids)."""
        where = (T.c.tenant == tenant) & (T.c.subject_id == subject_id) & T.c.archive_time.is_(None)
        if before:
            where &= T.c.message_id < before
        if after:
            where &= T.c.message_id > after
        async with self._db.connect() as conn:
            return list((await conn.execute(sa.select(T).where(where).order_by(T.c.message_id.desc()).limit(limit))).all())

    async def unread_count(self, tenant: str, subject_id: str) -> int:
        """Unread messages not archived, counted up to :data:`UNREAD_CAP`."""
        # In message-id order: only the unread index gives that order, so the count walks it and stops at
        # the cap, even when statistics taken early say the subject is most of the table (a scan would stop "soon").
        unread = (sa.select(sa.literal(1)).where(_unread(tenant, subject_id)).order_by(T.c.message_id).limit(UNREAD_CAP)).subquery()
        async with self._db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(unread))).scalar_one())

    async def mark_read(self, tenant: str, subject_id: str, message_ids: Sequence[str]) -> int:
        """Mark *message_ids* read; returns the unread count afterwards."""
        return await self._change(tenant, subject_id, message_ids, T.c.read_time.is_(None), read_time=self._clock.now())

    async def mark_all_read(self, tenant: str, subject_id: str) -> int:
        """Mark every unread message read, :data:`UNREAD_CAP` at a time (found in message-id order through the
        unread index, then changed by key, like :meth:`mark_read`); returns how many."""
        now, marked = self._clock.now(), 0
        while True:
            async with self._db.begin() as conn:
                found = list((await conn.execute(sa.select(T.c.message_id).where(_unread(tenant, subject_id))
                                                 .order_by(T.c.message_id).limit(UNREAD_CAP))).scalars())
                if found:
                    await conn.execute(self._by_id(tenant, subject_id, T.c.read_time.is_(None)).values(read_time=now),
                                       [{"id": message_id} for message_id in found])
            marked += len(found)
            if len(found) < UNREAD_CAP:
                break
        if marked:
            await self._announce(tenant, subject_id, {"type": "unread", "unread_count": 0})
        return marked

    async def archive(self, tenant: str, subject_id: str, message_ids: Sequence[str]) -> int:
        """Archive *message_ids*; returns the unread count afterwards."""
        return await self._change(tenant, subject_id, message_ids, sa.true(), archive_time=self._clock.now())

    async def _change(self, tenant: str, subject_id: str, message_ids: Sequence[str], condition: Any, **values: Any) -> int:
        """Set *values* on each of *message_ids* not archived that meets *condition*, and announce the unread count.

        One statement per id, sent together (executemany): each finds its row by the full primary key.
        A single ``message_id IN (...)`` lets the planner, on statistics older than the subject's
        messages, read every message of the subject and filter (it prices the one-row lookups of an
        IN list above a walk of what it thinks are a few rows)."""
        async with self._db.begin() as conn:
            await conn.execute(self._by_id(tenant, subject_id, condition).values(**values),
                               [{"id": message_id} for message_id in dict.fromkeys(message_ids)])
        unread = await self.unread_count(tenant, subject_id)
        await self._announce(tenant, subject_id, {"type": "unread", "unread_count": unread})
        return unread

    @staticmethod
    def _by_id(tenant: str, subject_id: str, condition: Any) -> Any:
        """An UPDATE of one message of *subject_id* not archived that meets *condition*, by its id (the ``id`` parameter)."""
        return T.update().where((T.c.tenant == tenant) & (T.c.message_id == sa.bindparam("id")) & (T.c.subject_id == subject_id)
                                & T.c.archive_time.is_(None) & condition)

    async def _announce(self, tenant: str, subject_id: str, event: dict[str, Any]) -> None:
        """Publish a change; the store is the truth, so a failure only delays what a stream shows until it resumes."""
        if self._redis is None:
            return
        if event["type"] == "message":
            event["unread_count"] = await self.unread_count(tenant, subject_id)
        try:
            await self._redis.publish(self._keys.inbox_channel(tenant, subject_id), json.dumps(event, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - Redis down: streams resume from the store
            log.warning("inbox.announce_failed", tenant=tenant)


def _unread(tenant: str, subject_id: str) -> Any:
    return (T.c.tenant == tenant) & (T.c.subject_id == subject_id) & T.c.read_time.is_(None) & T.c.archive_time.is_(None)


def to_proto(row: Any) -> inbox_pb2.InboxMessage:
    """A stored row as an InboxMessage."""
    message = inbox_pb2.InboxMessage(message_id=row.message_id, subject_id=row.subject_id, title=row.title, body=row.body,
                                     category=row.category, idempotency_key=row.idempotency_key)
    data = struct_pb2.Struct()
    data.update(json.loads(row.data))
    message.data.CopyFrom(data)
    message.create_time.FromDatetime(row.create_time)
    if row.read_time is not None:
        message.read_time.FromDatetime(row.read_time)
    if row.archive_time is not None:
        message.archive_time.FromDatetime(row.archive_time)
    return message


def _json(message: inbox_pb2.InboxMessage) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
