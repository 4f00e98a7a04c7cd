"""Web push state: each subject's subscriptions, and the per-device claims
that make a push message reach each device at most once.

A subscription's id is derived from its endpoint, so storing the same
endpoint again (a browser re-subscribes on every visit) refreshes one row,
and moves it to the subject who stored it last (a shared browser, now
signed in as someone else, must not get the previous user's messages). A
subject keeps its :data:`MAX_PER_SUBJECT` most recently stored
subscriptions: browsers drop subscriptions without telling anyone, and a
message fans out to every one that is left.

**Per-device claims.** The delivery's key is claimed per message
(:mod:`.deliveries`); a message to N devices is N provider calls, so each
device is claimed too, in ``connectors_push_sends`` (one row per message
and subscription), before its request goes out:

- ``sending``: claimed, request in flight. Found by a later attempt, it
  means an earlier one stopped mid-request: the device may have the
  message, so it is never tried again (in doubt).
- ``sent``: the push service took it (201). ``gone``: it answered 404 or 410
  and the subscription was removed. ``failed``: refused for good.
  ``in_doubt``: the request went out and no answer came.
- ``retry``: refused for now (429, 5xx, unreachable): the only state a
  later attempt of the same message claims again.

Every statement finds its rows by primary key, or by ``(tenant,
subject_id)`` through ``connectors_push_subscriptions_subject``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from overture_runtime.db import Database

from .tables import push_sends as D
from .tables import push_subscriptions as T

__all__ = ["MAX_PER_SUBJECT", "DeviceClaims", "NewSubscription", "PushSubscriptions", "subscription_id"]

MAX_PER_SUBJECT = 10
"""Subscriptions a subject keeps; storing one more removes the least recently stored."""
RETRY, SENDING = "retry", "sending"


def subscription_id(endpoint: str) -> str:
    """The id of the subscription at *endpoint*: the same for the same endpoint, and revealing nothing of it."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class NewSubscription:
    """A subscription to store. Contains personal data: never log it."""

    endpoint: str
    """The push service URL."""
    p256dh: str
    """The browser's public key, base64url."""
    auth: str
    """The authentication secret, base64url."""
    user_agent: str = ""
    """A label for people."""
    expire_time: dt.datetime | None = None
    """When the push service said it expires."""


class PushSubscriptions:
    """Subjects' subscriptions. Safe for concurrent use."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def store(self, tenant: str, subject_id: str, new: NewSubscription, *, now: dt.datetime) -> Any:
        """Store *new* for *subject_id* (refreshing or moving an existing one); returns the row."""
        sub_id = subscription_id(new.endpoint)
        values = dict(subject_id=subject_id, endpoint=new.endpoint, p256dh=new.p256dh, auth=new.auth, user_agent=new.user_agent,
                      update_time=now, expire_time=new.expire_time)
        async with self._db.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(T).values(tenant=tenant, subscription_id=sub_id, create_time=now, last_send_time=None, **values)
            await conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "subscription_id"], set_=values))
            surplus = (sa.select(T.c.subscription_id).where(_of(tenant, subject_id))
                       .order_by(T.c.update_time.desc(), T.c.subscription_id.desc()).offset(MAX_PER_SUBJECT))
            await conn.execute(T.delete().where((T.c.tenant == tenant) & T.c.subscription_id.in_(surplus.scalar_subquery())))
            return (await conn.execute(sa.select(T).where((T.c.tenant == tenant) & (T.c.subscription_id == sub_id)))).one()

    async def page(self, tenant: str, subject_id: str, *, limit: int, after: str = "") -> list[Any]:
        """Up to *limit* subscriptions of *subject_id* by id, after the id *after*."""
        where = _of(tenant, subject_id)
        if after:
            where &= T.c.subscription_id > after
        async with self._db.connect() as conn:
            return list((await conn.execute(sa.select(T).where(where).order_by(T.c.subscription_id).limit(limit))).all())

    async def of_subject(self, tenant: str, subject_id: str, *, now: dt.datetime) -> list[Any]:
        """The subscriptions a message to *subject_id* goes to: every one not expired."""
        where = _of(tenant, subject_id) & (T.c.expire_time.is_(None) | (T.c.expire_time > now))
        async with self._db.connect() as conn:
            return list((await conn.execute(sa.select(T).where(where).order_by(T.c.subscription_id).limit(MAX_PER_SUBJECT * 2))).all())

    async def delete(self, tenant: str, subject_id: str, sub_id: str) -> bool:
        """Remove the subscription *sub_id* of *subject_id*; False when it has none by that id."""
        async with self._db.begin() as conn:
            result = await conn.execute(T.delete().where(_of(tenant, subject_id) & (T.c.subscription_id == sub_id)))
        return bool(result.rowcount)

    async def sent(self, tenant: str, sent: Sequence[str], gone: Sequence[str], *, now: dt.datetime) -> None:
        """Note a send to the subscriptions *sent*, and remove those the push service said are *gone* (404, 410)."""
        async with self._db.begin() as conn:
            if sent:
                await conn.execute(T.update().where((T.c.tenant == tenant) & T.c.subscription_id.in_(list(sent))).values(last_send_time=now))
            if gone:
                await conn.execute(T.delete().where((T.c.tenant == tenant) & T.c.subscription_id.in_(list(gone))))


class DeviceClaims:
    """The per-device claims of push messages; see the module docstring. Safe for concurrent use."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, tenant: str, key: str, sub_ids: Sequence[str], *, now: dt.datetime) -> tuple[set[str], dict[str, str]]:
        """Claim the devices *sub_ids* for message *key*: the ids claimed now (new, or left to retry),
        and the status of every device an earlier attempt of *key* tried."""
        if not sub_ids:
            return set(), await self.statuses(tenant, key)
        async with self._db.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(D).values([dict(tenant=tenant, idempotency_key=key, subscription_id=s, status=SENDING, update_time=now)
                                               for s in sub_ids])
            claim = insert.on_conflict_do_update(
                index_elements=["tenant", "idempotency_key", "subscription_id"], set_=dict(status=SENDING, update_time=now),
                where=D.c.status == RETRY).returning(D.c.subscription_id)
            claimed = set((await conn.execute(claim)).scalars())
        earlier = await self.statuses(tenant, key) if len(claimed) < len(sub_ids) else {}
        return claimed, {s: status for s, status in earlier.items() if s not in claimed}

    async def statuses(self, tenant: str, key: str) -> dict[str, str]:
        """The status of each device message *key* was claimed for."""
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(D.c.subscription_id, D.c.status)
                                       .where((D.c.tenant == tenant) & (D.c.idempotency_key == key)))).all()
        return {row.subscription_id: row.status for row in rows}

    async def finish(self, tenant: str, key: str, outcomes: Mapping[str, str], *, now: dt.datetime) -> None:
        """Record each claimed device's outcome (subscription id to status)."""
        if not outcomes:
            return
        statement = D.update().where(
            (D.c.tenant == sa.bindparam("t")) & (D.c.idempotency_key == sa.bindparam("k")) & (D.c.subscription_id == sa.bindparam("s"))
        ).values(status=sa.bindparam("new_status"), update_time=now)
        async with self._db.begin() as conn:
            await conn.execute(statement, [dict(t=tenant, k=key, s=s, new_status=status) for s, status in outcomes.items()])


def _of(tenant: str, subject_id: str) -> Any:
    return (T.c.tenant == tenant) & (T.c.subject_id == subject_id)
