"""Versioned specs: immutable, numbered, content-hashed versions under a head.

Rule sets (the rules service) and journeys (the orchestrator) are the same
kind of thing: a named definition whose every change is a new version that
is never edited again. Each kind keeps two tables: a *head* per (tenant,
name) holding ``latest_version`` (and whatever state the kind adds: the
active rule-set version, the journey's state), and the *versions*, keyed by
(tenant, name, version), each with the canonical JSON of its spec, its
digest, author, reason and time. :class:`VersionedSpecs` is the one
implementation of publishing into them:

1. lock the head (``SELECT ... FOR UPDATE``; a new name has no head yet);
2. compare the spec's digest with the latest version's: the same content is
   not a new version, the latest is returned unchanged;
3. insert version ``latest + 1`` and move the head to it, and let the
   caller write what must commit with it (its audit record) in the same
   transaction;
4. on a conflict (two first publishes of a name racing to insert the head,
   or the caller's own retryable error) start again from 1, a bounded
   number of times, then fail with ``CONTENTION``.

PostgreSQL serializes publishes of an existing name on the head's row lock.
SQLite (``overture dev``) has no row locks: a racing insert fails on the
primary key and is retried, and publishes through one store are also
serialized in-process, so that a burst of them does not exhaust the retries.

The store reads too: the head, one version, versions newest first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database
from .errors import FailedPrecondition
from .protojson import canonical_json, digest

__all__ = ["Publication", "VersionedSpecs", "VersionedTables"]

Row = Any
"""A row of a head or versions table (``sqlalchemy.Row``), read by column name."""


@dataclass(frozen=True)
class VersionedTables:
    """Where one kind of versioned spec is stored."""

    head: sa.Table
    """One row per (tenant, name): columns ``tenant``, ``name``,
    ``latest_version``, ``update_time`` (and ``create_time`` if it has one),
    plus the kind's own."""
    versions: sa.Table
    """One row per version: ``tenant``, the name column (*key*), ``version``,
    ``digest``, ``spec`` (canonical JSON), ``author``, ``reason``,
    ``create_time`` (and *parent*, if set)."""
    key: str = "name"
    """The versions table's column holding the name."""
    parent: str | None = None
    """A versions column set to the version it was published over (0 for the first)."""


@dataclass(frozen=True)
class Publication:
    """What a publish did."""

    version: Row
    """The new version's row; the latest's when nothing changed."""
    head: Row | None
    """The head as it was before the publish, locked; None for a new name."""
    created: bool
    """Whether a new version was stored."""

    @property
    def previous(self) -> int:
        """The latest version before the publish (0 for a new name)."""
        return int(self.head.latest_version) if self.head is not None else 0


