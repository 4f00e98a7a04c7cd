"""Tests of :mod:`overture_runtime.versioned` on a scratch PostgreSQL database and on SQLite (``overture dev``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, utc_datetime
from overture_runtime.errors import FailedPrecondition
from overture_runtime.protojson import digest
from overture_runtime.testing import temporary_database
from overture_runtime.versioned import Publication, VersionedSpecs, VersionedTables
from tests.conftest import PG_ADMIN


class Retryable(Exception):
    """A hook's error the store is told to retry on."""


def _tables() -> tuple[sa.MetaData, VersionedTables]:
    metadata = sa.MetaData()
    head = sa.Table("t_heads", metadata, sa.Column("tenant", sa.String(64), primary_key=True),
                    sa.Column("name", sa.String(63), primary_key=True), sa.Column("latest_version", sa.BigInteger, nullable=False),
                    sa.Column("label", sa.String(32), nullable=True), sa.Column("create_time", utc_datetime, nullable=False),
                    sa.Column("update_time", utc_datetime, nullable=False))
    versions = sa.Table("t_versions", metadata, sa.Column("tenant", sa.String(64), primary_key=True),
                        sa.Column("thing", sa.String(63), primary_key=True), sa.Column("version", sa.BigInteger, primary_key=True),
                        sa.Column("digest", sa.String(64), nullable=False), sa.Column("spec", sa.Text, nullable=False),
                        sa.Column("author", sa.String(256), nullable=False), sa.Column("reason", sa.Text, nullable=False),
                        sa.Column("parent_version", sa.BigInteger, nullable=False), sa.Column("create_time", utc_datetime, nullable=False))
    return metadata, VersionedTables(head=head, versions=versions, key="thing", parent="parent_version")


@dataclass
class Store:
    """A VersionedSpecs over fresh tables, and what it needs."""

    specs: VersionedSpecs
    db: Database
    clock: ManualClock
    tables: VersionedTables

    async def publish(self, value: object, name: str = "welcome", **hooks: Any) -> Publication:
        return await self.specs.publish(tenant="acme", name=name, spec=_spec(value), author="alice", reason=f"set {value}",
                                        now=self.clock.now(), **hooks)

    async def count(self) -> int:
        async with self.db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(self.tables.versions))).scalar_one())


def _spec(value: object) -> struct_pb2.Struct:
    spec = struct_pb2.Struct()
    spec.update({"value": value})
    return spec


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store on this test's scratch PostgreSQL database, then on a SQLite file."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "postgresql":
            url = await stack.enter_async_context(temporary_database(PG_ADMIN))
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}"
        db = Database(url)
        stack.push_async_callback(db.close)
        metadata, tables = _tables()
        async with db.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield Store(VersionedSpecs(db, tables, what="thing", retry_on=(Retryable,)), db, ManualClock(), tables)


async def test_publishing_numbers_versions_and_keeps_their_content_author_and_parent(store: Store) -> None:
    """The first publish is version 1 over parent 0 and creates the head; a change is version 2 over 1; each keeps its digest, author and reason."""
    first = await store.publish("hello")
    store.clock.advance(timedelta(minutes=1))
    second = await store.publish("bonjour")
    assert (first.created, first.head, first.previous) == (True, None, 0)
    assert (first.version.version, first.version.parent_version, first.version.digest) == (1, 0, digest(_spec("hello")))
    assert (second.created, second.previous, second.version.version, second.version.parent_version) == (True, 1, 2, 1)
    assert (second.version.author, second.version.reason, second.version.thing) == ("alice", "set bonjour", "welcome")
    async with store.db.connect() as conn:
        head = await store.specs.head(conn, "acme", "welcome")
    assert head is not None and head.latest_version == 2
    assert head.create_time == first.version.create_time and head.update_time == second.version.create_time


async def test_the_same_content_is_not_a_new_version(store: Store) -> None:
    """Publishing the latest version's content again stores nothing and returns the latest, unchanged; older content is a new version."""
    await store.publish("hello")
    await store.publish("bonjour")
    again = await store.publish("bonjour")
    assert (again.created, again.version.version) == (False, 2)
    back = await store.publish("hello")
    assert (back.created, back.version.version) == (True, 3)
    assert await store.count() == 3


