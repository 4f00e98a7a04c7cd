"""The delivery rows: claims, reads and outcomes, a whole batch per statement.

Every statement finds its rows by the full primary key ``(tenant,
idempotency_key)``, in a shape that leaves the planner one sensible plan
whatever the table's statistics say. Statistics go stale (autovacuum lags
or is off, a bulk load, a new tenant), and the obvious shapes then go
wrong: ``tenant = $1 AND idempotency_key = ANY($2)`` is planned as a scan of
the tenant's whole range of ``connectors_deliveries_id`` when the table has
no statistics, and a join of ``unnest($keys)`` with the table becomes a hash
join over the whole tenant. So, on PostgreSQL:

- claims and outcomes are ``INSERT ... ON CONFLICT (tenant,
  idempotency_key)``: the executor finds each row through the primary key
  index (the arbiter), which the planner does not choose at all;
- reads probe the primary key once per key, in a ``LATERAL`` subquery that
  ``OFFSET 0`` keeps from being flattened into a join;
- each statement's text is the same for every batch size (the keys travel
  as arrays), so it is prepared once per connection.

These shapes still need custom plans (the runtime's ``plan_cache_mode``):
a generic plan made while the table was tiny may prefer a sequential scan
to any index. ``tests/integration/test_connectors_plans.py`` checks every
statement on a table that grew after its statistics were taken.

SQLite (``overture dev``) gets the same operations in plain SQLAlchemy Core.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from overture_runtime.db import Database

from .tables import deliveries

__all__ = ["CLAIM_SQL", "FINISH_SQL", "READ_SQL", "Claim", "DeliveryStore", "Finish"]

_ROW = ("tenant, idempotency_key, delivery_id, connector, channel, subject_id, address_hash, status, retryable, "
        "provider_message_id, attempts, last_error, create_time, update_time")

CLAIM_SQL = f"""
INSERT INTO connectors_deliveries AS d ({_ROW})
SELECT :tenant, n.key, n.delivery_id, n.connector, n.channel, n.subject_id, n.address_hash,
       'sending', false, '', 1, '', CAST(:now AS timestamptz), CAST(:now AS timestamptz)
FROM unnest(CAST(:keys AS varchar[]), CAST(:delivery_ids AS varchar[]), CAST(:connectors AS varchar[]),
            CAST(:channels AS varchar[]), CAST(:subject_ids AS varchar[]), CAST(:address_hashes AS varchar[]))
     AS n(key, delivery_id, connector, channel, subject_id, address_hash)
ON CONFLICT (tenant, idempotency_key) DO UPDATE
SET status = 'sending', retryable = false, attempts = d.attempts + 1, connector = excluded.connector,
    update_time = excluded.update_time
WHERE d.status = 'failed' AND d.retryable
RETURNING d.*
"""
"""Claim every new key, and every key whose last attempt failed retryably, in one statement.
Returns the claimed rows; a key already sent, in flight or in doubt is locked but not returned."""

READ_SQL = """
SELECT d.*
FROM unnest(CAST(:keys AS varchar[])) AS k(key)
CROSS JOIN LATERAL (
    SELECT * FROM connectors_deliveries AS t
    WHERE t.tenant = :tenant AND t.idempotency_key = k.key
    OFFSET 0
) AS d
"""
"""Read the rows of some keys: one primary-key probe per key."""

FINISH_SQL = f"""
INSERT INTO connectors_deliveries AS d ({_ROW}, response, segments, next_check_time)
SELECT :tenant, f.key, f.delivery_id, f.connector, f.channel, f.subject_id, f.address_hash, f.status, f.retryable,
       f.provider_message_id, f.attempts, f.last_error, f.create_time, CAST(:now AS timestamptz), CAST(f.response AS jsonb),
       f.segments, f.next_check_time
FROM unnest(CAST(:keys AS varchar[]), CAST(:delivery_ids AS varchar[]), CAST(:connectors AS varchar[]),
            CAST(:channels AS varchar[]), CAST(:subject_ids AS varchar[]), CAST(:address_hashes AS varchar[]),
            CAST(:statuses AS varchar[]), CAST(:retryables AS boolean[]), CAST(:provider_message_ids AS varchar[]),
            CAST(:attempts AS integer[]), CAST(:last_errors AS text[]), CAST(:create_times AS timestamptz[]),
            CAST(:responses AS text[]), CAST(:segments AS integer[]), CAST(:next_checks AS timestamptz[]))
     AS f(key, delivery_id, connector, channel, subject_id, address_hash, status, retryable, provider_message_id,
          attempts, last_error, create_time, response, segments, next_check_time)