class VersionedSpecs:
    """Publishes and reads one kind of versioned spec. Safe for concurrent
    use within one event loop, and across processes and replicas."""

    def __init__(self, db: Database, tables: VersionedTables, *, what: str, attempts: int = 5,
                 retry_on: tuple[type[Exception], ...] = ()) -> None:
        """*what* names the kind in errors ("rule set"); *retry_on* adds the
        caller's own retryable errors (raised by its hooks) to the primary-key
        conflicts that start a publish again."""
        self._db = db
        self.tables = tables
        self._what = what
        self._attempts = attempts
        self._retry_on: tuple[type[Exception], ...] = (IntegrityError, *retry_on)
        self._local = asyncio.Lock() if db.is_sqlite else None

    async def publish(
        self, *, tenant: str, name: str, spec: Message, author: str, reason: str, now: datetime,
        check: Callable[[Row | None], None] | None = None,
        force: Callable[[Row], bool] | None = None,
        head_values: Callable[[Row | None], Mapping[str, Any]] | None = None,
        on_created: Callable[[AsyncConnection, Publication], Awaitable[None]] | None = None,
    ) -> Publication:
        """Store *spec* as the next version of *name*, unless it equals the latest.

        In the transaction, with the head locked: *check* may refuse the
        publish by raising (a stale parent version, say); *force* may ask for
        a new version even when the content is unchanged; *head_values* gives
        the kind's own head columns to write (given None for a new name);
        *on_created* writes what must commit with the new version."""
        spec_digest = digest(spec)
        content = canonical_json(spec)
        for _ in range(self._attempts):
            try:
                if self._local is None:
                    return await self._publish_once(tenant, name, spec_digest, content, author, reason, now, check, force,
                                                    head_values, on_created)
                async with self._local:
                    return await self._publish_once(tenant, name, spec_digest, content, author, reason, now, check, force,
                                                    head_values, on_created)
            except self._retry_on:
                continue  # a concurrent publish took the number (or the caller's hook asked); read the head again
        raise FailedPrecondition(f"the {self._what} is changing too fast; retry", reason="CONTENTION")

    async def _publish_once(
        self, tenant: str, name: str, spec_digest: str, content: str, author: str, reason: str, now: datetime,
        check: Callable[[Row | None], None] | None, force: Callable[[Row], bool] | None,
        head_values: Callable[[Row | None], Mapping[str, Any]] | None,
        on_created: Callable[[AsyncConnection, Publication], Awaitable[None]] | None,
    ) -> Publication:
        t = self.tables
        async with self._db.begin() as conn:
            head = await self.head(conn, tenant, name, lock=True)
            if check is not None:
                check(head)
            if head is not None:
                latest = await self.version(conn, tenant, name, int(head.latest_version))
                if latest is not None and latest.digest == spec_digest and not (force is not None and force(head)):
                    return Publication(version=latest, head=head, created=False)
            version = (int(head.latest_version) if head is not None else 0) + 1
            values: dict[str, Any] = {"tenant": tenant, t.key: name, "version": version, "digest": spec_digest, "spec": content,
                                      "author": author, "reason": reason, "create_time": now}
            if t.parent is not None:
                values[t.parent] = version - 1
            row = (await conn.execute(t.versions.insert().values(**values).returning(*t.versions.c))).one()
            extra = dict(head_values(head)) if head_values is not None else {}
            if head is None:
                stamps = {"update_time": now, **({"create_time": now} if "create_time" in t.head.c else {})}
                await conn.execute(t.head.insert().values(tenant=tenant, name=name, latest_version=version, **stamps, **extra))
            else:
                await conn.execute(t.head.update().where(self._head_key(tenant, name)).values(
                    latest_version=version, update_time=now, **extra))
            published = Publication(version=row, head=head, created=True)
            if on_created is not None:
                await on_created(conn, published)
        return published

    # -- reading -------------------------------------------------------------

    async def head(self, conn: AsyncConnection, tenant: str, name: str, *, lock: bool = False) -> Row | None:
        """The head of *name*, None if it has never been published; *lock*
        holds it until the transaction ends."""
        query = sa.select(self.tables.head).where(self._head_key(tenant, name))
        return (await conn.execute(query.with_for_update() if lock else query)).first()

    async def version(self, conn: AsyncConnection, tenant: str, name: str, version: int) -> Row | None:
        """One version of *name*, None if there is no such version."""
        v = self.tables.versions
        return (await conn.execute(sa.select(v).where(
            (v.c.tenant == tenant) & (v.c[self.tables.key] == name) & (v.c.version == version)))).first()

    async def versions(self, conn: AsyncConnection, tenant: str, name: str, *, limit: int, before: int | None = None,
                       columns: tuple[sa.Column[Any], ...] = ()) -> list[Row]:
        """Versions of *name* newest first, those below *before* when given;
        only *columns* (all when empty). Reads the primary key's index backwards."""
        v = self.tables.versions
        query = sa.select(*(columns or v.c)).where((v.c.tenant == tenant) & (v.c[self.tables.key] == name))
        if before is not None:
            query = query.where(v.c.version < before)
        return list((await conn.execute(query.order_by(v.c.version.desc()).limit(limit))).all())

    def _head_key(self, tenant: str, name: str) -> Any:
        h = self.tables.head
        return (h.c.tenant == tenant) & (h.c.name == name)
