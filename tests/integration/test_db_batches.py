"""Batch lookups by a list of keys (``overture_runtime.db.any_of``): one
statement, prepared once, whatever the number of keys; the same rows as an
IN list, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from overture_runtime.db import Database, any_of

_T = sa.Table("batch_lookup_probe", sa.MetaData(), sa.Column("k", sa.String(32), primary_key=True), sa.Column("v", sa.Integer))


async def _lookups(db: Database) -> tuple[list[list[int]], int | None]:
    """The values found for batches of 1 to 17 keys (some missing), and how many prepared statements read the table."""
    found: list[list[int]] = []
    async with db.begin() as conn:
        await conn.run_sync(lambda sync: _T.create(sync, checkfirst=True))
        await conn.execute(_T.insert(), [{"k": f"k{i}", "v": i} for i in range(20)])
    async with db.connect() as conn:
        for n in (1, 2, 5, 17, 3):
            keys = [f"k{i}" for i in range(n)] + ["missing"]
            rows = (await conn.execute(sa.select(_T.c.v).where(any_of(conn, _T.c.k, keys)).order_by(_T.c.v))).scalars()
            found.append(list(rows))
        prepared = None
        if conn.dialect.name == "postgresql":
            prepared = (await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%FROM batch_lookup_probe%'"
                " AND statement NOT LIKE '%pg_prepared_statements%'")).scalar()
    return found, prepared


async def test_a_batch_lookup_is_one_prepared_statement_whatever_the_batch_on_postgresql(database_url: str) -> None:
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        found, prepared = await _lookups(db)
    finally:
        async with db.begin() as conn:
            await conn.run_sync(lambda sync: _T.drop(sync, checkfirst=True))
        await db.close()
    assert found == [list(range(n)) for n in (1, 2, 5, 17, 3)]
    assert prepared == 1  # an expanding IN list made one per length: 5


async def test_a_batch_lookup_on_sqlite_is_an_in_list(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}")
    try:
        found, _ = await _lookups(db)
    finally:
        await db.close()
    assert found == [list(range(n)) for n in (1, 2, 5, 17, 3)]