async def test_hooks_refuse_force_and_write_in_the_same_transaction(store: Store) -> None:
    """check refuses inside the lock, force makes a version of unchanged content, head_values are written, and on_created commits or rolls back with the version."""
    labels: list[Any] = []

    def refuse(head: Any) -> None:
        raise FailedPrecondition("stale", reason="STALE")

    with pytest.raises(FailedPrecondition):
        await store.publish("hello", check=refuse)
    assert await store.count() == 0
    await store.publish("hello", head_values=lambda head: {"label": "new" if head is None else "old"})
    forced = await store.publish("hello", force=lambda head: True, head_values=lambda head: {"label": "old"})
    assert (forced.created, forced.version.version, forced.version.digest) == (True, 2, digest(_spec("hello")))

    async def fail(conn: AsyncConnection, published: Publication) -> None:
        labels.append(published.version.version)
        raise RuntimeError("the audit write failed")

    with pytest.raises(RuntimeError):
        await store.publish("bonjour", on_created=fail)
    assert labels == [3] and await store.count() == 2
    async with store.db.connect() as conn:
        head = await store.specs.head(conn, "acme", "welcome")
    assert head is not None and (head.latest_version, head.label) == (2, "old")


async def test_a_retryable_hook_error_starts_the_publish_again_and_then_gives_up(store: Store) -> None:
    """An on_created hook raising a retry_on error once is retried to success; one that always raises ends in CONTENTION with nothing stored."""
    calls: list[int] = []

    async def flaky(conn: AsyncConnection, published: Publication) -> None:
        calls.append(published.version.version)
        if len(calls) == 1:
            raise Retryable

    assert (await store.publish("hello", on_created=flaky)).version.version == 1
    assert calls == [1, 1]

    async def always(conn: AsyncConnection, published: Publication) -> None:
        raise Retryable

    with pytest.raises(FailedPrecondition) as caught:
        await store.publish("bonjour", on_created=always)
    assert caught.value.reason == "CONTENTION" and "the thing is changing too fast" in caught.value.message
    assert await store.count() == 1


async def test_concurrent_publishes_of_a_new_name_get_consecutive_versions_once_each(store: Store) -> None:
    """Twelve concurrent publishes of different content to a name that does not exist yet make versions 1 to 12, one per content, with no gap and one head."""
    results = await asyncio.gather(*(store.publish(f"content {i}") for i in range(12)))
    assert all(r.created for r in results)
    assert sorted(r.version.version for r in results) == list(range(1, 13))
    async with store.db.connect() as conn:
        rows = await store.specs.versions(conn, "acme", "welcome", limit=100)
        head = await store.specs.head(conn, "acme", "welcome")
    assert sorted(r.digest for r in rows) == sorted(digest(_spec(f"content {i}")) for i in range(12))
    assert [r.parent_version for r in rows] == list(range(11, -1, -1))
    assert head is not None and head.latest_version == 12


async def test_concurrent_publishes_of_the_same_content_store_it_once(store: Store) -> None:
    """Eight concurrent publishes of the same content over an existing version make one new version; the others return it unchanged."""
    await store.publish("hello")
    results = await asyncio.gather(*(store.publish("bonjour") for _ in range(8)))
    assert sum(r.created for r in results) == 1
    assert {r.version.version for r in results} == {2}
    assert await store.count() == 2


async def test_versions_are_listed_newest_first_page_by_page(store: Store) -> None:
    """versions() returns the newest first, limited, and below `before`; other names and tenants are not mixed in."""
    for i in range(5):
        await store.publish(i)
    await store.publish("other", name="other")
    async with store.db.connect() as conn:
        first = await store.specs.versions(conn, "acme", "welcome", limit=2)
        rest = await store.specs.versions(conn, "acme", "welcome", limit=10, before=first[-1].version)
        numbers = await store.specs.versions(conn, "acme", "welcome", limit=10, columns=(store.tables.versions.c.version,))
        missing = await store.specs.version(conn, "acme", "welcome", 9)
        nobody = await store.specs.head(conn, "globex", "welcome")
    assert [r.version for r in first] == [5, 4] and [r.version for r in rest] == [3, 2, 1]
    assert [tuple(r) for r in numbers] == [(5,), (4,), (3,), (2,), (1,)]
    assert missing is None and nobody is None