ON CONFLICT (tenant, idempotency_key) DO UPDATE
SET status = excluded.status, retryable = excluded.retryable, last_error = excluded.last_error,
    connector = excluded.connector, attempts = excluded.attempts,
    provider_message_id = CASE WHEN excluded.provider_message_id = '' THEN d.provider_message_id
                               ELSE excluded.provider_message_id END,
    response = COALESCE(excluded.response, d.response), segments = GREATEST(excluded.segments, d.segments),
    next_check_time = excluded.next_check_time, update_time = excluded.update_time
WHERE d.status IN ('sending', 'in_doubt')
RETURNING d.*
"""
"""Record the outcome of every attempt of a batch in one statement. The
guard keeps a finished delivery finished; rows it skips are not returned.
The insert branch is never taken (claimed rows are not deleted), which is
why it carries the whole row."""

_CLAIM, _READ, _FINISH = sa.text(CLAIM_SQL), sa.text(READ_SQL), sa.text(FINISH_SQL)
"""Made once: building a TextClause parses its text (0.1 ms for FINISH_SQL), on every call."""

_OPEN = ("sending", "in_doubt")
"""The states an outcome may be recorded over: a claim, or a claim a resolver already gave up on."""


@dataclass(frozen=True)
class Claim:
    """A delivery row to claim for one message."""

    idempotency_key: str
    """The message's key."""
    delivery_id: str
    """The id the delivery gets if the key is new."""
    connector: str
    """The connector that will send it."""
    channel: str
    """The channel's short name (``email``)."""
    subject_id: str
    """The subject the message is for."""
    address_hash: str
    """The sha256 of the normalised address (the address itself is never stored)."""


@dataclass(frozen=True)
class Finish:
    """The outcome of one attempt, to record on its claimed row."""

    row: Any
    """The claimed row, as :meth:`DeliveryStore.claim` returned it."""
    status: str
    """The delivery status name (``sent``, ``failed``, ``in_doubt``, or what the provider said)."""
    retryable: bool = False
    """Whether a repeat of the key may try again (a failure before the provider could accept it)."""
    error: str = ""
    """The last error, without personal data."""
    provider_message_id: str = ""
    """The provider's id for the message; empty keeps the one recorded."""
    connector: str = ""
    """The provider that handled the attempt; empty keeps the one claimed."""
    calls: int = 1
    """Provider calls the attempt made (a route may call several, or none)."""
    response: dict[str, Any] | None = None
    """The endpoint's answer to keep; None keeps the one recorded."""
    segments: int = 0
    """SMS: the segments sent; 0 keeps the count recorded."""
    next_check: dt.datetime | None = None
    """When an in-doubt delivery's provider is asked about it again (the sweeper); None: not again."""

    @property
    def attempts(self) -> int:
        """The delivery's provider calls in all, this attempt's included (the claim counted one)."""
        return int(self.row.attempts) - 1 + self.calls

    @property
    def handler(self) -> str:
        """The provider to record."""
        return self.connector or str(self.row.connector)


