"""Checking a statement's plan on a table that grew after its statistics were
taken: the statement as SQLAlchemy compiles it for PostgreSQL, with its
values inlined (the custom plan the services get under ``plan_cache_mode =
force_custom_plan``), explained with ``ANALYZE`` and ``BUFFERS``; or, for
the statements a service runs itself, PostgreSQL's ``auto_explain`` on the
service's own connection (:class:`AutoExplained`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from overture_runtime.db import SERVER_SETTINGS, Database, migrate

__all__ = ["AUTO_EXPLAIN", "AutoExplained", "buffers", "explain", "nodes", "orchestrator_tables"]

_ORCHESTRATOR_MIGRATIONS = Path(__file__).resolve().parents[2] / "services/orchestrator/overture_orchestrator/migrations"


@asynccontextmanager
async def orchestrator_tables(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, Database]]:
    """The orchestrator's tables, migrated, with an asyncpg connection (to
    fill them and explain statements) and a one-connection :class:`Database`
    (for the service's own statements), both with the services' PostgreSQL
    settings, and both closed on exit."""
    await migrate(database_url, script_location=_ORCHESTRATOR_MIGRATIONS, version_table="orchestrator_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1), server_settings=dict(SERVER_SETTINGS))
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        yield conn, db
    finally:
        await conn.close()
        await db.close()


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of *plan*, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def explain(conn: asyncpg.Connection, statement: ClauseElement) -> dict[str, Any]:
    """The executed plan of *statement* (its top node, with buffers)."""
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    rows = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    return dict(json.loads(rows)[0]["Plan"])


AUTO_EXPLAIN = {
    "auto_explain.log_min_duration": "0", "auto_explain.log_analyze": "on", "auto_explain.log_buffers": "on",
    "auto_explain.log_timing": "off", "auto_explain.log_format": "json", "auto_explain.log_level": "notice",
}
"""auto_explain's settings for a connection whose every statement's executed plan (with buffers) is wanted back as a NOTICE."""


class AutoExplained:
    """The plans auto_explain reports on one connection of a service's pool, for the statements *classify* names
    (it returns a kind, or None for statements to ignore), while :attr:`recording`."""

    def __init__(self, classify: Callable[[str], str | None]) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.recording = False
        self._classify = classify

    def listen(self, _conn: object, message: Any) -> None:
        """asyncpg's log listener."""
        text: str = message.message
        if not self.recording or "plan:" not in text:
            return
        explained = json.loads(text.split("plan:", 1)[1])
        kind = self._classify(explained["Query Text"])
        if kind is not None:
            self.seen.append((kind, explained["Plan"]))

    async def attach(self, db: Database) -> None:
        """Load auto_explain into *db*'s connection (a pool of one) and listen to it."""
        async with db.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            raw.add_log_listener(self.listen)
            await conn.execute(sa.text("LOAD 'auto_explain'"))
            for name, value in AUTO_EXPLAIN.items():
                await conn.execute(sa.text(f"SET {name} = '{value}'"))
            await conn.commit()


def buffers(plan: dict[str, Any]) -> int:
    """The shared buffers a plan touched (hit or read)."""
    return int(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))
