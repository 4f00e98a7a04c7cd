"""Idempotent mutating RPCs (AIP-155): a repeat of a ``request_id`` returns
the first answer.

The key is claimed before the work runs, so two concurrent calls with the
same id cannot both do the work: the second gets ``ABORTED``-like
FAILED_PRECONDITION ("in progress") and retries. Reusing an id for a
different request is an error. Each service owns one such table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message

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
        t = self._t
        request_digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        key = (t.c.tenant == tenant) & (t.c.method == method) & (t.c.request_id == request_id)
        async with self._db.begin() as conn:
            claimed = await conn.execute(
                insert_ignore(conn, t, index_elements=["tenant", "method", "request_id"]).values(
                    tenant=tenant, method=method, request_id=request_id,
                    request_digest=request_digest, response=None, create_time=self._clock.now(),
                )
            )
            if claimed.rowcount == 0:
                row = (await conn.execute(sa.select(t.c.request_digest, t.c.response, t.c.create_time).where(key))).one()
                if row.request_digest != request_digest:
                    raise FailedPrecondition(
                        f"request_id {request_id!r} was already used for a different request",
                        reason="REQUEST_ID_REUSED",
                    )
                if row.response is None and row.create_time < self._clock.now() - _CLAIM_TIMEOUT:
                    # The first call's process died mid-way: this call takes the claim over.
                    await conn.execute(sa.update(t).where(key).values(create_time=self._clock.now()))
                elif row.response is None:
                    raise FailedPrecondition(
                        f"a request with request_id {request_id!r} is still in progress; retry shortly",
                        reason="REQUEST_IN_PROGRESS",
                    )
                else:
                    return response_type.FromString(row.response)
        try:
            response = await compute()
        except BaseException:
            async with self._db.begin() as conn:
                await conn.execute(sa.delete(t).where(key))
            raise
        async with self._db.begin() as conn:
            await conn.execute(sa.update(t).where(key).values(response=response.SerializeToString()))
        return response