class DeliveryStore:
    """Rows of ``connectors_deliveries``, by tenant and idempotency key."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, tenant: str, claims: Sequence[Claim], now: dt.datetime) -> dict[str, Any]:
        """Claim the keys of *claims* (distinct keys) durably; returns the claimed rows by key."""
        if not claims:
            return {}
        async with self._db.one_statement() as conn:
            if self._db.is_sqlite:
                rows = (await conn.execute(_sqlite_claim(tenant, claims, now))).all()
            else:
                rows = (await conn.execute(_CLAIM, {
                    "tenant": tenant, "now": now, "keys": [c.idempotency_key for c in claims],
                    "delivery_ids": [c.delivery_id for c in claims], "connectors": [c.connector for c in claims],
                    "channels": [c.channel for c in claims], "subject_ids": [c.subject_id for c in claims],
                    "address_hashes": [c.address_hash for c in claims],
                })).all()
        return {row.idempotency_key: row for row in rows}

    async def read(self, tenant: str, keys: Sequence[str]) -> dict[str, Any]:
        """The rows of *keys* that exist, by key."""
        if not keys:
            return {}
        async with self._db.connect() as conn:
            if self._db.is_sqlite:
                t = deliveries
                rows = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & t.c.idempotency_key.in_(keys)))).all()
            else:
                rows = (await conn.execute(_READ, {"tenant": tenant, "keys": list(keys)})).all()
        return {row.idempotency_key: row for row in rows}

    async def finish(self, tenant: str, outcomes: Sequence[Finish], now: dt.datetime) -> dict[str, Any]:
        """Record *outcomes* (distinct keys); returns the rows written, by key."""
        if not outcomes:
            return {}
        async with self._db.one_statement() as conn:
            if self._db.is_sqlite:
                rows = (await conn.execute(_sqlite_finish(tenant, outcomes, now))).all()
            else:
                rows = (await conn.execute(_FINISH, {
                    "tenant": tenant, "now": now, "keys": [o.row.idempotency_key for o in outcomes],
                    "delivery_ids": [o.row.delivery_id for o in outcomes], "connectors": [o.handler for o in outcomes],
                    "channels": [o.row.channel for o in outcomes], "subject_ids": [o.row.subject_id for o in outcomes],
                    "address_hashes": [o.row.address_hash for o in outcomes], "statuses": [o.status for o in outcomes],
                    "retryables": [o.retryable for o in outcomes],
                    "provider_message_ids": [o.provider_message_id for o in outcomes],
                    "attempts": [o.attempts for o in outcomes], "last_errors": [o.error for o in outcomes],
                    "create_times": [o.row.create_time for o in outcomes],
                    "responses": [None if o.response is None else orjson.dumps(o.response).decode() for o in outcomes],
                    "segments": [o.segments for o in outcomes], "next_checks": [o.next_check for o in outcomes],
                })).all()
        return {row.idempotency_key: row for row in rows}

    async def find_email(self, message_id: str) -> Any:
        """The email delivery whose Message-ID is *message_id*, in any tenant (the id is
        derived from the tenant and the key), or None. Through ``connectors_deliveries_provider_message_id``."""
        t = deliveries
        async with self._db.connect() as conn:
            return (await conn.execute(sa.select(t).where((t.c.provider_message_id == message_id) & (t.c.channel == "email"))
                                       .limit(1))).first()

    async def mark(self, tenant: str, idempotency_key: str, status: str) -> None:
        """Record a status learned after the send (``bounced``, ``complained``) on a delivery that was sent."""
        t = deliveries
        where = (t.c.tenant == tenant) & (t.c.idempotency_key == idempotency_key) & t.c.status.notin_(("sending", "failed"))
        async with self._db.begin() as conn:
            await conn.execute(t.update().where(where).values(status=status))

    async def get(self, tenant: str, *, delivery_id: str = "", idempotency_key: str = "") -> Any:
        """One row by delivery id or by key (a full unique key either way), or None."""
        t = deliveries
        where = (t.c.tenant == tenant) & ((t.c.delivery_id == delivery_id) if delivery_id else (t.c.idempotency_key == idempotency_key))
        async with self._db.connect() as conn:
            return (await conn.execute(sa.select(t).where(where))).first()


def _sqlite_claim(tenant: str, claims: Sequence[Claim], now: dt.datetime) -> Any:
    t = deliveries
    insert = sqlite.insert(t).values([
        dict(tenant=tenant, idempotency_key=c.idempotency_key, delivery_id=c.delivery_id, connector=c.connector,
             channel=c.channel, subject_id=c.subject_id, address_hash=c.address_hash, status="sending", retryable=False,
             provider_message_id="", attempts=1, last_error="", create_time=now, update_time=now)
        for c in claims
    ])
    return insert.on_conflict_do_update(
        index_elements=["tenant", "idempotency_key"],
        set_=dict(status="sending", retryable=False, attempts=t.c.attempts + 1, connector=insert.excluded.connector,
                  update_time=insert.excluded.update_time),
        where=(t.c.status == "failed") & t.c.retryable,
    ).returning(*t.c)


def _sqlite_finish(tenant: str, outcomes: Sequence[Finish], now: dt.datetime) -> Any:
    t = deliveries
    insert = sqlite.insert(t).values([
        dict(tenant=tenant, idempotency_key=o.row.idempotency_key, delivery_id=o.row.delivery_id, connector=o.handler,
             channel=o.row.channel, subject_id=o.row.subject_id, address_hash=o.row.address_hash, status=o.status,
             retryable=o.retryable, provider_message_id=o.provider_message_id, attempts=o.attempts,
             last_error=o.error, create_time=o.row.create_time, update_time=now,
             response=sa.null() if o.response is None else o.response, segments=o.segments, next_check_time=o.next_check)
        for o in outcomes
    ])
    return insert.on_conflict_do_update(
        index_elements=["tenant", "idempotency_key"],
        set_=dict(status=insert.excluded.status, retryable=insert.excluded.retryable, last_error=insert.excluded.last_error,
                  connector=insert.excluded.connector, attempts=insert.excluded.attempts,
                  provider_message_id=sa.case((insert.excluded.provider_message_id == "", t.c.provider_message_id),
                                              else_=insert.excluded.provider_message_id),
                  response=sa.func.coalesce(insert.excluded.response, t.c.response),
                  segments=sa.func.max(insert.excluded.segments, t.c.segments), next_check_time=insert.excluded.next_check_time,
                  update_time=insert.excluded.update_time),
        where=t.c.status.in_(_OPEN),
    ).returning(*t.c)
