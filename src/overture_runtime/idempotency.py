"""Idempotent mutating RPCs (AIP-155): a repeat of a ``request_id`` returns
the first answer.

The key is claimed before the work runs, so two concurrent calls with the
same id cannot both do the work: the second gets ``ABORTED``-like
FAILED_PRECONDITION ("in progress") and retries. Reusing an id for a
different request is an error. Each service owns one such table.

:meth:`Idempotency.run_in_transaction` is for work that is one database
transaction: the claim, the work and the stored response commit together,
so a crash leaves all of them or none, and a repeat can never do the work
a second time (no claim to time out, as :meth:`Idempotency.run` has).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from .clock import Clock
from .db import Database, insert_ignore, utc_datetime
from .errors import FailedPrecondition

__all__ = ["Idempotency", "idempotency_table"]

_R = TypeVar("_R", bound=Message)
_CLAIM_TIMEOUT = dt.timedelta(seconds=60)
"""A claim older than this with no response belongs to a call that died; it may be taken over."""


def idempotency_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    """The ``<prefix>_idempotency`` table in *metadata*."""
    return sa.Table(
        f"{prefix}_idempotency",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("method", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(256), primary_key=True),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("create_time", utc_datetime, nullable=False),
    )


class Idempotency:
    """Runs mutating operations at most once per (tenant, method, request id)."""

    def __init__(self, db: Database, table: sa.Table, clock: Clock) -> None:
        self._db = db
        self._t = table
        self._clock = clock

    async def run_in_transaction(
        self,
        *,
        tenant: str,
        method: str,
        request_id: str,
        request: Message,
        response_type: type[_R],
        compute: Callable[[AsyncConnection], Awaitable[_R]],
    ) -> _R:
        """Return the stored response of an earlier identical call, or run
        *compute* on the claiming transaction's connection and store its
        response in that same transaction. An exception from *compute* rolls
        the claim back with the work, so a repeat tries again. A concurrent
        call with the same id waits for this one's transaction and then
        returns its response. *request_id* is required."""
        if not request_id:
            raise ValueError("run_in_transaction needs a request id")
        key = self._key(tenant, method, request_id)
        async with self._db.begin() as conn:
            stored = await self._claim(conn, tenant, method, request_id, request, take_over_stale=False)
            if stored is not None:
                return response_type.FromString(stored)
            response = await compute(conn)
            await conn.execute(sa.update(self._t).where(key).values(response=response.SerializeToString()))
        return response

    async def run(
        self,
        *,
        tenant: str,
        method: str,
        request_id: str,
        request: Message,
        response_type: type[_R],
        compute: Callable[[], Awaitable[_R]],
    ) -> _R:
        """Return the stored response of an earlier identical call, or run
        *compute* once and store its response. Without a request id, just run."""
        if not request_id:
            return await compute()
        key = self._key(tenant, method, request_id)
        async with self._db.begin() as conn:
            stored = await self._claim(conn, tenant, method, request_id, request, take_over_stale=True)
        if stored is not None:
            return response_type.FromString(stored)
        try:
            response = await compute()
        except BaseException:
            async with self._db.begin() as conn:
                await conn.execute(sa.delete(self._t).where(key))
            raise
        async with self._db.begin() as conn:
            await conn.execute(sa.update(self._t).where(key).values(response=response.SerializeToString()))
        return response

    def _key(self, tenant: str, method: str, request_id: str) -> Any:
        t = self._t
        return (t.c.tenant == tenant) & (t.c.method == method) & (t.c.request_id == request_id)

    async def _claim(
        self, conn: AsyncConnection, tenant: str, method: str, request_id: str, request: Message, *, take_over_stale: bool,
    ) -> bytes | None:
        """Claim the key on *conn*: None when this call is to do the work,
        else the stored response. Raises when the id was used for another
        request or its first call is still working (a claim older than
        ``_CLAIM_TIMEOUT`` is taken over when *take_over_stale*)."""
        t = self._t
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        claimed = await conn.execute(
            insert_ignore(conn, t, index_elements=["tenant", "method", "request_id"]).values(
                tenant=tenant, method=method, request_id=request_id,
                request_digest=digest, response=None, create_time=self._clock.now(),
            )
        )
        if claimed.rowcount == 1:
            return None
        key = self._key(tenant, method, request_id)
        row = (await conn.execute(sa.select(t.c.request_digest, t.c.response, t.c.create_time).where(key))).one()
        if row.request_digest != digest:
            raise FailedPrecondition(
                f"request_id {request_id!r} was already used for a different request",
                reason="REQUEST_ID_REUSED",
            )
        if row.response is not None:
            return bytes(row.response)
        if take_over_stale and row.create_time < self._clock.now() - _CLAIM_TIMEOUT:
            # The first call's process died mid-way: this call takes the claim over.
            await conn.execute(sa.update(t).where(key).values(create_time=self._clock.now()))
            return None
        raise FailedPrecondition(
            f"a request with request_id {request_id!r} is still in progress; retry shortly",
            reason="REQUEST_IN_PROGRESS",
        )
